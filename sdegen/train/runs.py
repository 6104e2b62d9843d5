"""A score model and what it takes to use it: network, SDE, parametrization, data range and shape.

Built from a training config (:func:`build`), or loaded from a run folder / training checkpoint
(:func:`load_run`, EMA weights by default) or from an official score_sde checkpoint
(:func:`load_official`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .. import checkpoint
from ..nets import PRESETS, build_network, model_options
from ..score import ScoreFn, score_fn_from_model
from ..sde import SDE, VESDE, get_sde
from .config import Config, ConfigError, from_dict

CHECKPOINTS = "checkpoints"   # sub-folder of a run folder holding ckpt_<step>.pt
FORMAT = "sdegen-score-run"   # the "format" entry of a training checkpoint


@dataclass
class ScoreModel:
    """A network ``net(x, labels)`` and how to turn it into a score function.

    ``shape``: shape of one sample, ``(D,)`` or ``(C, H, W)``; ``centered``: image data in [-1, 1]
    (else [0, 1]); ``continuous``: labels of the continuous SDE (else discrete step indices)."""
    net: nn.Module
    sde: SDE
    parametrization: str
    continuous: bool
    centered: bool
    shape: tuple[int, ...]
    config: Optional[Config] = None
    step: Optional[int] = None

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def score_fn(self) -> ScoreFn:
        return score_fn_from_model(self.net, self.sde, self.parametrization, self.continuous)

    def to_signed(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the model's data range -> [-1, 1] (2-D points unchanged)."""
        return x if (self.centered or not self.is_image) else 2 * x - 1


def network_options(cfg: Config) -> dict[str, Any]:
    """The network's options: the preset's, changed by ``model.options`` (normalised, unchecked)."""
    return model_options({**PRESETS[cfg.model.preset], **cfg.model.options})


def sample_shape(opts: Mapping[str, Any]) -> tuple[int, ...]:
    """Shape of one sample the network takes: ``(dim,)`` for the MLP, ``(C, S, S)`` for U-Nets."""
    if "dim" in opts:
        return (int(opts["dim"]),)
    return (int(opts["num_channels"]), int(opts["image_size"]), int(opts["image_size"]))


def build_sde(cfg: Config) -> SDE:
    s = cfg.sde
    if s.name == "ve":
        return get_sde("ve", sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.N)
    return get_sde(s.name, beta_min=s.beta_min, beta_max=s.beta_max, N=s.N)


def build(cfg: Config) -> ScoreModel:
    """A fresh model (random weights from the global RNG, train mode) of ``cfg``.

    Raises :class:`ConfigError` if the network options are wrong or do not fit the SDE."""
    try:
        opts = network_options(cfg)
        net = build_network(opts)
        sde = build_sde(cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.preset={cfg.model.preset}, model.options: {e}") from None
    continuous = cfg.training.loss == "dsm"
    if continuous:
        wanted = "sigma" if isinstance(sde, VESDE) else "t999"
        if opts["conditioning"] != wanted:
            raise ConfigError(f"the network of model.preset={cfg.model.preset} is conditioned on "
                              f"{opts['conditioning']!r} but sde.name={cfg.sde.name} feeds {wanted!r}; for VE "
                              "use a Fourier embedding (model.options.embedding_type=fourier, "
                              "model.options.conditioning=sigma), for VP / sub-VP a positional one")
    return ScoreModel(net, sde, opts["parametrization"], continuous, bool(opts.get("centered", True)),
                      sample_shape(opts), cfg)


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """``path`` itself if it is a file; else the run folder's checkpoint folder (None if it has none)."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / CHECKPOINTS, path):
        if checkpoint.list_checkpoints(folder):
            return folder
    return None


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[dict, Path]:
    """A training checkpoint (a file, or the newest good one of a run folder) and its path.

    Raises FileNotFoundError if there is none, ValueError if it is not an sdegen training checkpoint."""
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a ckpt_<step>.pt file or a run folder "
                                f"holding {CHECKPOINTS}/ckpt_<step>.pt)")
    if found.is_file():
        try:
            state, file = checkpoint.load(found, map_location), found
        except checkpoint.CheckpointError as e:
            raise ValueError(str(e)) from None
    else:
        latest = checkpoint.load_latest(found, map_location)
        if latest is None:
            raise ValueError(f"every checkpoint in {found} is corrupt")
        state, file = latest
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{file} is not an sdegen training checkpoint (for an official score_sde "
                         "checkpoint, use --from-score-sde with --config)")
    return state, file


def load_run(path: str | os.PathLike, *, use_ema: bool = True, device="cpu") -> ScoreModel:
    """The model of a run folder's newest good checkpoint (or of a checkpoint file), in eval mode."""
    state, file = read_checkpoint(path)
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise ValueError(f"{file}: its config does not load: {e}") from None
    model = build(cfg)
    weights = state["ema"]["module"] if use_ema else state["model"]
    model.net.load_state_dict(weights, strict=True)
    model.net.to(device).eval().requires_grad_(False)
    model.step = int(state["step"])
    return model


def load_official(path: str | os.PathLike, config: str | Mapping[str, Any], *, sde: Optional[str] = None,
                  device="cpu") -> ScoreModel:
    """An official score_sde checkpoint (``checkpoint_N.pth``) with its EMA weights.

    ``config``: a network preset name or an official-style config dict (see
    :func:`sdegen.nets.model_options`). The SDE follows the network: a network conditioned on sigma is a
    VE model (its ``sigma_min``/``sigma_max``/``num_scales``), one conditioned on ``999 t`` a VP model
    (``beta_min``/``beta_max``), or sub-VP with ``sde="subvp"``."""
    from ..nets import load_score_sde_checkpoint

    opts = model_options(config)
    net = load_score_sde_checkpoint(path, config, device=device).requires_grad_(False)
    if opts["conditioning"] == "sigma":
        if sde not in (None, "ve"):
            raise ValueError(f"this network is conditioned on sigma (a VE model); sde={sde!r} does not fit")
        the_sde = get_sde("ve", sigma_min=float(opts.get("sigma_min", 0.01)),
                          sigma_max=float(opts.get("sigma_max", 50.0)), N=int(opts.get("num_scales", 1000)))
    else:
        name = sde or (str(config.get("sde", "vp")) if isinstance(config, Mapping) else "vp")
        name = {"vpsde": "vp", "subvpsde": "subvp"}.get(name.lower(), name.lower())
        if name not in ("vp", "subvp"):
            raise ValueError(f"this network is conditioned on 999 t (a VP or sub-VP model); sde={name!r} "
                             "does not fit")
        the_sde = get_sde(name, beta_min=float(opts.get("beta_min", 0.1)),
                          beta_max=float(opts.get("beta_max", 20.0)), N=int(opts.get("num_scales", 1000)))
    return ScoreModel(net, the_sde, opts["parametrization"], True, bool(opts.get("centered", True)),
                      sample_shape(opts))
