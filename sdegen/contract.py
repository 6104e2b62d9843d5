"""What every sampler of :data:`sdegen.SAMPLERS` shares: argument checks, the start point, and the
per-step reports (``callback``) and constraints (``step_hook``).

The contract (see :func:`sdegen.sampling.generate`):

- ``x_T``: the start point ``[B, ...]`` at ``t = T``; by default drawn from the SDE's prior with ``generator``.
- ``callback(d)`` after every step, ``d`` one dict layout for all samplers: ``"i"`` (step index), ``"t"``
  (time after the step: a float, or a tensor ``[B]`` where samples have their own times), ``"x"`` (state
  after the step, in the SDE's coordinates), ``"denoised"`` (the Tweedie estimate of ``x_0`` at the latest
  score evaluation, ``(x + s(t)^2 score) / a(t)``, Song et al. 2021 App. C / EDM eq. 3) and ``"sigma"``
  (EDM's noise level ``s(t) / a(t)`` of ``"t"``, where the sampler works in it; else None).
- ``step_hook(x, t) -> x`` after every step (predictor, corrector, solver step, the final denoising step),
  with ``t`` a tensor ``[B]``: the tensor it returns replaces ``x``. This is the seam for inpainting and
  other constraints. The returned samples have passed through the hook.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch

from . import noise
from .score import ScoreFn
from .sde import SDE, bcast

Callback = Callable[[dict], None]
StepHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


CONTRACT_ARGS = ("generator", "x_T", "device", "callback", "step_hook")


def sampler_options(fn: Callable) -> dict:
    """A sampler's own options and their defaults, read from its signature (the one place they are
    written), the contract's arguments excluded. ``None`` means "required, or chosen at run time"."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in CONTRACT_ARGS}


def check_options(name: str, fn: Callable, options: dict) -> None:
    """Raise a ValueError naming the options sampler ``name`` does not take, and those it does."""
    accepted = sampler_options(fn)
    unknown = sorted(set(options) - set(accepted) - set(CONTRACT_ARGS))
    if unknown:
        raise ValueError(f"sampler {name!r} does not take {unknown}; it takes {sorted(accepted)}")


def check_common(sde: SDE, shape: Sequence[int], eps: float, generator: noise.Generator) -> None:
    """The checks every sampler makes: an sdegen SDE, a ``[batch, ...]`` shape, ``0 < eps < T``, one
    generator per sample when a list is given."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdegen SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}")
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be [batch, ...] with positive sizes, got {tuple(shape)}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    if noise.check_generator(generator) is not None and not isinstance(generator, torch.Generator) \
            and len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} per-sample generators for a batch of {shape[0]}")


def start_point(sde: SDE, shape: Sequence[int], generator: noise.Generator, x_T: Optional[torch.Tensor],
                device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x_T`` checked against ``shape`` (a copy on ``device``), or a draw from the prior."""
    if x_T is None:
        return sde.prior_sampling(shape, generator, device=device, dtype=dtype)
    if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape) != tuple(shape):
        got = tuple(x_T.shape) if isinstance(x_T, torch.Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must be a tensor of shape {tuple(shape)}, got {got}")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T holds non-finite values")
    return x_T.to(device=device if device is not None else x_T.device, dtype=dtype).clone()


def check_finite(x: torch.Tensor, step: int, t: float, what: str) -> None:
    """Raise a FloatingPointError naming the step if ``x`` holds a NaN or inf."""
    # a NaN or inf anywhere makes the sum non-finite: one reduction, the exact test only if the sum overflowed
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise FloatingPointError(f"samples became non-finite in the {what} at step {step} (t={t:.6g}); "
                                 "check the score function, or use more steps / a smaller snr")


class Observed:
    """``score_fn`` with a shape check on its first call, a check that its values are finite, and a memory
    of its latest evaluation (for the ``denoised`` entry of the callback)."""

    def __init__(self, score_fn: ScoreFn, check_values: bool = False):
        self.score_fn, self.check_values = score_fn, check_values
        self.first, self.last = True, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.score_fn(x, t)
        if self.first:
            if not isinstance(s, torch.Tensor) or s.shape != x.shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"score_fn returned {got} for x of shape {tuple(x.shape)}; "
                                 "it must return a tensor shaped like x")
            self.first = False
        if self.check_values and not torch.isfinite(s.sum()) and not torch.isfinite(s).all():
            raise FloatingPointError(f"score_fn returned non-finite values at t={t.flatten()[0].item():.6g}")
        self.last = (x, t, s)
        return s


class Steps:
    """Reports steps to ``callback`` and applies ``step_hook``; both may be None (then nothing is done)."""

    def __init__(self, sde: SDE, callback: Optional[Callback], step_hook: Optional[StepHook],
                 score: Optional[Observed] = None):
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if step_hook is not None and not callable(step_hook):
            raise TypeError(f"step_hook must be callable, got {type(step_hook).__name__}")
        self.sde, self.callback, self.step_hook, self.score = sde, callback, step_hook, score

    def hook(self, x: torch.Tensor, t) -> torch.Tensor:
        """``step_hook(x, t [B])`` checked to keep the shape; ``x`` unchanged without a hook."""
        if self.step_hook is None:
            return x
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).contiguous()
        y = self.step_hook(x, t)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"step_hook returned {got} for x of shape {tuple(x.shape)}; it must return x's shape")
        return y

    def denoised(self) -> Optional[torch.Tensor]:
        """Tweedie's ``x_0`` estimate ``(x + s^2 score) / a`` at the latest score evaluation."""
        if self.score is None or self.score.last is None:
            return None
        x, t, s = self.score.last
        a, std = self.sde.marginal_coeffs(t.to(x))
        return (x + bcast(std * std, x) * s) / bcast(a, x)

    def report(self, i: int, t, x: torch.Tensor, denoised: Optional[torch.Tensor] = None,
               sigma: Optional[float] = None) -> None:
        if self.callback is None:
            return
        self.callback({"i": i, "t": t, "x": x, "denoised": self.denoised() if denoised is None else denoised,
                       "sigma": sigma})
