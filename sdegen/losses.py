"""Denoising score-matching losses: the continuous DSM loss of Song et al. 2021 and the discrete
SMLD (VE) and DDPM (VP) losses.

All take ``(sde, model_or_score, x0)``. ``model_or_score`` is a network called as ``model(x, labels)``
(wrapped with :func:`sdegen.score.score_fn_from_model` and ``parametrization``) or any score function
``(x, t) -> score``. For the noise-predicting parametrization ``std * score + z = z - eps_theta``, so the
default weighting ``lambda = std^2`` is the plain noise-prediction loss.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import nn

from . import noise
from .sde import SDE, VESDE, VPSDE, bcast
from .score import ScoreFn, score_fn_from_model


def _as_score_fn(sde: SDE, model: Union[nn.Module, ScoreFn], parametrization: str,
                 continuous: bool) -> ScoreFn:
    if isinstance(model, nn.Module):
        return score_fn_from_model(model, sde, parametrization, continuous)
    return model


def _reduce(per_dim: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    flat = per_dim.reshape(per_dim.shape[0], -1)
    return flat.mean(-1) if reduce_mean else flat.sum(-1)


def dsm_loss(sde: SDE, model: Union[nn.Module, ScoreFn], x0: torch.Tensor, *,
             parametrization: str = "eps", continuous: bool = True, likelihood_weighting: bool = False,
             reduce_mean: bool = False, eps: float = 1e-5, generator: noise.Generator = None
             ) -> torch.Tensor:
    """Continuous DSM loss, a scalar (Song et al. 2021, eq. 7):

    ``E_t E_x0 E_xt [ lambda(t) || s(x_t, t) - grad log p_0t(x_t | x0) ||^2 ]``, ``t ~ U(eps, T)``, where
    ``grad log p_0t = -z / std(t)``. Default ``lambda(t) = std(t)^2``, proportional to
    ``1 / E||grad log p_0t||^2`` (the seed's choice); ``likelihood_weighting=True`` uses ``lambda = g(t)^2``
    (Song et al. 2021b, Thm. 1). ``reduce_mean`` averages over dimensions instead of summing."""
    score_fn = _as_score_fn(sde, model, parametrization, continuous)
    batch = x0.shape[0]
    t = noise.rand((batch,), generator, device=x0.device, dtype=x0.dtype) * (sde.T - eps) + eps
    z = noise.randn_like(x0, generator)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + bcast(std, x0) * z
    score = score_fn(xt, t)
    if likelihood_weighting:
        g2 = sde.sde(torch.zeros_like(x0), t)[1] ** 2
        losses = _reduce((score + z / bcast(std, z)) ** 2, reduce_mean) * g2
    else:
        losses = _reduce((score * bcast(std, z) + z) ** 2, reduce_mean)
    return losses.mean()


def _discrete_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, coeffs: Callable, reduce_mean: bool,
                   generator: noise.Generator) -> torch.Tensor:
    # index i ~ U{0..N-1}; x_i = a_i x0 + s_i z; loss s_i^2 ||s(x_i, t_i) + z / s_i||^2
    batch = x0.shape[0]
    i = (noise.rand((batch,), generator, device=x0.device) * sde.N).long().clamp_max(sde.N - 1)
    t = (i.to(x0.dtype) / max(sde.N - 1, 1)) * sde.T
    a, s = coeffs(t)
    z = noise.randn_like(x0, generator)
    xt = bcast(a, x0) * x0 + bcast(s, x0) * z
    score = score_fn(xt, t)
    return _reduce((score * bcast(s, z) + z) ** 2, reduce_mean).mean()


def smld_loss(sde: VESDE, model: Union[nn.Module, ScoreFn], x0: torch.Tensor, *,
              parametrization: str = "score", reduce_mean: bool = False,
              generator: noise.Generator = None, **_unused) -> torch.Tensor:
    """Discrete SMLD loss over the ``N`` noise levels ``sigma_i`` of a VE SDE, weighted by ``sigma_i^2``
    (Song & Ermon 2019, eq. 5-6; Song et al. 2021, eq. 1)."""
    if not isinstance(sde, VESDE):
        raise ValueError(f"the SMLD loss needs a VESDE, got {type(sde).__name__}")
    score_fn = _as_score_fn(sde, model, parametrization, continuous=False)
    return _discrete_loss(sde, score_fn, x0, lambda t: (torch.ones_like(t), sde.discrete_sigma(t)[0]),
                          reduce_mean, generator)


def ddpm_loss(sde: VPSDE, model: Union[nn.Module, ScoreFn], x0: torch.Tensor, *,
              parametrization: str = "eps", reduce_mean: bool = True,
              generator: noise.Generator = None, **_unused) -> torch.Tensor:
    """Discrete DDPM loss ``E ||eps - eps_theta(sqrt(abar_i) x0 + sqrt(1 - abar_i) eps, i)||^2``
    (Ho et al. 2020, eq. 14; Song et al. 2021, eq. 3)."""
    if not isinstance(sde, VPSDE):
        raise ValueError(f"the DDPM loss needs a VPSDE, got {type(sde).__name__}")
    score_fn = _as_score_fn(sde, model, parametrization, continuous=False)
    return _discrete_loss(sde, score_fn, x0, sde.discrete_marginal_coeffs, reduce_mean, generator)


LOSSES = {"dsm": dsm_loss, "smld": smld_loss, "ddpm": ddpm_loss}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """A loss function by name (``dsm``, ``smld``, ``ddpm``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
