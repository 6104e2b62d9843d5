"""Score networks by name: the registry :data:`NETWORKS`, the presets :data:`PRESETS`, and
:func:`build_network` from a preset or a dict of model options (see :mod:`sdegen.nets`)."""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from .classifier import EncoderClassifier, MLPClassifier
from .mlp import MLPScoreNet
from .ncsnpp import NCSNpp

NETWORKS: dict[str, type[nn.Module]] = {
    "ncsnpp": NCSNpp,  # also DDPM++ (positional embedding, no FIR, no progressive input)
    "mlp": MLPScoreNet,
    "classifier": EncoderClassifier,
    "mlp_classifier": MLPClassifier,
}
# Networks whose output is class logits (trained with the classifier loss), not a score.
CLASSIFIERS = ("classifier", "mlp_classifier")

CONDITIONINGS: dict[str, str] = {
    "sigma": "labels = sigma(t), the noise level of the VE SDE (official VE models)",
    "t999": "labels = 999 t, t in [0, 1] (official VP and sub-VP models)",
}

# Keys of a preset or an official `config.model` that say how to use a network, not how to build it.
USAGE_KEYS = ("name", "conditioning", "parametrization")
# Official `config.model` keys that configure training or the SDE; ignored here.
IGNORED_OFFICIAL_KEYS = ("ema_rate", "beta_min", "beta_max")
# Official `config.model` keys with the only value these networks implement.
FIXED_OFFICIAL_KEYS = {"conv_size": 3, "normalization": "GroupNorm", "attention_type": "ddpm"}

_SDE_USAGE = {"vesde": ("sigma", "score"), "vpsde": ("t999", "eps"), "subvpsde": ("t999", "eps")}

# configs/ve/cifar10_ncsnpp_continuous.py of score_sde: VE SDE, data in [0, 1].
_CIFAR10_NCSNPP: dict[str, Any] = {
    "name": "ncsnpp", "image_size": 32, "num_channels": 3, "centered": False,
    "conditioning": "sigma", "parametrization": "score",
    "nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 4, "attn_resolutions": (16,), "dropout": 0.1,
    "resblock_type": "biggan", "fir": True, "fir_kernel": (1, 3, 3, 1), "skip_rescale": True,
    "progressive": "none", "progressive_input": "residual", "progressive_combine": "sum",
    "embedding_type": "fourier", "fourier_scale": 16.0, "scale_by_sigma": True, "conditional": True,
    "init_scale": 0.0, "resamp_with_conv": True, "nonlinearity": "swish",
    "sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 1000,
}
# configs/vp/cifar10_ddpmpp_continuous.py: VP SDE, data in [-1, 1].
_CIFAR10_DDPMPP: dict[str, Any] = {
    **_CIFAR10_NCSNPP, "centered": True, "conditioning": "t999", "parametrization": "eps",
    "embedding_type": "positional", "fir": False, "progressive_input": "none", "scale_by_sigma": False,
}
# Small DDPM++ networks for CPU training, data in [-1, 1].
_SMALL: dict[str, Any] = {**_CIFAR10_DDPMPP, "nf": 32, "num_res_blocks": 1, "dropout": 0.0}

# A small time-dependent classifier (the DDPM++ encoder half + pooling + a linear head), 10 classes.
_CLASSIFIER: dict[str, Any] = {
    "name": "classifier", "conditioning": "t999", "parametrization": "logits", "num_classes": 10,
    "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (), "dropout": 0.0,
    "embedding_type": "positional", "centered": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "mlp2d": {"name": "mlp", "dim": 2, "hidden": 256, "layers": 3, "embed_dim": 128,
              "embedding": "positional", "conditioning": "t999", "parametrization": "eps"},
    # 8x8 grey (scikit-learn digits): ~0.3 M parameters, ~0.1 s per Adam step on batch 64, one CPU core.
    "tiny8": {**_SMALL, "image_size": 8, "num_channels": 1, "ch_mult": (1, 1), "attn_resolutions": (4,)},
    # 28x28 grey (MNIST) and 32x32 colour: ~1.3 M parameters, ~2 s per step on batch 64, one CPU core.
    "small28": {**_SMALL, "image_size": 28, "num_channels": 1, "ch_mult": (1, 2, 2), "attn_resolutions": (7,)},
    "small32": {**_SMALL, "image_size": 32, "num_channels": 3, "ch_mult": (1, 2, 2), "attn_resolutions": (8,)},
    # The 16x16 test networks of the interoperability vectors (nf=16, one block per resolution).
    "ncsnpp_ve_continuous_small": {**_CIFAR10_NCSNPP, "image_size": 16, "nf": 16, "ch_mult": (1, 2),
                                   "num_res_blocks": 1, "attn_resolutions": (8,), "dropout": 0.0},
    "ddpmpp_vp_continuous_small": {**_CIFAR10_DDPMPP, "image_size": 16, "nf": 16, "ch_mult": (1, 2),
                                   "num_res_blocks": 1, "attn_resolutions": (8,), "dropout": 0.0},
    # Full-size CIFAR-10 networks of the published checkpoints.
    "cifar10_ncsnpp_continuous": _CIFAR10_NCSNPP,
    "cifar10_ddpmpp_continuous": _CIFAR10_DDPMPP,
    "cifar10_ncsnpp_deep_continuous": {**_CIFAR10_NCSNPP, "num_res_blocks": 8},
    # The deep DDPM++ of the VP and sub-VP checkpoints (same network).
    "cifar10_ddpmpp_deep_continuous": {**_CIFAR10_DDPMPP, "num_res_blocks": 8},
    # Noise-conditional classifiers (labels 999 t) for classifier guidance, data in [-1, 1].
    "classifier8": {**_CLASSIFIER, "image_size": 8, "num_channels": 1},
    "classifier28": {**_CLASSIFIER, "image_size": 28, "num_channels": 1, "ch_mult": (1, 2, 2)},
    "classifier32": {**_CLASSIFIER, "image_size": 32, "num_channels": 3, "ch_mult": (1, 2, 2),
                     "attn_resolutions": (8,)},
    "mlp2d_classifier": {"name": "mlp_classifier", "dim": 2, "num_classes": 3, "hidden": 128, "layers": 3,
                         "embed_dim": 64, "embedding": "positional", "conditioning": "t999",
                         "parametrization": "logits"},
}


def model_options(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """The flat options dict of a network: a copy of a preset, or a normalised copy of ``config``.

    ``config``: a preset name; a flat dict of options (with ``name``); or a whole official-style config
    (``{"config_model": {...}, "image_size": ..., "num_channels": ..., "data_centered": ..., "sde": ...}``),
    whose ``data_centered`` becomes ``centered`` and whose ``sde`` sets ``conditioning`` and
    ``parametrization``. Without them, ``conditioning`` and ``parametrization`` are inferred from the
    embedding (Fourier: ``sigma``, positional: ``t999``) and ``scale_by_sigma`` (``score`` or ``eps``)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown network preset {config!r}; choose one of {sorted(PRESETS)}")
        return dict(PRESETS[config])
    if not isinstance(config, Mapping):
        raise ValueError(f"a network config is a preset name or a dict of model options, got {type(config)}")
    opts = dict(config)
    if "config_model" in opts:
        top, opts = opts, dict(opts["config_model"])
        for key in ("image_size", "num_channels"):
            if key in top:
                opts[key] = top[key]
        if "data_centered" in top:
            opts["centered"] = bool(top["data_centered"])
        if "sde" in top:
            sde = str(top["sde"]).lower()
            if sde not in _SDE_USAGE:
                raise ValueError(f"unknown sde {top['sde']!r}; expected one of {sorted(_SDE_USAGE)}")
            opts.setdefault("conditioning", _SDE_USAGE[sde][0])
            opts.setdefault("parametrization", _SDE_USAGE[sde][1])
    if "name" not in opts:
        raise ValueError(f"a network config needs a 'name', one of {sorted(NETWORKS)}")
    if opts["name"] == "ncsnpp":
        opts.setdefault("conditioning", "sigma" if opts.get("embedding_type") == "fourier" else "t999")
        opts.setdefault("parametrization", "score" if opts.get("scale_by_sigma") else "eps")
    else:
        opts.setdefault("conditioning", "t999")
        opts.setdefault("parametrization", "eps")
    if opts["conditioning"] not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {opts['conditioning']!r}; expected one of {sorted(CONDITIONINGS)}")
    return opts


def build_network(config: str | Mapping[str, Any]) -> nn.Module:
    """Build a network (random weights, train mode) from a preset name or a dict of model options.

    See :func:`model_options` for the accepted dicts. Unknown options are an error, so a typo cannot pass
    silently. Build on the meta device (``with torch.device("meta"): ...``) to inspect a big network
    without allocating it."""
    opts = model_options(config)
    name = opts.get("name")
    if name not in NETWORKS:
        hint = " (the official 'ddpm' model is not implemented; DDPM++ is 'ncsnpp')" if name == "ddpm" else ""
        raise ValueError(f"unknown network name {name!r}{hint}; choose one of {sorted(NETWORKS)}")
    cls = NETWORKS[name]
    for key in USAGE_KEYS + IGNORED_OFFICIAL_KEYS:
        opts.pop(key, None)
    for key, value in FIXED_OFFICIAL_KEYS.items():
        got = opts.pop(key, value)
        if got != value:
            raise ValueError(f"only {key}={value!r} is implemented, got {got!r}")
    params = inspect.signature(cls).parameters
    unknown = sorted(set(opts) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for network {name!r}; accepted: {sorted(params)}")
    missing = [p.name for p in params.values() if p.default is inspect.Parameter.empty and p.name not in opts]
    if missing:
        raise ValueError(f"network {name!r} needs option(s) {missing}")
    return cls(**opts)
