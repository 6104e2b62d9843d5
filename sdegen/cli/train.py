"""``sdegen train CONFIG [key=value ...] --workdir DIR``: train a score model (resumes in DIR).

Under ``torchrun --nproc_per_node=K -m sdegen train ...`` the K processes train together with DDP
(NCCL on GPUs, gloo on CPU) on the config's global batch size.
"""
from __future__ import annotations

import argparse
import sys

from .common import UsageError, pick_device
from .launch import add_nproc_argument

HELP = "train a score model from a config preset or YAML file, with checkpoints and resume"


def _presets() -> list[str]:
    """The YAML presets shipped in sdegen/configs (listed without importing torch)."""
    from importlib import resources
    return sorted(p.name[:-5] for p in (resources.files("sdegen") / "configs").iterdir()
                  if p.name.endswith(".yaml"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=f"a preset ({', '.join(_presets())}) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config changes, e.g. optim.lr=1e-3 training.steps=5000 (anywhere on the line)")
    parser.add_argument("--workdir", required=True, help="run folder (checkpoints, samples, logs)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (sets training.device)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the newest good checkpoint of the run folder (--no-resume: start "
                             "afresh, overwriting it)")
    parser.add_argument("--restart", action="store_true",
                        help="start over from step 0, moving the run folder's checkpoints (readable or not) to "
                             "checkpoints/old_<time>/; nothing is deleted")
    parser.add_argument("--download", action="store_true",
                        help="fetch MNIST / CIFAR-10 into data.root when missing (sets data.download=true)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_nproc_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..train import ConfigError, NonFiniteLossError, load_config, train
    from ..train.distributed import session

    overrides = list(args.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UsageError(f"expected key=value overrides, got {bad[0]!r}")
    if args.download:
        overrides.append("data.download=true")
    if args.device is not None:
        pick_device(args.device)  # a clear error for an unknown or unavailable device
        overrides.append(f"training.device={args.device}")
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as e:
        raise UsageError(str(e))
    if cfg.training.device != "auto":
        pick_device(cfg.training.device)
    try:
        with session(cfg.training.device) as ctx:
            result = train(cfg, args.workdir, resume=args.resume, restart=args.restart,
                           progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"sdegen train: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    if ctx.is_main:
        last = result.stats[-1] if result.stats else {}
        loss = f", loss {last['loss']:.4g}" if "loss" in last else ""
        print(f"step {result.step}{loss}" + (" (time limit reached; rerun to continue)"
                                              if result.stopped == "time_limit" else ""))
        print(f"run folder: {result.workdir}  (checkpoints/, samples/step_{result.step:08d}.png, "
              "stats.jsonl, tb/)")
    return 0
