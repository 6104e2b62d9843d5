"""Models from outside a run folder, shared by ``sample``, ``table`` and ``likelihood``: an official score_sde
checkpoint (``--from-score-sde`` with ``--config``), a diffusers folder (``--from-diffusers``), and a folder
written by ``sdegen export --format safetensors`` given as the source."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import UsageError

# The "Pretrained checkpoints" section of the score_sde README links this folder.
SCORE_SDE_CHECKPOINTS = ("the official checkpoints are published in the README of "
                         "https://github.com/yang-song/score_sde_pytorch (section 'Pretrained checkpoints': "
                         "https://drive.google.com/drive/folders/1tFmF_uh57O6lx9ggtZT_5LdonVK2cV-e)")


def add_external_arguments(parser: argparse.ArgumentParser) -> None:
    """``--from-diffusers`` and its ``--scheduler`` (``--from-score-sde`` is declared by each command)."""
    parser.add_argument("--from-diffusers", metavar="DIR", default=None,
                        help="a diffusers UNet2DModel folder instead (a pipeline with model_index.json, a unet/ + "
                             "scheduler/ pair, or a bare model folder with --scheduler)")
    parser.add_argument("--scheduler", default=None, metavar="NAME|JSON",
                        help="with --from-diffusers: the scheduler (ddpm, ddim, pndm, score_sde_ve, a diffusers "
                             "class name or a scheduler_config.json) instead of the folder's")


def _score_sde(args: argparse.Namespace, device):
    from ..train import load_official

    if args.config is None:
        raise UsageError("--from-score-sde needs --config: a network preset (e.g. cifar10_ncsnpp_continuous, "
                         "cifar10_ddpmpp_continuous) or an official-style config .json")
    config = args.config
    if config.endswith(".json"):
        if not Path(config).is_file():
            raise UsageError(f"no config file at {config}")
        config = json.loads(Path(config).read_text())
    if not Path(args.from_score_sde).is_file():
        raise UsageError(f"checkpoint not found: {args.from_score_sde}; {SCORE_SDE_CHECKPOINTS}")
    try:
        model = load_official(args.from_score_sde, config, sde=args.sde, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    return model, None, str(Path(args.from_score_sde).resolve())


def _diffusers(args: argparse.Namespace, device):
    from ..interop import load_diffusers_model
    from ..train.config import SamplingConfig

    for flag, value in (("--config", args.config), ("--sde", args.sde)):
        if value is not None:
            raise UsageError(f"{flag} applies to --from-score-sde only (a diffusers folder holds its config)")
    try:
        model, info = load_diffusers_model(args.from_diffusers, device=device, scheduler=args.scheduler)
    except (ImportError, ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    # the scheduler's own sampler as the default: DDPM ancestral sampling, or the PC sampler of the VE pipeline
    s = {**info["sampling"], "corrector": info["sampling"]["corrector"] or "none"}
    defaults = SamplingConfig(**{k: v for k, v in s.items() if k in SamplingConfig.__dataclass_fields__})
    return model, defaults, f"{Path(info['source']).resolve()} (diffusers, {info['scheduler']})"


def external_model(args: argparse.Namespace, device):
    """``(model, sampling defaults or None, source name)`` when the arguments name a model from outside a
    run folder, else None; a UsageError saying what is wrong."""
    from ..interop import is_export, load_export

    given = [flag for flag, value in (("--from-score-sde", args.from_score_sde),
                                      ("--from-diffusers", getattr(args, "from_diffusers", None))) if value]
    if len(given) > 1 or (given and args.source is not None):
        raise UsageError(f"give one of a run folder / checkpoint, {' or '.join(given) if given else ''}, not both")
    if getattr(args, "scheduler", None) is not None and "--from-diffusers" not in given:
        raise UsageError("--scheduler applies to --from-diffusers only")
    if "--from-score-sde" in given:
        return _score_sde(args, device)
    if "--from-diffusers" in given:
        return _diffusers(args, device)
    if args.source is not None and is_export(args.source):
        for flag, value in (("--config", args.config), ("--sde", args.sde)):
            if value is not None:
                raise UsageError(f"{flag} applies to --from-score-sde only (an export holds its config)")
        try:
            model = load_export(args.source, device=device)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(str(e))
        return model, model.config.sampling, f"{Path(args.source).resolve()}@{model.step}"
    return None
