"""Exact likelihoods through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).

``log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt`` with ``f~ = f - 1/2 g^2 score``
(instantaneous change of variables, Chen et al. 2018), integrated forward from ``x(eps) = x``.
The divergence is exact (one backward pass per dimension) or the Hutchinson-Skilling estimate
``E[v^T (df~/dx) v]`` with probes ``v`` drawn once per sample and held fixed along the path.
"""
from __future__ import annotations

import math

import torch

from . import noise
from .contract import Observed
from .sde import SDE
from .sampling import ode_options
from .score import ScoreFn

PROBES = ("rademacher", "gaussian")


def _probes(x: torch.Tensor, n: int, kind: str, generator) -> torch.Tensor:
    v = torch.stack([noise.randn_like(x, generator) for _ in range(n)])  # [n, B, ...]
    return v.sign() if kind == "rademacher" else v


def log_likelihood(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, *, exact_divergence: bool = False,
                   n_probes: int = 1, probe: str = "rademacher", eps: float = 1e-5, rtol: float = 1e-5,
                   atol: float = 1e-5, method: str = "dopri5", generator: noise.Generator = None
                   ) -> torch.Tensor:
    """``log p(x)`` in nats per sample, ``[batch]``, of the model defined by ``score_fn`` at ``t = eps``.

    Args:
        x: data ``[batch, ...]`` (continuous; dequantise images first).
        exact_divergence: exact trace (``D`` backward passes per evaluation; for small ``D``), else
            Hutchinson-Skilling with ``n_probes`` probes of type ``probe`` per sample.
    """
    from torchdiffeq import odeint

    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {PROBES}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    # a non-finite score is reported before the ODE solver shrinks its step to nothing ("underflow in dt")
    flow = sde.reverse(Observed(score_fn, check_values=True), probability_flow=True)
    batch, dims = x.shape[0], x[0].numel()
    v = None if exact_divergence else _probes(x, n_probes, probe, generator)

    def dynamics(t, state):
        y, _ = state
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            drift = flow.sde(y, t.expand(batch).to(y))[0]
            if exact_divergence:
                flat = drift.reshape(batch, -1)
                div = sum(torch.autograd.grad(flat[:, i].sum(), y, retain_graph=i + 1 < dims)[0]
                          .reshape(batch, -1)[:, i] for i in range(dims))
            else:
                div = 0.0
                for k in range(n_probes):
                    (vjp,) = torch.autograd.grad(drift, y, v[k], retain_graph=k + 1 < n_probes)
                    div = div + (vjp * v[k]).reshape(batch, -1).sum(-1)
                div = div / n_probes
        if not torch.isfinite(div).all():
            raise FloatingPointError(f"the divergence of the probability-flow drift is not finite at "
                                     f"t={float(t):.6g}; check the score function")
        return drift.detach(), div.detach()

    span = torch.tensor([eps, sde.T], device=x.device, dtype=torch.float64)
    state0 = (x.detach(), torch.zeros(batch, device=x.device, dtype=x.dtype))
    xs, delta = odeint(dynamics, state0, span, rtol=rtol, atol=atol, method=method,
                       options=ode_options(method, span, None))
    z, delta = xs[-1], delta[-1]
    return sde.prior_logp(z) + delta


def bits_per_dim(logp: torch.Tensor, dims: int, offset: float = 0.0) -> torch.Tensor:
    """Negative log-likelihood in bits per dimension: ``-logp / (dims ln 2) + offset``.

    For 8-bit images dequantised as ``(k + u)/256`` and scaled to ``[0, 1]``, a density on ``[0, 1]^D``
    relates to the discrete data's on ``{0..255}^D`` by a factor ``256^D``: ``offset = 8`` bits. Data
    centred to ``[-1, 1]`` (width 2) gives ``log2(256/2) = 7`` (the official code's ``7 - inverse_scaler(-1)``).
    """
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    return -logp / (dims * math.log(2)) + offset
