"""Denoising score-matching losses: the continuous DSM loss of Song et al. 2021, the discrete SMLD (VE)
and DDPM (VP) losses, and EDM's loss (Karras et al. 2022) for every SDE.

All take ``(sde, model_or_score, x0)``. ``model_or_score`` is a network called as ``model(x, labels)``
(wrapped with :func:`sdegen.score.score_fn_from_model` and ``parametrization``) or any score function
``(x, t) -> score``. For the noise-predicting parametrization ``std * score + z = z - eps_theta``, so the
default weighting ``lambda = std^2`` is the plain noise-prediction loss. ``parametrization="edm"``: the
network is the raw ``F`` of EDM's preconditioned denoiser (``sigma_data``: the data std it assumes).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Union

import torch
from torch import nn

from . import noise
from .sde import SDE, VESDE, VPSDE, bcast
from .score import EDM_SIGMA_DATA, ScoreFn, denoiser_from_model, edm_loss_weight, score_fn_from_model


def _as_score_fn(sde: SDE, model: Union[nn.Module, ScoreFn], parametrization: str,
                 continuous: bool, sigma_data: float = EDM_SIGMA_DATA) -> ScoreFn:
    if isinstance(model, nn.Module):
        return score_fn_from_model(model, sde, parametrization, continuous, sigma_data=sigma_data)
    return model


def _reduce(per_dim: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    flat = per_dim.reshape(per_dim.shape[0], -1)
    return flat.mean(-1) if reduce_mean else flat.sum(-1)


def dsm_loss(sde: SDE, model: Union[nn.Module, ScoreFn], x0: torch.Tensor, *,
             parametrization: str = "eps", continuous: bool = True, likelihood_weighting: bool = False,
             reduce_mean: bool = False, eps: float = 1e-5, generator: noise.Generator = None,
             sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """Continuous DSM loss, a scalar (Song et al. 2021, eq. 7):

    ``E_t E_x0 E_xt [ lambda(t) || s(x_t, t) - grad log p_0t(x_t | x0) ||^2 ]``, ``t ~ U(eps, T)``, where
    ``grad log p_0t = -z / std(t)``. Default ``lambda(t) = std(t)^2``, proportional to
    ``1 / E||grad log p_0t||^2`` (the seed's choice); ``likelihood_weighting=True`` uses ``lambda = g(t)^2``
    (Song et al. 2021b, Thm. 1). ``reduce_mean`` averages over dimensions instead of summing.
    ``sigma_data``: for ``parametrization="edm"``."""
    score_fn = _as_score_fn(sde, model, parametrization, continuous, sigma_data)
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


def classifier_loss(sde: SDE, model: nn.Module, x0: torch.Tensor, *, y: torch.Tensor, continuous: bool = True,
                    eps: float = 1e-5, generator: noise.Generator = None, **_unused) -> torch.Tensor:
    """Cross-entropy of a noise-conditional classifier ``model(x, labels) -> logits [B, C]`` on noised data,
    a scalar: ``E_t E_x0 E_xt [-log p_t(y | x_t)]``, ``x_t ~ p_0t(. | x0)``, ``t ~ U(eps, T)`` (the
    time-dependent classifier of Song et al. 2021, App. I.1). ``y``: the class labels of ``x0`` ``[B]``;
    the network sees the labels of :func:`sdegen.score.network_labels` (``continuous``)."""
    from .score import network_labels

    batch = x0.shape[0]
    if y is None or torch.as_tensor(y).shape != (batch,):
        raise ValueError(f"the classifier loss needs class labels y of shape [{batch}]")
    t = noise.rand((batch,), generator, device=x0.device, dtype=x0.dtype) * (sde.T - eps) + eps
    z = noise.randn_like(x0, generator)
    mean, std = sde.marginal_prob(x0, t)
    logits = model(mean + bcast(std, x0) * z, network_labels(sde, t, continuous))
    return torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(y, device=logits.device).long())


EDM_P_MEAN, EDM_P_STD = -1.2, 1.2   # log-normal noise levels of EDM's training (Karras et al. 2022, Table 1)


@functools.lru_cache(maxsize=32)
def _log_sigma_table(sde: SDE, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log sigma(t), t)`` on a float64 grid of ``[eps, T]`` (geometric near ``eps``, uniform elsewhere),
    increasing, to invert ``sigma(t) = s(t) / a(t)`` by linear interpolation."""
    t = torch.cat([torch.logspace(math.log10(eps), math.log10(sde.T), 2048, dtype=torch.float64),
                   torch.linspace(eps, sde.T, 2048, dtype=torch.float64)]).unique()   # sorted
    a, s = sde.marginal_coeffs(t)
    return (s / a).log(), t


def _time_of_log_sigma(sde: SDE, eps: float, log_sigma: torch.Tensor) -> torch.Tensor:
    """``t`` in ``[eps, T]`` whose ``log sigma(t)``, linearly interpolated on :func:`_log_sigma_table`, is
    ``log_sigma`` (float64, on the device of ``log_sigma``)."""
    table, times = (v.to(log_sigma.device) for v in _log_sigma_table(sde, float(eps)))
    i = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
    w = ((log_sigma - table[i - 1]) / (table[i] - table[i - 1])).clamp(0, 1)
    return times[i - 1] + w * (times[i] - times[i - 1])


def edm_loss(sde: SDE, model: Union[nn.Module, ScoreFn], x0: torch.Tensor, *, parametrization: str = "edm",
             continuous: bool = True, sigma_data: float = EDM_SIGMA_DATA, p_mean: float = EDM_P_MEAN,
             p_std: float = EDM_P_STD, reduce_mean: bool = False, eps: float = 1e-5,
             likelihood_weighting: bool = False, generator: noise.Generator = None) -> torch.Tensor:
    """EDM's loss for any SDE, a scalar (Karras et al. 2022, eq. 2 and 8 with Table 1):

    ``E_sigma E_x0 E_n [ lambda(sigma) || D(x0 + sigma n; sigma) - x0 ||^2 ]``,
    ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, ``log sigma ~ N(p_mean, p_std^2)``.

    The SDE enters through ``sigma(t) = s(t) / a(t)``: ``log sigma`` is drawn from the normal restricted to
    ``[log sigma(eps), log sigma(T)]`` (inverse CDF of the truncated normal: no level lies outside the SDE's
    range and none piles up at its ends), ``t = sigma^-1(sigma)`` (interpolated; the loss then uses the
    exact ``sigma(t)`` of that ``t``), ``x_t = a(t) x0 + s(t) n`` and ``D = x_hat + sigma^2 a(t) score``
    (the coordinates of :mod:`sdegen.solvers`). With ``parametrization="edm"`` ``D`` is the preconditioned
    denoiser of :func:`sdegen.score.denoiser_from_model` and ``lambda ||D - x0||^2 = ||F - F_target||^2``
    (EDM eq. 8); other parametrizations and plain score functions get the same weighting and noise
    levels. For every ``sigma`` the minimiser is the exact denoiser ``E[x0 | x_t]``, i.e. the exact score.
    Draws one uniform per row, then normals shaped like ``x0``, from ``generator``. ``reduce_mean``
    averages over dimensions instead of summing (EDM sums)."""
    if likelihood_weighting:
        raise ValueError("the EDM loss has its own weighting lambda(sigma); likelihood_weighting is for the dsm loss")
    if not continuous:
        raise ValueError("the EDM loss trains on the continuous SDE (continuous=True)")
    if not p_std > 0:
        raise ValueError(f"p_std must be > 0, got {p_std}")
    ends = torch.tensor([float(eps), float(sde.T)], dtype=torch.float64)
    a_end, s_end = sde.marginal_coeffs(ends)
    log_ends = (s_end / a_end).log()
    cdf_lo, cdf_hi = (0.5 * torch.erfc(-(log_ends - p_mean) / (p_std * math.sqrt(2)))).tolist()
    if not cdf_hi - cdf_lo > 1e-9:
        raise ValueError(f"log sigma ~ N({p_mean}, {p_std}^2) puts no mass on the SDE's noise levels "
                         f"[{log_ends[0].exp().item():.4g}, {log_ends[1].exp().item():.4g}] (sigma(eps), "
                         "sigma(T)); change p_mean / p_std")
    batch = x0.shape[0]
    u = noise.rand((batch,), generator, device=x0.device, dtype=torch.float64)
    log_sigma = p_mean + p_std * torch.special.ndtri(cdf_lo + u * (cdf_hi - cdf_lo))  # truncated normal
    t = _time_of_log_sigma(sde, eps, log_sigma).to(x0.dtype)
    z = noise.randn_like(x0, generator)
    a, s = sde.marginal_coeffs(t)
    xt = bcast(a, x0) * x0 + bcast(s, x0) * z
    if isinstance(model, nn.Module) and parametrization == "edm":
        denoised = denoiser_from_model(model, sde, sigma_data)(xt, t)
    else:
        score = _as_score_fn(sde, model, parametrization, continuous, sigma_data)(xt, t)
        denoised = (xt + bcast(s ** 2, x0) * score) / bcast(a, x0)   # Tweedie: E[x0 | x_t]
    return (edm_loss_weight(s / a, sigma_data) * _reduce((denoised - x0) ** 2, reduce_mean)).mean()


LOSSES = {"dsm": dsm_loss, "smld": smld_loss, "ddpm": ddpm_loss, "edm": edm_loss, "classifier": classifier_loss}
# Score losses on the continuous SDE (the discrete ones train step-index labels).
CONTINUOUS_LOSSES = ("dsm", "edm")
# Losses that train a classifier of the data's class labels, not a score network.
CLASSIFIER_LOSSES = ("classifier",)


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """A loss function by name (``dsm``, ``smld``, ``ddpm``, ``edm``, ``classifier``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
