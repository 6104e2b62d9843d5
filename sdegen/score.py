"""Score functions: any callable ``score_fn(x, t) -> tensor shaped like x``, ``t`` of shape ``[batch]``.

This module turns networks into score functions and wraps score functions (counting evaluations).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .sde import SDE, VESDE, VPSDE, bcast

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PARAMETRIZATIONS = ("eps", "score")


def network_labels(sde: SDE, t: torch.Tensor, continuous: bool = True) -> torch.Tensor:
    """The conditioning input the official networks expect at time ``t``.

    VE: ``sigma(t)`` (continuous) or the SMLD level index ``round((T - t)(N - 1))``; VP / sub-VP: ``999 t``
    (continuous) or the DDPM step index ``t (N - 1)`` (score_sde ``get_score_fn``)."""
    if isinstance(sde, VESDE):
        if continuous:
            return sde.marginal_coeffs(t)[1]
        return torch.round((sde.T - t) * (sde.N - 1)).long()
    return t * 999 if continuous else (t * (sde.N - 1)).round().long()


def score_fn_from_model(model: nn.Module, sde: SDE, parametrization: str = "eps",
                        continuous: bool = True) -> ScoreFn:
    """Wrap ``model(x, labels)`` as a score function.

    ``parametrization="eps"``: the network predicts the noise and ``score = -output / std(t)``
    (Song et al. 2021, App. C: ``s = -eps / sigma_t``; discrete VP uses ``sqrt(1 - abar_i)``); ``"score"``: it predicts the score itself (NCSN++
    with ``scale_by_sigma``)."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {PARAMETRIZATIONS}")

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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
