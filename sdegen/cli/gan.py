"""``sdegen gan train``: train a GAN on a 2-D toy set or an image set (resumes in its workdir)."""
from __future__ import annotations

import argparse
import dataclasses
import os

from .common import UsageError, positive_int

HELP = "train a GAN (non-saturating loss, Adam) on toy 2-D data or images, with checkpoints and resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="gan_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("train", help="train (or resume) a GAN in --workdir",
                       description="Train a GAN; the run folder keeps checkpoints, generator.pt, "
                                   "discriminator.pt, stats.jsonl and sample PNGs. Reruns resume.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="YAML file of GANConfig options")
    p.add_argument("--data", help="toy set (grid25, ring8, swiss_roll, ...) or image set (digits, ...)")
    p.add_argument("--data-root", help="folder of the image set (not needed for digits)")
    p.add_argument("--steps", type=positive_int, help="total training steps")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other GANConfig option, e.g. --set latent_dim=8 (repeatable)")
    p.add_argument("--workdir", required=True, help="run folder")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoints exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf
    out = {k: v for k, v in (("data", args.data), ("data_root", args.data_root), ("steps", args.steps),
                             ("batch_size", args.batch_size), ("lr", args.lr), ("seed", args.seed))
           if v is not None}
    for item in args.set:
        if "=" not in item:
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
    if args.set:
        out.update(OmegaConf.to_container(OmegaConf.from_dotlist(args.set)))
    return out


def run(args: argparse.Namespace) -> int:
    from ..gan import load_config, train_gan
    from .common import pick_device
    if args.config is not None and not os.path.isfile(args.config):
        raise UsageError(f"no config file at {args.config}")
    try:
        cfg = load_config(args.config, _overrides(args))
    except ValueError as e:
        raise UsageError(str(e))
    if args.device is not None:
        cfg = dataclasses.replace(cfg, device=str(pick_device(args.device)))
    else:
        pick_device(cfg.device)  # a clear error for an unavailable device
    try:
        result = train_gan(cfg, args.workdir, resume=not args.no_resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    last = result.stats[-1] if result.stats else {}
    print(f"step {result.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step"))
    print(f"generator: {result.workdir / 'generator.pt'}  discriminator: {result.workdir / 'discriminator.pt'}")
    return 0
