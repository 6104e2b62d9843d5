"""``sdegen toy``: sample a built-in 2-D mixture with its exact score through any sampler."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .common import UsageError, choice, key_values, pick_device, positive_float, positive_int

HELP = ("Sample a built-in Gaussian mixture with its exact score through any sampler; write a scatter plot "
        "over the true density and a JSON of quality figures.")


def add_arguments(p):
    from ..sampling import CORRECTORS, ORDERS, PREDICTORS, SAMPLERS
    from ..sde import SDES
    from ..toy import mixture_names
    p.add_argument("--data", default="ring8", help=f"mixture: {', '.join(mixture_names())}")
    p.add_argument("--sde", default="vp", help=f"forward SDE: {', '.join(SDES)}")
    p.add_argument("--sampler", default="pc", help=f"sampler: {', '.join(SAMPLERS)}")
    p.add_argument("--ode", action="store_true", help="the probability-flow ODE (same as --sampler ode)")
    g = p.add_argument_group("PC options (default: the sampler's own)")
    g.add_argument("--predictor", help=f"predictor: {', '.join(PREDICTORS)}, none")
    g.add_argument("--corrector", help=f"corrector: {', '.join(CORRECTORS)}, none")
    g.add_argument("--snr", type=positive_float, help="corrector signal-to-noise ratio")
    g.add_argument("--n-corrector-steps", type=positive_int, help="corrector steps per noise level")
    g.add_argument("--order", help=f"PC order: {', '.join(ORDERS)}")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="number of steps (PC: noise levels, default sde.N = 1000; fast solvers need it or nfe)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the sampler, e.g. nfe=20, s_churn=10 (repeatable)")
    p.add_argument("--n", type=positive_int, default=5000, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default="out/toy", help="output folder")


def sampler_choice(args) -> tuple[str, dict]:
    """``(sampler, options)`` from the command line: flags left unset take the sampler's defaults."""
    sampler = "ode" if args.ode else args.sampler
    none = lambda v: None if v == "none" else v  # noqa: E731
    flags = {"predictor": none(args.predictor), "corrector": none(args.corrector), "snr": args.snr,
             "n_corrector_steps": args.n_corrector_steps, "order": args.order, "steps": args.steps}
    options = {k: v for k, v in flags.items() if v is not None or (k in ("predictor", "corrector") and
                                                                   getattr(args, k) == "none")}
    return sampler, {**options, **key_values(args.option, "--option")}


def run(args) -> int:
    import torch

    from ..metrics.lowdim import mode_stats, sliced_wasserstein
    from ..plotting import scatter_2d
    from ..sampling import generate
    from ..score import CountingScore
    from ..sde import SDES, get_sde
    from ..toy import GaussianMixture, get_toy, mixture_names

    choice(args.data, mixture_names(), "mixture (data sets with an exact score)")
    choice(args.sde, SDES, "SDE")
    mix: GaussianMixture = get_toy(args.data)
    if mix.dim != 2:
        raise UsageError(f"--data {args.data} is {mix.dim}-D; the toy command plots 2-D mixtures")
    sde = get_sde(args.sde)
    device = pick_device(args.device)
    score = CountingScore(mix.score_fn(sde))
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sampler, options = sampler_choice(args)
    name = f"{sampler} " + ", ".join(f"{k}={v}" for k, v in options.items())
    start = time.perf_counter()
    try:
        x = generate(sde, score, (args.n, 2), sampler=sampler, generator=gen, device=device, **options)
    except (ValueError, FloatingPointError) as e:  # the library's checks, as one line
        raise UsageError(str(e)) from None
    seconds = time.perf_counter() - start
    x = x.cpu()
    truth = mix.sample(args.n, torch.Generator().manual_seed(args.seed + 1))
    figures = {
        "data": args.data, "sde": args.sde, "sampler": name, "n": args.n, "nfe": score.nfe,
        "seconds": round(seconds, 3),
        "moments": mix.moment_report(x),
        "moments_of_true_samples": mix.moment_report(truth),
        "sliced_wasserstein": sliced_wasserstein(x, truth, generator=torch.Generator().manual_seed(0)),
        "sliced_wasserstein_true_vs_true": sliced_wasserstein(
            mix.sample(args.n, torch.Generator().manual_seed(args.seed + 2)), truth,
            generator=torch.Generator().manual_seed(0)),
        **{k: v for k, v in mode_stats(x, mix.means, mix.covs.diagonal(dim1=1, dim2=2).max(1).values.sqrt()
                                       .max().item()).items() if k != "counts"},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = scatter_2d(x, out / "samples.png", log_density=mix.log_prob,
                     title=f"{args.data}, {args.sde.upper()} SDE, {name}\nNFE {score.nfe}, "
                           f"SW {figures['sliced_wasserstein']:.3f}")
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=float))
    m = figures["moments"]
    print(f"{args.n} samples of {args.data} ({name}, {args.sde.upper()} SDE) in {seconds:.1f} s, {score.nfe} NFE")
    print(f"  weights err {m['weights_err']:.4f}  means err {m['means_err']:.4f}  covs err {m['covs_err']:.3f}  "
          f"sliced W {figures['sliced_wasserstein']:.4f} (true vs true {figures['sliced_wasserstein_true_vs_true']:.4f})")
    print(f"  modes {figures['modes_recovered']}/{mix.n_components}, high-quality share "
          f"{figures['high_quality_share']:.3f}")
    print(f"wrote {png} and {out / 'figures.json'}")
    return 0
