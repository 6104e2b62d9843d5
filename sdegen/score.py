"""Score functions: any callable ``score_fn(x, t) -> tensor shaped like x``, ``t`` of shape ``[batch]``.

This module turns networks into score functions and wraps score functions (counting evaluations).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .sde import SDE, VESDE, VPSDE, ScoreFn, bcast

PARAMETRIZATIONS = ("eps", "score", "edm")
EDM_SIGMA_DATA = 0.5   # std of the data for EDM's preconditioning (Karras et al. 2022: 0.5 for images in [-1, 1])


def network_labels(sde: SDE, t: torch.Tensor, continuous: bool = True) -> torch.Tensor:
    """The conditioning input the official networks expect at time ``t``.

    VE: ``sigma(t)`` (continuous) or the SMLD level index ``round((T - t)(N - 1))``; VP / sub-VP: ``999 t``
    (continuous) or the DDPM step index ``t (N - 1)`` (score_sde ``get_score_fn``)."""
    if isinstance(sde, VESDE):
        if continuous:
            return sde.marginal_coeffs(t)[1]
        return torch.round((sde.T - t) * (sde.N - 1)).long()
    return t * 999 if continuous else (t * (sde.N - 1)).round().long()


def edm_preconditioning(sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in)`` of EDM's denoiser ``D = c_skip x_hat + c_out F(c_in x_hat, c_noise)`` at
    noise level ``sigma`` (any shape; the same shape out); Karras et al. 2022, Table 1 ("Ours")."""
    var = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / var, sigma * sigma_data / var.sqrt(), 1 / var.sqrt()


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """EDM's loss weighting ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2``
    (Karras et al. 2022, Table 1 and eq. 8)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def _check_sigma_data(sigma_data: float) -> None:
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0 (the data's standard deviation), got {sigma_data}")


def denoiser_from_model(model: nn.Module, sde: SDE, sigma_data: float = EDM_SIGMA_DATA
                        ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """EDM's preconditioned denoiser of a network ``F = model(x_in, labels)`` as ``(x, t) -> D``.

    ``x``: a state of ``sde`` at times ``t`` (``[batch]``); ``D``: the estimate of ``x0`` (shaped like ``x``)
    ``D = c_skip x_hat + c_out F(c_in x_hat, c_noise)`` with ``x_hat = x / a(t)``, ``sigma = s(t) / a(t)``
    (the EDM coordinates of :mod:`sdegen.solvers`) and the coefficients of :func:`edm_preconditioning`.
    ``c_noise`` is the SDE's own network label (:func:`network_labels`): ``999 t`` for VP / sub-VP, as EDM's
    VP column ``(M - 1) sigma^-1(sigma)``, and ``sigma`` for VE, whose Fourier embedding takes
    ``log sigma`` (EDM's VE column: ``log(sigma / 2)``)."""
    _check_sigma_data(sigma_data)

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = sde.marginal_coeffs(t.to(x))
        x_hat = x / bcast(a, x)
        c_skip, c_out, c_in = edm_preconditioning(s / a, sigma_data)
        out = model(bcast(c_in, x) * x_hat, network_labels(sde, t, continuous=True))
        return bcast(c_skip, x) * x_hat + bcast(c_out, x) * out

    return denoiser


def score_fn_from_model(model: nn.Module, sde: SDE, parametrization: str = "eps",
                        continuous: bool = True, *, sigma_data: float = EDM_SIGMA_DATA) -> ScoreFn:
    """Wrap ``model(x, labels)`` as a score function.

    ``parametrization="eps"``: the network predicts the noise and ``score = -output / std(t)``
    (Song et al. 2021, App. C: ``s = -eps / sigma_t``; discrete VP uses ``sqrt(1 - abar_i)``); ``"score"``: it
    predicts the score itself (NCSN++ with ``scale_by_sigma``); ``"edm"``: the network is the raw ``F`` of
    EDM's preconditioned denoiser ``D`` (:func:`denoiser_from_model`, ``sigma_data`` its data std; needs
    ``continuous``) and the score is Tweedie's ``(a(t) D - x) / s(t)^2``, that is
    ``grad_{x_hat} log p = (D - x_hat) / sigma^2`` (Karras et al. 2022, eq. 3) divided by ``a(t)``."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {PARAMETRIZATIONS}")
    if parametrization == "edm":
        if not continuous:
            raise ValueError("parametrization='edm' needs continuous=True (labels of the continuous SDE)")
        _check_sigma_data(sigma_data)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if parametrization == "edm":
            # (a D - x) / s^2 with D = c_skip x_hat + c_out F, written without the cancellation of a D - x:
            # [sigma_data F / (sigma sqrt(sigma^2 + sigma_data^2)) - x_hat / (sigma^2 + sigma_data^2)] / a
            a, s = sde.marginal_coeffs(t.to(x))
            sigma = s / a
            var = sigma ** 2 + sigma_data ** 2
            x_hat = x / bcast(a, x)
            out = model(bcast(var.rsqrt(), x) * x_hat, network_labels(sde, t, continuous=True))
            return (bcast(sigma_data / (sigma * var.sqrt()), x) * out - x_hat / bcast(var, x)) / bcast(a, x)
        out = model(x, network_labels(sde, t, continuous))
        if parametrization == "score":
            return out
        if isinstance(sde, VPSDE) and not continuous:   # DDPM: the discrete chain's sqrt(1 - abar_i)
            std = sde.discrete_marginal_coeffs(t.to(x))[1]
        else:
            std = sde.marginal_coeffs(t.to(x))[1]
        return -out / bcast(std, out)

    return score_fn


class CountingScore:
    """A score function that counts its calls (``nfe``) and the samples it scored (``n_scored``)."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0
        self.n_scored = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        self.n_scored += x.shape[0]
        return self.score_fn(x, t)

    def reset(self) -> None:
        self.nfe = self.n_scored = 0


# --- guided scores: conditional generation with any sampler -------------------------------------------

NULL_LABEL = -1
"""The label that asks a conditional score function ``(x, t, y) -> score`` for its unconditional score
(the "null" label of classifier-free guidance, Ho & Salimans 2022)."""

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ConditionalScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _labels(y, x: torch.Tensor) -> torch.Tensor:
    """``y`` (an int, or a LongTensor ``[B]``) as a LongTensor ``[B]`` on ``x``'s device."""
    labels = torch.as_tensor(y, device=x.device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() > 1 \
            or labels.numel() not in (1, x.shape[0]):
        raise ValueError(f"y must be an int or a LongTensor [batch] (batch {x.shape[0]}), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    return labels.reshape(-1).expand(x.shape[0]).long()


def _check_scale(name: str, value) -> float:
    value = float(value)
    if not torch.isfinite(torch.tensor(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def guided_score(score_fn: ScoreFn, classifier: Classifier, y, *, scale: float = 1.0) -> ScoreFn:
    """Classifier guidance: the score of ``p_t(x | y)``, ``score(x, t) + scale * grad_x log p_t(y | x)``.

    Song et al. 2021, eq. 14 (``scale = 1``: the exact conditional score); Dhariwal & Nichol 2021, Sec. 4
    (``scale > 1`` sharpens towards ``y``).

    Args:
        score_fn: the unconditional score ``(x [B, ...], t [B]) -> [B, ...]``.
        classifier: the time-dependent classifier ``(x [B, ...], t [B]) -> logits [B, C]``, differentiable
            in ``x`` and evaluated per sample (no batch statistics); its gradient is taken by autograd,
            also inside samplers that run under ``torch.no_grad``.
        y: the class, an int or a LongTensor ``[B]`` (one per sample).
        scale: the guidance scale ``s``.
    """
    scale = _check_scale("scale", scale)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = _labels(y, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = classifier(xg, t)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier must return logits [batch, classes], got {tuple(logits.shape)}")
            if bool((labels < 0).any() or (labels >= logits.shape[1]).any()):
                raise ValueError(f"y must be in [0, {logits.shape[1]}) for a classifier of "
                                 f"{logits.shape[1]} classes")
            log_p = torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).sum()
            grad, = torch.autograd.grad(log_p, xg)   # per sample: rows are independent
        return score_fn(x, t) + scale * grad.to(x.dtype)

    return guided


def classifier_free_score(cond_score_fn: ConditionalScoreFn, y, *, guidance: float = 1.0) -> ScoreFn:
    """Classifier-free guidance: ``(1 + w) s(x, t, y) - w s(x, t, NULL_LABEL)`` (Ho & Salimans 2022,
    eq. 6, written for scores: ``s = -eps / sigma_t``).

    Args:
        cond_score_fn: a conditional score ``(x [B, ...], t [B], y LongTensor [B]) -> [B, ...]`` that
            gives the unconditional score for the label :data:`NULL_LABEL` (``-1``), as a network
            trained with label dropout does.
        y: the class, an int or a LongTensor ``[B]``.
        guidance: ``w``; ``0`` is the conditional score alone (one evaluation), ``w > 0`` evaluates the
            conditional and unconditional scores in one batch of ``2B``.
    """
    w = _check_scale("guidance", guidance)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = _labels(y, x)
        if w == 0:
            return cond_score_fn(x, t, labels)
        both = cond_score_fn(torch.cat([x, x]), torch.cat([t, t]),
                             torch.cat([labels, torch.full_like(labels, NULL_LABEL)]))
        cond, uncond = both.chunk(2)
        return (1 + w) * cond - w * uncond

    return guided
