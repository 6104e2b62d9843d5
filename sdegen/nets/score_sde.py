"""Loading the pretrained checkpoints of the official score_sde_pytorch code (Song et al. 2021).

A checkpoint ``checkpoint_N.pth`` is a dict: ``model`` (the ``state_dict`` of an ``nn.DataParallel``, keys
prefixed ``module.``), ``ema`` (``shadow_params``: the EMA weights of the trainable parameters, in the order
of ``named_parameters()``), ``optimizer`` and ``step``. Sampling uses the EMA weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..checkpoint import safe_load
from .build import build_network

_PREFIX = "module."


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, what="checkpoint")
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path} is not an official score_sde checkpoint: it holds a {type(ckpt).__name__}, "
                         "not a dict with keys 'model' and 'ema'")
    missing = [k for k in ("model", "ema") if k not in ckpt]
    if missing or not isinstance(ckpt["ema"], Mapping) or "shadow_params" not in ckpt["ema"]:
        raise ValueError(f"{path} is not an official score_sde checkpoint: expected keys 'model' and 'ema' "
                         f"(with 'shadow_params'), found {sorted(map(str, ckpt))}")
    return ckpt


def _check_state(net: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (network: {list(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_few(missing)}")
    if unexpected:
        problems.append(f"not in the network: {_few(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch: {_few(wrong)}")
    if problems:
        raise ValueError(f"{path} does not match the network config; " + "; ".join(problems))


def load_score_sde_checkpoint(path: str | Path, config: str | Mapping[str, Any], *, use_ema: bool = True,
                              device: str | torch.device = "cpu") -> nn.Module:
    """Build the network of ``config`` and load an official checkpoint into it, in eval mode.

    ``config``: a preset name, a dict of model options, or a whole official-style config dict (see
    :func:`sdegen.nets.model_options`). The state dict is loaded strictly (after removing the
    ``module.`` prefix); then, if ``use_ema``, the EMA ``shadow_params`` replace the trainable parameters.
    Raises FileNotFoundError for a missing file and ValueError for a file that is not such a checkpoint
    or does not match the network."""
    path = Path(path)
    ckpt = _read(path)
    state = {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in ckpt["model"].items()}
    net = build_network(config)
    _check_state(net, state, path)
    net.load_state_dict(state, strict=True)
    if use_ema:
        # The official EMA tracks the parameters with requires_grad (not the fixed Fourier features).
        params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        shadow = list(ckpt["ema"]["shadow_params"])
        if len(shadow) != len(params):
            raise ValueError(f"{path}: the EMA holds {len(shadow)} tensors but the network has "
                             f"{len(params)} trainable parameters")
        wrong = [f"{n} {list(s.shape)} (network: {list(p.shape)})"
                 for (n, p), s in zip(params, shadow) if s.shape != p.shape]
        if wrong:
            raise ValueError(f"{path}: EMA shapes do not match the network: {_few(wrong)}")
        with torch.no_grad():
            for (_, p), s in zip(params, shadow):
                p.copy_(s)
    return net.to(device).eval()
