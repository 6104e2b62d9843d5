"""The options of a GAN run (:class:`GANConfig`), loaded from YAML and ``key=value`` overrides."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from ..toy import TOY_SETS

IMAGE_SETS = ("digits", "mnist", "cifar10", "folder")   # names of sdegen.data.DATASETS


@dataclass
class GANConfig:
    """Options of a GAN run (a schema: a YAML config with an unknown key is an error).

    ``data``: a 2-D toy set (``sdegen.toy.TOY_SETS``; MLP nets) or an image set (``IMAGE_SETS``; DCGAN
    nets, images in [-1, 1]). ``latent_dim`` is the MLP latent size or the DCGAN ``nz``."""

    data: str = "grid25"
    data_root: Optional[str] = None      # folder of an image set (not needed for digits)
    image_size: Optional[int] = None     # resize images (DCGAN sizes: 8, 16, 32, 64); None: native
    latent_dim: int = 2
    hidden: int = 128                    # MLP width
    depth: int = 3                       # MLP hidden layers
    ngf: int = 32                        # DCGAN generator width
    ndf: int = 32                        # DCGAN discriminator width
    batch_size: int = 256
    steps: int = 10000
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ckpt_every: int = 1000
    keep: int = 3                        # checkpoints kept
    sample_every: int = 1000             # PNG of samples (0: at the end only)
    log_every: int = 100
    seed: int = 0
    device: str = "auto"

    def validate(self) -> "GANConfig":
        if self.data not in TOY_SETS and self.data not in IMAGE_SETS:
            raise ValueError(f"unknown data {self.data!r}; accepted: {', '.join(list(TOY_SETS) + list(IMAGE_SETS))}")
        for name in ("latent_dim", "hidden", "depth", "ngf", "ndf", "batch_size", "ckpt_every", "keep",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0 or self.sample_every < 0 or not self.lr > 0:
            raise ValueError("steps and sample_every must be >= 0 and lr > 0")
        return self


# Options that may change when a run is resumed; all others must match the checkpoint's config.
RESUMABLE_CHANGES = ("steps", "ckpt_every", "keep", "sample_every", "log_every", "device", "data_root")


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[dict[str, Any]] = None) -> GANConfig:
    """A :class:`GANConfig` from an optional YAML file, then ``overrides``; unknown keys are errors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    try:
        cfg = OmegaConf.structured(GANConfig)
        if path is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            cfg = OmegaConf.merge(cfg, overrides)
        return GANConfig(**OmegaConf.to_container(cfg)).validate()
    except OmegaConfBaseException as e:
        raise ValueError(f"bad GAN config: {str(e).splitlines()[0]}") from e
