"""``sdegen export``: a trained run's model (EMA weights) in a format people share.

``--format safetensors`` writes ``OUT/model.safetensors`` and ``OUT/sdegen_config.json`` (the run's config,
step and source); ``sdegen sample OUT``, ``sdegen likelihood OUT`` and ``sdegen table OUT`` read it back
(:func:`sdegen.interop.load_export`). ``--format diffusers`` is refused: no sdegen network maps exactly onto
diffusers' ``UNet2DModel`` (:data:`sdegen.interop.DIFFUSERS_EXPORT_REFUSAL` says why).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError

HELP = "export a trained run's EMA weights (+ config) as safetensors that sdegen reloads"

FORMATS = ("safetensors", "diffusers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (its newest good checkpoint) or a ckpt_<step>.pt file")
    parser.add_argument("out", help="output folder (created; its model files are replaced only with --overwrite)")
    parser.add_argument("--format", default="safetensors", choices=FORMATS,
                        help="safetensors: weights + sdegen config; diffusers: refused (no exact mapping)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")


def run(args: argparse.Namespace) -> int:
    from ..interop import DIFFUSERS_EXPORT_REFUSAL, EXPORT_CONFIG, EXPORT_WEIGHTS, export_safetensors
    from ..train import load_run

    if args.format == "diffusers":
        raise UsageError(DIFFUSERS_EXPORT_REFUSAL)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    existing = [name for name in (EXPORT_WEIGHTS, EXPORT_CONFIG) if (out / name).exists()]
    if existing and not args.overwrite:
        raise UsageError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    try:
        model = load_run(args.run, use_ema=not args.raw, device="cpu")
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    source = f"{Path(args.run).resolve()}@{model.step}"
    try:
        export_safetensors(model, out, source=source)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot write {out}: {e}")
    weights = "raw" if args.raw else "EMA"
    print(f"exported {source} ({weights} weights, preset {model.config.model.preset}) -> {out / EXPORT_WEIGHTS} "
          f"and {out / EXPORT_CONFIG}")
    return 0
