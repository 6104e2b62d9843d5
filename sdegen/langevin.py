"""The one Langevin engine: unadjusted Langevin steps and MALA over a gradient of a log-density.

Convention (Song et al. 2021, Algorithms 4-5): one step with step size ``eps`` is
``x' = x + eps * grad log p(x) + sqrt(2 eps) z``. Che et al. 2020 (Algorithm 1) write the same update as
``z' = z - (e/2) grad E(z) + sqrt(e) n`` with ``E = -log p``, i.e. ``eps = e / 2``.
``step_size`` is a float or a per-sample tensor ``[batch]``.

Used by the PC corrector (:mod:`sdegen.sampling`) and by DDLS (:mod:`sdegen.gan.ddls`). It knows only
tensors and a log-density's gradient, nothing of SDEs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import noise

LogProbFn = Callable[[torch.Tensor], torch.Tensor]


def per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample value ``[batch]`` viewed as ``[batch, 1, ..., 1]`` to broadcast against ``x``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def _as_step(step_size, x: torch.Tensor) -> torch.Tensor:
    step = torch.as_tensor(step_size, device=x.device, dtype=x.dtype)
    if step.dim() == 0:
        step = step.expand(x.shape[0])
    if not (step > 0).all():
        raise ValueError(f"step_size must be > 0, got {step_size}")
    return step


def langevin_step(x: torch.Tensor, grad: torch.Tensor, step_size, z: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One unadjusted Langevin step; returns ``(x', mean)`` with ``mean = x + eps * grad``.

    Song et al. 2021, Algorithm 4 line 6 / Che et al. 2020, Algorithm 1."""
    step = per_sample(_as_step(step_size, x), x)
    mean = x + step * grad
    return mean + torch.sqrt(2.0 * step) * z, mean


def value_and_grad(log_prob: LogProbFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(x)`` ``[batch]`` and its gradient, from a fresh leaf (no gradient accumulates across calls)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logp = log_prob(x)
        if logp.shape != (x.shape[0],):
            raise ValueError(f"log_prob must return one value per sample, shape [{x.shape[0]}], "
                             f"got {tuple(logp.shape)}")
        (grad,) = torch.autograd.grad(logp.sum(), x)
    return logp.detach(), grad.detach()


def _log_q(x_to: torch.Tensor, x_from_mean: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    # log N(x_to; mean, 2 eps I) up to a constant that cancels in the MH ratio
    d = (x_to - x_from_mean).reshape(x_to.shape[0], -1).pow(2).sum(-1)
    return -d / (4.0 * step)


@dataclass
class LangevinChain:
    """Result of :func:`langevin`: final states ``x`` ``[batch, ...]``, their ``log_prob`` ``[batch]``,
    and the MALA acceptance rate over all proposals (``None`` without MALA)."""

    x: torch.Tensor
    log_prob: torch.Tensor
    acceptance_rate: Optional[float] = None
    accepted: Optional[torch.Tensor] = None  # per-sample acceptance counts, with MALA


def langevin(x0: torch.Tensor, log_prob: LogProbFn, *, step_size, n_steps: int, mala: bool = False,
             generator: noise.Generator = None,
             callback: Optional[Callable[[dict], None]] = None, progress: bool = False) -> LangevinChain:
    """Run ``n_steps`` Langevin steps on ``log_prob`` from ``x0``; with ``mala=True`` each proposal is
    accepted with the Metropolis-Hastings probability (MALA, Roberts & Tweedie 1996), making the chain
    exact for any step size.

    Args:
        x0: initial states ``[batch, ...]``.
        log_prob: ``x -> log p(x)`` per sample ``[batch]`` (unnormalised is fine), differentiable.
        step_size: ``eps`` of the update ``x + eps grad + sqrt(2 eps) z``; float or ``[batch]``.
        generator: see :mod:`sdegen.noise`; per-sample generators make chains batch-independent.
        callback: called after each step with ``{"i", "x", "log_prob", "accepted"}``.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    x = x0.detach()
    step = _as_step(step_size, x)
    logp, grad = value_and_grad(log_prob, x)
    n_acc = torch.zeros(x.shape[0], device=x.device)
    steps = range(n_steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="langevin" + (" (MALA)" if mala else ""), leave=False)
    for i in steps:
        z = noise.randn_like(x, generator)
        prop, mean = langevin_step(x, grad, step, z)
        prop_logp, prop_grad = value_and_grad(log_prob, prop)
        if mala:
            u = noise.rand((x.shape[0],), generator, device=x.device, dtype=x.dtype)
            mean_back = prop + per_sample(step, x) * prop_grad
            log_alpha = prop_logp - logp + _log_q(x, mean_back, step) - _log_q(prop, mean, step)
            accept = torch.log(u) < log_alpha
            n_acc += accept
            a = per_sample(accept.to(x.dtype), x)
            x = a * prop + (1 - a) * x
            logp = torch.where(accept, prop_logp, logp)
            grad = a * prop_grad + (1 - a) * grad
        else:
            accept = None
            x, logp, grad = prop, prop_logp, prop_grad
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"Langevin chain became non-finite at step {i}; "
                                     f"lower the step size (now {step_size})")
        if callback is not None:
            callback({"i": i, "x": x, "log_prob": logp, "accepted": accept})
    rate = (n_acc.sum() / max(n_acc.numel() * n_steps, 1)).item() if mala else None
    return LangevinChain(x=x, log_prob=logp, acceptance_rate=rate, accepted=n_acc if mala else None)
