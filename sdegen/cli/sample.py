"""``sdegen sample``: draw samples of a trained run (EMA weights) or of an official score_sde checkpoint.

Sample ``i`` depends only on ``--seed`` and ``i`` (per-sample generators, per-sample Langevin steps), so
the result does not depend on ``--batch-size`` nor on the number of processes. Under
``torchrun --nproc_per_node=K -m sdegen sample ...`` each process writes its shards and rank 0 merges
them; an interrupted job resumes from its finished shards (``OUT.shards/``). The job is
:func:`sdegen.train.sample_job.score_job`: ``--out`` is locked while it runs, an existing ``--out`` is an
error unless ``--overwrite`` (or, when it is the finished output of the same job, nothing is done), and a
grid of the first samples goes next to it (``--grid``, ``--no-grid``).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .common import UsageError, key_values, output_paths, pick_device, positive_float, positive_int
from .launch import add_nproc_argument
from .models import add_external_arguments

HELP = "sample a trained run or an official score_sde checkpoint into an .npz (and a grid PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None,
                        help="a run folder (its newest good checkpoint), a ckpt_<step>.pt file or a folder of "
                             "`sdegen export --format safetensors`")
    parser.add_argument("--from-score-sde", metavar="CHECKPOINT", default=None,
                        help="an official score_sde checkpoint_N.pth instead (needs --config)")
    parser.add_argument("--config", default=None,
                        help="with --from-score-sde: a network preset (e.g. cifar10_ncsnpp_continuous) or an "
                             "official-style config .json")
    parser.add_argument("--sde", default=None, choices=("ve", "vp", "subvp"),
                        help="with --from-score-sde: the SDE (default from the network: sigma-conditioned: ve, "
                             "else vp)")
    add_external_arguments(parser)
    g = parser.add_argument_group("sampler (defaults: the run's config; official models: their paper's)")
    g.add_argument("--solver", "--sampler", default=None,
                   help="a sampler of sdegen.SAMPLERS: a fast one (heun, ddim, dpm_solver, dpm_solver_multistep, "
                        "dpm_solver_pp_2m, adaptive_sde: with --steps or --solver-option nfe=N), or pc / ode")
    g.add_argument("--solver-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --solver, e.g. s_churn=10 (repeatable)")
    g.add_argument("--predictor", default=None, help="reverse_diffusion, euler_maruyama, ancestral or none")
    g.add_argument("--corrector", default=None, help="langevin, annealed_langevin or none")
    g.add_argument("--snr", type=positive_float, default=None, help="signal-to-noise ratio of the corrector")
    g.add_argument("--n-corrector-steps", type=positive_int, default=None)
    g.add_argument("--snr-norm", default=None, choices=("sample", "batch"),
                   help="Langevin step norms per sample (batch-independent samples) or per batch")
    g.add_argument("--steps", type=positive_int, default=None, help="number of noise levels (default: sde.N)")
    g.add_argument("--eps", type=positive_float, default=None, help="last time of the sampler")
    g.add_argument("--no-denoise", action="store_true", help="skip the final noise-free step")
    g.add_argument("--ode", action="store_true", help="integrate the probability-flow ODE instead")
    g.add_argument("--ode-method", default=None, help="torchdiffeq method of --ode (default: the ODE sampler's)")
    g.add_argument("--rtol", type=positive_float, default=None, help="--ode relative tolerance")
    g.add_argument("--atol", type=positive_float, default=None, help="--ode absolute tolerance")
    c = parser.add_argument_group("classes (a class-conditional run, or a run guided by a classifier run)")
    c.add_argument("--class", dest="class_label", default=None, metavar="K",
                   help="draw class K (0-based); without it a conditional or classifier-guided job draws "
                        "class i mod C for sample i (the grid: one class per column); 'null': a conditional "
                        "run's unconditional samples")
    c.add_argument("--classifier", metavar="RUN", default=None,
                   help="a noise-conditional classifier run (training.loss=classifier, same SDE): classifier "
                        "guidance, score + scale * grad log p_t(y | x) (Song et al. 2021, eq. 14)")
    c.add_argument("--scale", type=float, default=None, help="classifier guidance scale (default 1)")
    c.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance w of a conditional run: (1 + w) s(x, t, y) - w s(x, t, null) "
                        "(Ho & Salimans 2022; default 0: the conditional score)")
    parser.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=50000,
                        help="number of samples (--num-samples under torchrun, whose own parser takes --n for "
                             "its --nnodes)")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="sample i depends on (seed, i) only")
    parser.add_argument("--out", default="samples.npz", help="output .npz (array 'samples')")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (and --grid)")
    parser.add_argument("--grid", default=None, metavar="PNG",
                        help="grid (or scatter plot) of the first 100 samples (default: --out with .png)")
    parser.add_argument("--no-grid", action="store_true", help="write no grid")
    parser.add_argument("--raw", action="store_true", help="use the raw weights of a run, not its EMA")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true")
    add_nproc_argument(parser)


def load_model(args: argparse.Namespace, device):
    """``(model, sampling defaults or None, source name)`` of the model arguments (a run, a checkpoint file
    or ``--from-score-sde``), on ``device``; a UsageError saying what is wrong."""
    from ..train import load_run
    from .models import external_model

    found = external_model(args, device)
    if found is not None:
        return found
    if args.source is None:
        raise UsageError("give a run folder, a ckpt_<step>.pt file or an exported folder (or --from-score-sde "
                         "CHECKPOINT --config ..., or --from-diffusers DIR)")
    for flag, value in (("--config", args.config), ("--sde", args.sde)):
        if value is not None:
            raise UsageError(f"{flag} applies to --from-score-sde only (a run's checkpoint holds its config)")
    try:
        model = load_run(args.source, use_ema=not args.raw, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    return model, model.config.sampling, f"{Path(args.source).resolve()}@{model.step}"


def class_guidance(args: argparse.Namespace, model, device):
    """``(score_for or None, description)`` of ``--class/--classifier/--scale/--guidance``: the score
    function of a batch of sample indices (class ``--class``, or class ``i mod C`` for sample ``i``)."""
    from ..score import NULL_LABEL
    from ..train import load_run

    if args.scale is not None and args.classifier is None:
        raise UsageError("--scale is the scale of classifier guidance: it needs --classifier RUN")
    if model.is_classifier:
        raise UsageError(f"{args.source} is a classifier run; sample a score run (--classifier {args.source} "
                         "guides it)")
    classifier = None
    if args.classifier is not None:
        try:
            classifier = load_run(args.classifier, device=device)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--classifier: {e}")
        if not classifier.is_classifier:
            raise UsageError(f"--classifier {args.classifier} is a score run, not a classifier run "
                             "(training.loss=classifier)")
    if args.class_label is None and args.guidance is None and classifier is None and not model.is_conditional:
        return None, ""
    if not model.is_conditional and classifier is None:
        raise UsageError("this run is unconditional: --class needs --classifier RUN (classifier guidance), or "
                         "sample a class-conditional run (model.options.num_classes)")
    if args.guidance is not None and not model.is_conditional:
        raise UsageError("--guidance (classifier-free guidance) needs a class-conditional run "
                         "(model.options.num_classes); an unconditional run takes --classifier RUN --scale S")
    classes = model.num_classes if model.is_conditional else classifier.num_classes
    if classifier is not None and model.is_conditional and classifier.num_classes != classes:
        raise UsageError(f"the run has {classes} classes but the classifier {classifier.num_classes}")
    label = args.class_label
    if label is not None:
        if label == "null" and model.is_conditional and classifier is None and args.guidance is None:
            label = NULL_LABEL
        elif not label.isdigit() or int(label) >= classes:
            raise UsageError(f"--class must be a class in 0..{classes - 1}" +
                             (" or 'null' (unconditional, without guidance)" if model.is_conditional else "") +
                             f", got {label!r}")
        label = int(label)
    w, scale = args.guidance or 0.0, 1.0 if args.scale is None else args.scale
    if label == NULL_LABEL:
        return (lambda indices: model.score_fn()), "class=null"
    import torch

    def score_for(indices: list[int]):
        y = label if label is not None else torch.tensor(indices, device=device) % classes
        try:
            return model.class_score_fn(y, guidance=w, classifier=classifier, scale=scale)
        except ValueError as e:
            raise UsageError(str(e))

    score_for(list(range(2)))   # a check of the combination, before any sampling
    what = f"class={label}" if label is not None else f"class=i mod {classes}"
    if model.is_conditional:
        what += f", guidance={w:g}"
    if classifier is not None:
        what += f", classifier={Path(args.classifier).resolve()}@{classifier.step}, scale={scale:g}"
    return score_for, what


def sampler_options(args: argparse.Namespace, model, defaults):
    """The :class:`sdegen.train.sample_job.SamplerOptions` of the arguments over the run's defaults
    (official models: the paper's samplers), checked against the sampler's signature."""
    from ..sde import VESDE
    from ..train import SamplerOptions
    from ..train.config import SamplingConfig

    if defaults is None:  # official models: the paper's samplers (VE: RD + Langevin; VP / sub-VP: EM)
        ve = isinstance(model.sde, VESDE)
        defaults = SamplingConfig(predictor="reverse_diffusion" if ve else "euler_maruyama",
                                  corrector="langevin" if ve else "none")
    pc = args.solver == "pc"                     # --sampler pc / ode: the PC sampler or --ode
    args.ode, args.solver = args.ode or args.solver == "ode", None if args.solver in ("pc", "ode") else args.solver
    if args.ode and (args.predictor or args.corrector or args.snr or args.n_corrector_steps or args.solver):
        raise UsageError("--ode integrates the probability-flow ODE: it takes no --solver, --predictor, "
                         "--corrector, --snr or --n-corrector-steps")
    if not args.ode and (args.ode_method or args.rtol or args.atol):
        raise UsageError("--ode-method, --rtol and --atol are options of --ode")
    if args.solver and (args.predictor or args.corrector):
        raise UsageError("--solver replaces the predictor-corrector sampler: give --solver or "
                         "--predictor / --corrector, not both")
    if args.solver_option and not (args.solver or defaults.solver):
        raise UsageError("--solver-option needs a --solver")
    denoise = False if args.no_denoise else None
    if args.ode:
        opts = SamplerOptions("ode").changed(method=args.ode_method, rtol=args.rtol, atol=args.atol, eps=args.eps,
                                             denoise=denoise)
    elif args.solver is not None or (defaults.solver is not None and not pc and args.predictor is None
                                     and args.corrector is None):
        solver = args.solver or defaults.solver
        extra = dict(defaults.solver_options) if solver == defaults.solver else {}
        extra.update(key_values(args.solver_option, "--solver-option"))
        steps = args.steps or (None if {"nfe", "times"} & set(extra) else defaults.steps)  # they replace steps
        opts = SamplerOptions(solver, {"eps": defaults.eps, **extra}).changed(steps=steps, eps=args.eps,
                                                                            denoise=denoise)
    else:
        none = lambda v: None if v == "none" else v  # noqa: E731
        base = SamplerOptions.from_config(replace(defaults, solver=None))
        opts = base.changed(predictor=args.predictor, corrector=args.corrector, snr=args.snr,
                            n_corrector_steps=args.n_corrector_steps, snr_norm=args.snr_norm, steps=args.steps,
                            eps=args.eps, denoise=denoise)
        opts = replace(opts, options={**opts.options, "predictor": none(opts.options["predictor"]),
                                      "corrector": none(opts.options["corrector"])})
    try:
        return opts.check(model)
    except ValueError as e:
        raise UsageError(str(e))


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..train.distributed import session
    from ..train.sample_job import describe, save_picture, score_job

    out, grid = output_paths(args.out, args.grid, no_grid=args.no_grid, overwrite=args.overwrite)
    pick_device(args.device)
    with session(args.device) as ctx:
        model, defaults, source = load_model(args, ctx.device)
        opts = sampler_options(args, model, defaults)
        score_for, classes = class_guidance(args, model, ctx.device)
        try:
            result = score_job(model, out, n=args.n, batch_size=args.batch_size, seed=args.seed, options=opts,
                               source=source + (f" [{classes}]" if classes else ""), overwrite=args.overwrite,
                               ctx=ctx, progress=not args.no_progress, score_for=score_for)
        except ValueError as e:
            raise UsageError(str(e))
    if result.path is None:  # not rank 0
        return 0
    with np.load(out) as f:
        samples = f["samples"]
    if result.already_done:
        print(f"{out} is finished already (the same job: {len(samples)} samples); nothing to do "
              "(--overwrite to draw it again)")
    else:
        print(f"{len(samples)} samples {list(samples.shape)} {samples.dtype} "
              f"({describe(opts, model.sde.N)}{'; ' + classes if classes else ''}) -> {out}")
    if grid is not None and (not result.already_done or not grid.exists()):
        save_picture(model, torch.from_numpy(samples[:100]) if model.is_image else torch.from_numpy(samples), grid,
                     nrow=10 if model.is_image and len(samples) >= 100 else None)
        print(f"grid -> {grid}")
    return 0
