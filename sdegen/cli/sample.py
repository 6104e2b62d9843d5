"""``sdegen sample``: draw samples of a trained run (EMA weights) or of an official score_sde checkpoint.

Sample ``i`` depends only on ``--seed`` and ``i`` (per-sample generators, per-sample Langevin steps), so
the result does not depend on ``--batch-size`` nor on the number of processes. Under
``torchrun --nproc_per_node=K -m sdegen sample ...`` each process writes its shards and rank 0 merges
them; an interrupted job resumes from its finished shards (``OUT.shards/``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, pick_device, positive_float, positive_int

HELP = "sample a trained run or an official score_sde checkpoint into an .npz (and a grid PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None,
                        help="a run folder (its newest good checkpoint) or a ckpt_<step>.pt file")
    parser.add_argument("--from-score-sde", metavar="CHECKPOINT", default=None,
                        help="an official score_sde checkpoint_N.pth instead (needs --config)")
    parser.add_argument("--config", default=None,
                        help="with --from-score-sde: a network preset (e.g. cifar10_ncsnpp_continuous) or an "
                             "official-style config .json")
    parser.add_argument("--sde", default=None, choices=("ve", "vp", "subvp"),
                        help="with --from-score-sde: the SDE (default from the network: sigma-conditioned: ve, "
                             "else vp)")
    g = parser.add_argument_group("sampler (defaults: the run's config; official models: their paper's)")
    g.add_argument("--solver", default=None,
                   help="a fast sampler of sdegen.solvers instead of PC: heun, ddim, dpm_solver, "
                        "dpm_solver_multistep, dpm_solver_pp_2m, adaptive_sde (with --steps)")
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
    g.add_argument("--ode-method", default="dopri5", help="torchdiffeq method of --ode")
    g.add_argument("--rtol", type=positive_float, default=1e-5)
    g.add_argument("--atol", type=positive_float, default=1e-5)
    parser.add_argument("--n", type=positive_int, default=50000, help="number of samples")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="sample i depends on (seed, i) only")
    parser.add_argument("--out", default="samples.npz", help="output .npz (array 'samples')")
    parser.add_argument("--grid", default=None, metavar="PNG", help="also save a grid (or scatter) of the first samples")
    parser.add_argument("--raw", action="store_true", help="use the raw weights of a run, not its EMA")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true")


def _load(args: argparse.Namespace, device):
    """``(model, sampling defaults or None, source name)``."""
    from ..train import load_official, load_run

    if args.from_score_sde is not None:
        if args.source is not None:
            raise UsageError("give either a run folder / checkpoint or --from-score-sde, not both")
        if args.config is None:
            raise UsageError("--from-score-sde needs --config: a network preset (e.g. cifar10_ncsnpp_continuous, "
                             "cifar10_ddpmpp_continuous) or an official-style config .json")
        config = args.config
        if config.endswith(".json"):
            import json
            if not Path(config).is_file():
                raise UsageError(f"no config file at {config}")
            config = json.loads(Path(config).read_text())
        try:
            model = load_official(args.from_score_sde, config, sde=args.sde, device=device)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(str(e))
        return model, None, str(Path(args.from_score_sde).resolve())
    if args.source is None:
        raise UsageError("give a run folder or a ckpt_<step>.pt file (or --from-score-sde CHECKPOINT --config ...)")
    for flag, value in (("--config", args.config), ("--sde", args.sde)):
        if value is not None:
            raise UsageError(f"{flag} applies to --from-score-sde only (a run's checkpoint holds its config)")
    try:
        model = load_run(args.source, use_ema=not args.raw, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    return model, model.config.sampling, f"{Path(args.source).resolve()}@{model.step}"


def _options(args: argparse.Namespace, model, defaults):
    from ..sampling import CORRECTORS, PREDICTORS
    from ..sde import VESDE
    from ..train import SamplerOptions
    from ..train.config import SamplingConfig
    from .common import choice

    if defaults is None:  # official models: the paper's samplers (VE: RD + Langevin; VP / sub-VP: EM)
        ve = isinstance(model.sde, VESDE)
        defaults = SamplingConfig(predictor="reverse_diffusion" if ve else "euler_maruyama",
                                  corrector="langevin" if ve else "none")
    if args.ode and (args.predictor or args.corrector or args.snr or args.n_corrector_steps or args.solver):
        raise UsageError("--ode integrates the probability-flow ODE: it takes no --solver, --predictor, "
                         "--corrector, --snr or --n-corrector-steps")
    if args.solver and (args.predictor or args.corrector):
        raise UsageError("--solver replaces the predictor-corrector sampler: give --solver or "
                         "--predictor / --corrector, not both")
    if args.solver_option and not (args.solver or defaults.solver):
        raise UsageError("--solver-option needs a --solver")
    if args.predictor is not None:
        choice(args.predictor, list(PREDICTORS) + ["none"], "predictor")
    if args.corrector is not None:
        choice(args.corrector, list(CORRECTORS) + ["none"], "corrector")
    none = lambda v: None if v == "none" else v  # noqa: E731
    opts = SamplerOptions.from_config(defaults, snr=args.snr, n_corrector_steps=args.n_corrector_steps,
                                      snr_norm=args.snr_norm, steps=args.steps, eps=args.eps)
    from dataclasses import replace
    if args.solver is not None:
        from ..solvers import SOLVERS
        choice(args.solver, SOLVERS, "solver")
        opts = replace(opts, solver=args.solver,
                       solver_options=opts.solver_options if args.solver == defaults.solver else {})
    if args.solver_option:
        opts = replace(opts, solver_options={**opts.solver_options, **_key_values(args.solver_option)})
    if args.predictor is not None or args.corrector is not None:
        opts = replace(opts, solver=None, solver_options={})
    if opts.solver is not None and not args.ode and opts.steps is None and opts.solver != "adaptive_sde":
        raise UsageError(f"--solver {opts.solver} needs --steps")
    if args.predictor is not None:
        opts = replace(opts, predictor=none(args.predictor))
    if args.corrector is not None:
        opts = replace(opts, corrector=none(args.corrector))
    pc = opts.solver is None and not args.ode
    if pc and opts.predictor is None and opts.corrector is None:
        raise UsageError("predictor and corrector cannot both be none")
    if pc and opts.predictor == "ancestral" and not model.sde.supports_ancestral:
        raise UsageError(f"predictor 'ancestral' is not defined for {type(model.sde).__name__}; "
                         "use reverse_diffusion or euler_maruyama")
    if not opts.eps < model.sde.T:
        raise UsageError(f"--eps must be below T={model.sde.T}, got {opts.eps}")
    return replace(opts, denoise=opts.denoise and not args.no_denoise, ode=args.ode, ode_method=args.ode_method,
                   rtol=args.rtol, atol=args.atol)


def _key_values(items: list[str]) -> dict:
    """``["s_churn=10", "order=2"]`` -> ``{"s_churn": 10.0, "order": 2}`` (YAML values)."""
    from omegaconf import OmegaConf
    bad = [i for i in items if "=" not in i or i.startswith("=")]
    if bad:
        raise UsageError(f"--solver-option takes KEY=VALUE, got {bad[0]!r}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train import sample_to_npz
    from ..train.distributed import session

    if not args.out.endswith(".npz"):
        raise UsageError(f"--out must be a .npz file, got {args.out!r}")
    if args.grid is not None and not args.grid.lower().endswith(".png"):
        raise UsageError(f"--grid must be a .png file, got {args.grid!r}")
    pick_device(args.device)
    with session(args.device) as ctx:
        model, defaults, source = _load(args, ctx.device)
        opts = _options(args, model, defaults)
        try:
            out = sample_to_npz(model, args.out, n=args.n, batch_size=args.batch_size, seed=args.seed,
                                options=opts, source=source, ctx=ctx, progress=not args.no_progress)
        except ValueError as e:
            raise UsageError(str(e))
    if out is None:  # not rank 0
        return 0
    import numpy as np

    with np.load(out) as f:
        samples = f["samples"]
    print(f"{len(samples)} samples {list(samples.shape)} {samples.dtype} -> {out}")
    if args.grid is not None:
        from ..train.sample_job import save_picture
        save_picture(model, torch.from_numpy(samples[:100]) if model.is_image else torch.from_numpy(samples),
                     args.grid, nrow=10 if model.is_image and len(samples) >= 100 else None)
        print(f"grid -> {args.grid}")
    return 0
