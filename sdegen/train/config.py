"""The schema of a training run: dataclasses read with OmegaConf, so a YAML file or a ``key=value``
override with an unknown key or a value of the wrong type is an error naming the key.

Presets live in ``sdegen/configs/<name>.yaml`` (package data); :func:`load_config` takes a preset name
or the path of a YAML file, then ``key=value`` overrides (``optim.lr=1e-3``, ``model.options.nf=64``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A training config is malformed: unknown key, wrong type, or a value out of range."""


@dataclass
class DataConfig:
    name: str = "digits"               # a toy set (sdegen.toy.TOY_SETS) or an image set (sdegen.data.DATASETS)
    root: Optional[str] = None         # folder (or archive) of an image set; unused by toy sets and digits
    image_size: Optional[int] = None   # resize images; None: the network preset's size
    flip: bool = False                 # random horizontal flips
    dequantize: bool = False           # uniform dequantization of the pixel codes
    download: bool = False             # fetch MNIST / CIFAR-10 into root when missing (torchvision's downloaders)


@dataclass
class ModelConfig:
    preset: str = "tiny8"              # a network preset (sdegen.nets.PRESETS)
    options: Dict[str, Any] = field(default_factory=dict)  # preset options to change, e.g. {nf: 64}


@dataclass
class SDEConfig:
    name: str = "vp"                   # ve, vp, subvp
    beta_min: float = 0.1              # VP / sub-VP
    beta_max: float = 20.0
    sigma_min: float = 0.01            # VE
    sigma_max: float = 50.0
    N: int = 1000                      # discretisation steps (discrete losses, default sampling steps)

    def build(self):
        """The :class:`sdegen.sde.SDE` this section describes."""
        from ..sde import get_sde
        if self.name == "ve":
            return get_sde("ve", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)
        return get_sde(self.name, beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000                 # linear warm-up of the learning rate over this many steps (0: none)
    lr_decay: int = 0                  # then lr / sqrt(step / lr_decay) after this many steps (0: constant; EDM2)
    grad_clip: float = 1.0             # clip the global gradient norm to this (<= 0: no clipping)
    ema_rate: float = 0.9999
    ema_warmup: bool = True            # decay min(rate, (1 + n) / (10 + n)) after n updates (official EMA)


@dataclass
class TrainingConfig:
    loss: str = "dsm"                  # dsm (continuous), smld (discrete VE), ddpm (discrete VP), classifier
    label_dropout: float = 0.0         # class-conditional networks: p of the null label (Ho & Salimans 2022)
    reduce_mean: bool = False          # average the per-sample loss over dimensions instead of summing
    likelihood_weighting: bool = False
    eps: float = 1e-5                  # smallest time of the continuous loss
    edm_p_mean: float = -1.2           # loss edm: log sigma ~ N(p_mean, p_std^2) on [sigma(eps), sigma(T)]
    edm_p_std: float = 1.2
    edm_sigma_data: float = 0.5        # data std of the edm parametrization's preconditioning (and its loss)
    batch_size: int = 128              # global batch size, split over the processes
    steps: int = 1_300_000             # total optimizer steps
    time_limit: Optional[float] = None  # minutes of wall time per invocation (checked at log steps)
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 10_000
    keep: int = 3                      # checkpoints kept
    sample_every: int = 50_000         # picture of EMA samples (0: at the end only)
    precision: str = "fp32"            # fp32, bf16, fp16 (autocast; fp16 needs CUDA)
    compile: bool = False              # torch.compile the network
    device: str = "auto"               # auto, cpu, cuda (under torchrun each process takes its own GPU)
    tensorboard: bool = True


def _pc(option: str):
    """The PC sampler's default for ``option``: written once, in its signature."""
    from ..sampling import sampler_defaults
    return sampler_defaults("pc")[option]


@dataclass
class SamplingConfig:
    """How pictures during training are drawn; the defaults of ``sdegen sample`` for this run. The PC
    defaults are the sampler's own (:func:`sdegen.sampling.sampler_defaults`)."""
    solver: Optional[str] = None           # a fast sampler of sdegen.solvers (e.g. heun) instead of PC
    solver_options: Dict[str, Any] = field(default_factory=dict)  # e.g. {s_churn: 10} for heun
    predictor: str = _pc("predictor")      # sdegen.sampling.PREDICTORS or none
    corrector: str = _pc("corrector")      # sdegen.sampling.CORRECTORS or none
    snr: float = _pc("snr")
    n_corrector_steps: int = _pc("n_corrector_steps")
    snr_norm: str = _pc("snr_norm")        # image presets choose "sample": a sample does not depend on its batch
    steps: Optional[int] = None            # None: sde.N (PC); a solver needs it (or nfe in solver_options)
    eps: float = _pc("eps")
    denoise: bool = _pc("denoise")
    n: int = 64                            # samples in each picture (2-D data: points)
    seed: int = 0

    def sampler(self) -> tuple[str, dict]:
        """``(name, options)`` of this config's sampler for :func:`sdegen.generate`: PC, or ``solver``
        with ``steps`` (unless its options give ``nfe`` or ``times``), ``eps`` and ``solver_options``."""
        none = lambda v: None if v == "none" else v  # noqa: E731
        if self.solver is not None:
            given = {"nfe", "times"} & set(self.solver_options)   # an evaluation budget or a grid replaces steps
            steps = {} if self.steps is None or given else {"steps": self.steps}
            return self.solver, {**steps, "eps": self.eps, **dict(self.solver_options)}
        return "pc", {"predictor": none(self.predictor), "corrector": none(self.corrector), "snr": self.snr,
                      "n_corrector_steps": self.n_corrector_steps, "snr_norm": self.snr_norm,
                      "steps": self.steps, "eps": self.eps, "denoise": self.denoise}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


# Keys that may change when a run is resumed; any other change is refused (it would not be the same run).
RESUMABLE_CHANGES = ("data.root", "data.download", "training.steps", "training.time_limit", "training.log_every",
                     "training.ckpt_every", "training.keep", "training.sample_every", "training.device",
                     "training.tensorboard", "training.compile", "sampling")


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in ``sdegen/configs``."""
    folder = resources.files("sdegen") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _source(name_or_path: str | os.PathLike):
    """The YAML text of a preset name or a file path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        return path.read_text()
    resource = resources.files("sdegen") / "configs" / f"{text}.yaml"
    if not resource.is_file():
        raise ConfigError(f"unknown config {text!r}: not a file, nor a preset ({', '.join(preset_names())})")
    return resource.read_text()


def _om_error(e: Exception, where: str) -> ConfigError:
    key = getattr(e, "full_key", None)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(f"{where}: {'key ' + repr(key) + ': ' if key else ''}{first}")


def load_config(name_or_path: str | os.PathLike | None = None, overrides: Sequence[str] | Dict[str, Any] = ()
                ) -> Config:
    """A validated :class:`Config`: defaults, then a preset or YAML file, then overrides.

    ``overrides``: ``["optim.lr=1e-3", ...]`` or a nested dict. Raises :class:`ConfigError` naming the key
    for an unknown key, a wrong type or a bad value; FileNotFoundError for a missing file."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.structured(Config)
    if name_or_path is not None:
        where = f"config {name_or_path}"
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(_source(name_or_path)))
        except OmegaConfBaseException as e:
            raise _om_error(e, where) from None
    if overrides:
        if isinstance(overrides, dict):
            patch = OmegaConf.create(overrides)
        else:
            bad = [o for o in overrides if "=" not in o or o.startswith("=")]
            if bad:
                raise ConfigError(f"overrides are key=value, got {bad[0]!r}")
            patch = OmegaConf.from_dotlist(list(overrides))
        try:
            cfg = OmegaConf.merge(cfg, patch)
        except OmegaConfBaseException as e:
            raise _om_error(e, "override") from None
    return validate(OmegaConf.to_object(cfg))


def from_dict(d: Dict[str, Any]) -> Config:
    """A :class:`Config` from a plain nested dict (as stored in checkpoints), validated."""
    return load_config(None, d)


def to_dict(cfg: Config) -> Dict[str, Any]:
    """The config as a plain nested dict of Python values."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _positive(cfg: Config, names: Sequence[str]) -> None:
    for name in names:
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


def validate(cfg: Config) -> Config:
    """Check names and ranges (the network options are checked when the network is built)."""
    from ..losses import LOSSES
    from ..nets import PRESETS
    from ..sampling import check_sampler
    from ..sde import SDES
    from ..toy import TOY_SETS
    from ..data import DATASETS

    def one_of(name: str, value, accepted) -> None:
        if value not in accepted:
            raise ConfigError(f"{name}: unknown value {value!r}; accepted: {', '.join(map(str, accepted))}")

    one_of("data.name", cfg.data.name, list(TOY_SETS) + list(DATASETS))
    one_of("model.preset", cfg.model.preset, list(PRESETS))
    one_of("sde.name", cfg.sde.name, list(SDES))
    one_of("training.loss", cfg.training.loss, list(LOSSES))
    one_of("training.precision", cfg.training.precision, PRECISIONS)
    if cfg.training.loss == "smld" and cfg.sde.name != "ve" or cfg.training.loss == "ddpm" and cfg.sde.name != "vp":
        raise ConfigError(f"training.loss={cfg.training.loss} needs sde.name="
                          f"{'ve' if cfg.training.loss == 'smld' else 'vp'}, got {cfg.sde.name}")
    _positive(cfg, ["data.image_size", "sde.N", "optim.lr", "optim.ema_rate", "training.eps",
                    "training.batch_size", "training.time_limit", "training.log_every", "training.ckpt_every",
                    "training.keep", "sampling.snr", "sampling.steps", "sampling.eps", "sampling.n"])
    for name, value in (("optim.warmup", cfg.optim.warmup), ("optim.lr_decay", cfg.optim.lr_decay),
                        ("training.steps", cfg.training.steps),
                        ("training.sample_every", cfg.training.sample_every),
                        ("sampling.n_corrector_steps", cfg.sampling.n_corrector_steps)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    try:
        sde = cfg.sde.build()
    except ValueError as e:
        raise ConfigError(f"sde: {e}") from None
    name, options = cfg.sampling.sampler()
    try:  # the sampler's own checks: each rule lives once, in the library
        check_sampler(sde, name, **options)
    except ValueError as e:  # name the config keys of the options the message speaks of
        keys = [k for k in options if re.search(rf"\b{k}\b", str(e))]
        raise ConfigError(f"{', '.join(f'sampling.{k}' for k in keys) or 'sampling'}: {e}") from None
    if not 0 <= cfg.training.label_dropout < 1:
        raise ConfigError(f"training.label_dropout must be in [0, 1), got {cfg.training.label_dropout}")
    _positive(cfg, ["training.edm_p_std", "training.edm_sigma_data"])
    if cfg.training.loss == "edm" and cfg.training.likelihood_weighting:
        raise ConfigError("training.loss=edm has its own weighting; training.likelihood_weighting is for loss dsm")
    if not cfg.optim.ema_rate < 1:
        raise ConfigError(f"optim.ema_rate must be in (0, 1), got {cfg.optim.ema_rate}")
    return cfg


def loss_options(t: TrainingConfig) -> Dict[str, Any]:
    """Keyword arguments of the loss ``t.loss`` beyond those every loss takes: ``sigma_data`` (the edm
    parametrization) and, for the edm loss, its noise-level distribution."""
    edm = {"p_mean": t.edm_p_mean, "p_std": t.edm_p_std} if t.loss == "edm" else {}
    return {"sigma_data": t.edm_sigma_data, **edm}


def resume_conflicts(saved: Dict[str, Any], now: Config) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config and ``now``, other than
    :data:`RESUMABLE_CHANGES`."""
    out = []

    def walk(a, b, prefix):
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if name in RESUMABLE_CHANGES or name.split(".")[0] in RESUMABLE_CHANGES:
                continue
            va, vb = a.get(key), b.get(key)
            if isinstance(va, dict) and isinstance(vb, dict) and key != "options":
                walk(va, vb, name + ".")
            elif va != vb:
                out.append(f"{name} ({va!r} in the checkpoint, now {vb!r})")

    try:   # a key added after the checkpoint was written takes its default (the behaviour it was trained with)
        saved = to_dict(load_config(None, saved))
    except ConfigError:
        pass
    walk(saved, to_dict(now), "")
    return out
