"""A score model and what it takes to use it: network, SDE, parametrization, data range and shape.

Built from a training config (:func:`build`), or loaded from a run folder / training checkpoint
(:func:`load_run`, EMA weights by default) or from an official score_sde checkpoint
(:func:`load_official`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from .. import checkpoint
from ..nets import CLASSIFIERS, NETWORKS, PRESETS, build_network, model_options
from ..score import EDM_SIGMA_DATA, ScoreFn, network_labels, score_fn_from_model
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
    score_override: Optional[ScoreFn] = field(default=None, repr=False)  # see with_score_fn

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def sigma_data(self) -> float:
        """Data std of the ``edm`` parametrization (the run's ``training.edm_sigma_data``)."""
        return self.config.training.edm_sigma_data if self.config is not None else EDM_SIGMA_DATA

    @property
    def is_classifier(self) -> bool:
        """The network is a noise-conditional classifier ``net(x, labels) -> logits``, not a score network."""
        return isinstance(self.net, tuple(NETWORKS[name] for name in CLASSIFIERS))

    @property
    def num_classes(self) -> int:
        """Classes of a classifier or of a class-conditional score network; 0 for an unconditional one."""
        return int(getattr(self.net, "num_classes", 0))

    @property
    def is_conditional(self) -> bool:
        """A class-conditional score network ``net(x, labels, y)`` (classifier-free guidance)."""
        return self.num_classes > 0 and not self.is_classifier

    def score_fn(self) -> ScoreFn:
        """The score function ``(x, t) -> score`` (a conditional network: with the null label, i.e. the
        unconditional score; or the one given to :meth:`with_score_fn`)."""
        if self.score_override is not None:
            return self.score_override
        if self.is_classifier:
            raise ValueError("this model is a classifier (logits), not a score model")
        return score_fn_from_model(self.net, self.sde, self.parametrization, self.continuous,
                                   sigma_data=self.sigma_data)

    def cond_score_fn(self):
        """``(x [B, ...], t [B], y) -> score`` of a class-conditional network; ``y``: an int or int64 ``[B]``
        (:data:`~sdegen.nets.NULL_LABEL`: unconditional)."""
        if not self.is_conditional:
            raise ValueError("this model is not class-conditional (train it with model.options.num_classes)")

        def score(x: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
            y = torch.as_tensor(y, device=x.device)
            net = lambda x_, labels: self.net(x_, labels, y.expand(x_.shape[0]))  # noqa: E731
            return score_fn_from_model(net, self.sde, self.parametrization, self.continuous,
                                       sigma_data=self.sigma_data)(x, t)

        return score

    def classifier_fn(self):
        """``(x [B, ...], t [B]) -> logits [B, num_classes]`` of a noise-conditional classifier."""
        if not self.is_classifier:
            raise ValueError("this model is a score model, not a classifier")

        def logits(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(x, network_labels(self.sde, t, self.continuous))

        return logits

    def class_score_fn(self, y, *, guidance: float = 0.0, classifier: Optional["ScoreModel"] = None,
                       scale: float = 1.0) -> ScoreFn:
        """The score of class ``y`` (an int or int64 ``[B]``): a conditional network's with classifier-free
        guidance ``w = guidance`` (:func:`sdegen.score.classifier_free_score`), and/or classifier guidance
        by a classifier model of the same SDE with ``scale`` (:func:`sdegen.score.guided_score`; an
        unconditional score model needs one)."""
        from ..score import classifier_free_score, guided_score

        if classifier is not None and not classifier.is_classifier:
            raise ValueError("the guiding model is a score model, not a classifier")
        if not self.is_conditional and classifier is None:
            raise ValueError("this score model is unconditional: classes need a classifier (classifier guidance)")
        if not self.is_conditional and guidance:
            raise ValueError("classifier-free guidance needs a class-conditional score model")
        if classifier is not None:
            t = torch.linspace(1e-3, 1.0, 7, dtype=torch.float64)
            same = type(classifier.sde) is type(self.sde) and classifier.sde.T == self.sde.T and all(
                torch.allclose(a, b) for a, b in zip(self.sde.marginal_coeffs(t), classifier.sde.marginal_coeffs(t)))
            if not same:
                raise ValueError(f"the classifier was trained with another SDE ({type(classifier.sde).__name__}) "
                                 f"than the score model ({type(self.sde).__name__}), or other SDE parameters")
        score = classifier_free_score(self.cond_score_fn(), y, guidance=guidance) if self.is_conditional \
            else self.score_fn()
        return guided_score(score, classifier.classifier_fn(), y, scale=scale) if classifier is not None else score

    def with_score_fn(self, score_fn: ScoreFn) -> "ScoreModel":
        """A copy whose :meth:`score_fn` is ``score_fn`` (e.g. a guided score), for the sampling jobs."""
        return replace(self, score_override=score_fn)

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
    """The run's SDE (its ``sde`` config section)."""
    return cfg.sde.build()


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          tuple: "a list", list: "a list"}


def _check_option_types(cfg: Config) -> None:
    """Each ``model.options`` value must have the type of the preset's value for its key (ConfigError)."""
    defaults = model_options(PRESETS[cfg.model.preset])
    for key, value in cfg.model.options.items():
        kind = type(defaults.get(key))
        if kind not in _KINDS:
            continue
        if kind is bool or isinstance(value, bool):
            ok = kind is bool and isinstance(value, bool)
        elif kind in (tuple, list):
            ok = isinstance(value, Sequence) and not isinstance(value, str)
        else:
            ok = isinstance(value, (int, float) if kind is float else kind)
        if not ok:
            raise ConfigError(f"model.options.{key}={value!r} must be {_KINDS[kind]} (model.preset="
                              f"{cfg.model.preset} has {defaults[key]!r})")


def build(cfg: Config) -> ScoreModel:
    """A fresh model (random weights from the global RNG, train mode) of ``cfg``.

    Raises :class:`ConfigError` if the network options are wrong or do not fit the SDE."""
    _check_option_types(cfg)
    try:
        opts = network_options(cfg)
        net = build_network(opts)
        sde = build_sde(cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.preset={cfg.model.preset}, model.options: {e}") from None
    from ..losses import CLASSIFIER_LOSSES, CONTINUOUS_LOSSES

    classifier = cfg.training.loss in CLASSIFIER_LOSSES
    if classifier != (opts["name"] in CLASSIFIERS):
        raise ConfigError(f"training.loss={cfg.training.loss} " + (
            f"trains a classifier, but model.preset={cfg.model.preset} is a score network; use a classifier "
            f"network ({', '.join(n for n in PRESETS if PRESETS[n]['name'] in CLASSIFIERS)})" if classifier else
            f"trains a score network, but model.preset={cfg.model.preset} is a classifier; use "
            f"training.loss={CLASSIFIER_LOSSES[0]}"))
    if cfg.training.label_dropout > 0 and (classifier or not getattr(net, "num_classes", 0)):
        raise ConfigError("training.label_dropout needs a class-conditional score network "
                          "(model.options.num_classes > 0)")
    continuous = cfg.training.loss in (*CONTINUOUS_LOSSES, *CLASSIFIER_LOSSES)
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


def _is_state_dict(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _layout_problem(state: Any) -> str | None:
    """What is wrong with the layout of a training checkpoint (None if nothing)."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    if state.get("format") != FORMAT:
        return f"it is not an sdegen training checkpoint (keys {sorted(map(str, state))[:6]})"
    wanted = {"model": dict, "ema": dict, "optimizer": dict, "scaler": dict, "step": int, "rng": dict,
              "config": dict}
    wrong = [k for k, kind in wanted.items() if not isinstance(state.get(k), kind)]
    if wrong:
        return f"it lacks (or has the wrong type for) {', '.join(wrong)}"
    if not _is_state_dict(state["model"]) or not _is_state_dict(state["ema"].get("module")):
        return "its model or EMA weights are not a state dict (name -> tensor)"
    if not isinstance(state["ema"].get("num_updates"), int):
        return "its EMA has no update count"
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        return "its optimizer state is not a torch optimizer state dict"
    rng = state["rng"].get("torch")
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        return "its RNG state is not a torch generator state"
    if state["step"] < 0:
        return f"its step is {state['step']}"
    for part in ("model", "ema", "optimizer"):
        if not checkpoint.all_finite(state[part]):
            return f"its {'EMA' if part == 'ema' else part} state holds NaN or infinite values"
    return None


def check_training_state(state: Any, path: Path) -> None:
    """Refuse (:class:`sdegen.checkpoint.CheckpointError`) a training checkpoint of the wrong layout or with
    non-finite model, EMA or optimizer state."""
    problem = _layout_problem(state)
    if problem is not None:
        raise checkpoint.CheckpointError(f"checkpoint {path} is refused: {problem}")


def state_dict_problem(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> str | None:
    """How a state dict differs from a network's (missing / unexpected keys, shapes); None if it fits."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(got) & set(expected) if got[k].shape != expected[k].shape)
    parts = [f"{what} {names[:3]}" for what, names in (("missing", missing), ("unexpected", unexpected),
                                                        ("wrong shape", shapes)) if names]
    return "; ".join(parts) or None


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[dict, Path]:
    """A training checkpoint (a file, or the newest good one of a run folder) and its path.

    Files of the wrong layout, with a bad checksum or non-finite weights are refused (in a run folder:
    reported and skipped). Raises FileNotFoundError if there is none, ValueError if none can be used."""
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a ckpt_<step>.pt file or a run folder "
                                f"holding {CHECKPOINTS}/ckpt_<step>.pt)")
    try:
        if found.is_file():
            state, file = checkpoint.load(found, map_location, check_training_state), found
        else:
            state, file = checkpoint.load_latest(found, map_location, check_training_state)
    except checkpoint.CheckpointError as e:
        hint = (" (for an official score_sde checkpoint, use --from-score-sde with --config)"
                if "not an sdegen training checkpoint" in str(e) else "")
        raise ValueError(f"{e}{hint}") from None
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
    problem = state_dict_problem(model.net.state_dict(), weights)
    if problem is not None:
        raise ValueError(f"{file}: its weights do not fit the network of its config: {problem}")
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
