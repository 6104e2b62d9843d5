"""Samplers of Song et al. 2021: predictors, correctors, the PC loop, and the probability-flow ODE.

Every sampler is a function over ``(sde, score_fn, ...)``. A predictor step maps ``x`` at time ``t`` one
step of ``dt = T/N`` down and returns ``(x, mean)``, ``mean`` being the noise-free part; a corrector
step runs Langevin MCMC at fixed ``t``. Noise comes from ``generator`` (see :mod:`sdegen.noise`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from . import noise
from .langevin import langevin_step
from .sde import SDE, bcast
from .score import ScoreFn

# --- predictors: (sde, score_fn, x, t, z) -> (x, mean) -------------------------------------------


def euler_maruyama(sde: SDE, score_fn: ScoreFn, x, t, z):
    """Euler-Maruyama step of the reverse SDE, eq. (6) of Song et al. 2021, with ``dt = T/N``."""
    dt = sde.T / sde.N
    drift, g = sde.reverse(score_fn).sde(x, t)
    mean = x - drift * dt
    return mean + bcast(g, x) * math.sqrt(dt) * z, mean


def reverse_diffusion(sde: SDE, score_fn: ScoreFn, x, t, z):
    """Reverse Diffusion: ``x_i = x_{i+1} - f_{i+1} + G G^T s + G z`` (Song et al. 2021, eq. 46)."""
    f, G = sde.reverse(score_fn).discretize(x, t)
    mean = x - f
    return mean + bcast(G, x) * z, mean


def ancestral(sde: SDE, score_fn: ScoreFn, x, t, z):
    """Ancestral sampling: the SDE's own discrete reverse chain (Song et al. 2021, eq. 47; seed slide)."""
    mean, std = sde.ancestral_step(x, t, score_fn(x, t))
    return mean + bcast(std, x) * z, mean


PREDICTORS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
}

# --- correctors: (sde, score_fn, x, t, snr, n_steps, generator) -> (x, mean) ---------------------


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=-1)


def langevin_corrector(sde: SDE, score_fn: ScoreFn, x, t, snr: float, n_steps: int, generator,
                       snr_norm: str = "batch"):
    """Langevin corrector with step ``eps = 2 alpha (snr ||z|| / ||s||)^2`` (Song et al. 2021, Algorithms 4-5).

    ``snr_norm="batch"`` takes both norms as batch means, as the official code does: stable in any
    dimension. ``"sample"`` takes them per sample, so a sample does not depend on the batch it is drawn
    in; this needs high-dimensional data, where the norms concentrate (in 2-D a sample whose score is
    near zero gets a huge step)."""
    alpha = sde.langevin_alpha(t.to(x))
    mean = x
    for _ in range(n_steps):
        grad = score_fn(x, t)
        z = noise.randn_like(x, generator)
        z_norm, s_norm = _norm(z), _norm(grad)
        if snr_norm == "batch":
            z_norm, s_norm = z_norm.mean().expand_as(z_norm), s_norm.mean().expand_as(s_norm)
        step = 2 * alpha * (snr * z_norm / s_norm.clamp_min(1e-30)) ** 2
        x, mean = langevin_step(x, grad, step, z)
    return x, mean


def annealed_langevin(sde: SDE, score_fn: ScoreFn, x, t, snr: float, n_steps: int, generator,
                      snr_norm: str = "batch"):
    """Annealed Langevin dynamics: step ``eps = 2 alpha (snr sigma_t)^2`` (Song & Ermon 2019, Algorithm 1,
    as the official score_sde corrector). Per sample by construction; ``snr_norm`` is unused."""
    alpha = sde.langevin_alpha(t.to(x))
    std = sde.marginal_coeffs(t.to(x))[1]
    step = 2 * alpha * (snr * std) ** 2
    mean = x
    for _ in range(n_steps):
        x, mean = langevin_step(x, score_fn(x, t), step, noise.randn_like(x, generator))
    return x, mean


CORRECTORS: dict[str, Callable] = {
    "langevin": langevin_corrector,
    "annealed_langevin": annealed_langevin,
}

ORDERS = ("predictor_first", "corrector_first")
SNR_NORMS = ("batch", "sample")


def _lookup(name, registry, what):
    if name is None or name == "none":
        return None
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry) + [None]}")
    return registry[name]


def _checked(score_fn: ScoreFn) -> ScoreFn:
    """Check, on the first call, that the score has the shape of ``x``."""
    first = [True]

    def wrapped(x, t):
        s = score_fn(x, t)
        if first[0]:
            if not isinstance(s, torch.Tensor) or s.shape != x.shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"score_fn returned {got} for x of shape {tuple(x.shape)}; "
                                 "it must return a tensor shaped like x")
            first[0] = False
        return s

    return wrapped


def _check_common(shape, eps, sde, generator):
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdegen SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}")
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be [batch, ...] with positive sizes, got {tuple(shape)}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} per-sample generators for a batch of {shape[0]}")


def _check_finite(x: torch.Tensor, step: int, t: float, what: str) -> None:
    # a NaN or inf anywhere makes the sum non-finite: one reduction, the exact test only if the sum overflowed
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise FloatingPointError(f"samples became non-finite in the {what} at step {step} (t={t:.6g}); "
                                 "check the score function, or use more steps / a smaller snr")


@torch.no_grad()
def sample(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *,
           predictor: Optional[str] = "reverse_diffusion", corrector: Optional[str] = "langevin",
           snr: float = 0.16, n_corrector_steps: int = 1, steps: Optional[int] = None, eps: float = 1e-3,
           denoise: bool = True, order: str = "predictor_first", snr_norm: str = "batch",
           generator: noise.Generator = None,
           device=None, progress: bool = False, callback: Optional[Callable[[dict], None]] = None
           ) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3), ``steps`` steps from ``T`` to ``eps``.

    Args:
        sde: the forward SDE; its discretisation is re-made with ``steps`` steps (default ``sde.N``).
        score_fn: ``(x [B, ...], t [B]) -> score [B, ...]``.
        shape: ``[batch, ...]`` of the samples.
        predictor: one of :data:`PREDICTORS` or ``None`` (corrector only).
        corrector: one of :data:`CORRECTORS` or ``None`` (predictor only).
        snr: signal-to-noise ratio ``r`` of the corrector; ``n_corrector_steps``: ``M`` per noise level.
        order: ``"predictor_first"`` (Algorithms 2-3: predict to the next level, then correct there) or
            ``"corrector_first"`` (the official code: correct at the current level, then predict).
        snr_norm: ``"batch"`` or ``"sample"``: how the Langevin corrector takes its norms (see
            :func:`langevin_corrector`); ``"sample"`` with per-sample generators makes every sample
            independent of the batch.
        denoise: return the noise-free mean of the last predictor step at ``t = eps`` (Tweedie denoising).
        generator: a ``torch.Generator``, or one per sample for batch-independent samples.
        callback: called after each step with ``{"i", "t", "x", "mean"}``.

    Returns: samples ``[batch, ...]`` on ``device`` (default: the generator's, else CPU).
    """
    predict = _lookup(predictor, PREDICTORS, "predictor")
    correct = _lookup(corrector, CORRECTORS, "corrector")
    if predict is None and correct is None:
        raise ValueError("predictor and corrector cannot both be None")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    if snr_norm not in SNR_NORMS:
        raise ValueError(f"unknown snr_norm {snr_norm!r}; choose one of {SNR_NORMS}")
    steps = sde.N if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not snr > 0 or n_corrector_steps < 0:
        raise ValueError(f"snr must be > 0 and n_corrector_steps >= 0, got {snr}, {n_corrector_steps}")
    _check_common(shape, eps, sde, generator)
    sde = sde.with_steps(steps)
    if predict is ancestral and not sde.supports_ancestral:
        raise ValueError(f"predictor 'ancestral' is not defined for {type(sde).__name__}; "
                         "use 'reverse_diffusion' or 'euler_maruyama'")
    device = device if device is not None else noise.generator_device(generator, "cpu")
    score_fn = _checked(score_fn)

    x = sde.prior_sampling(shape, generator, device=device)
    times = torch.linspace(sde.T, eps, steps, dtype=torch.float64).tolist()
    batch = x.shape[0]

    def corrector_at(x, t_val):
        t = torch.full((batch,), t_val, device=device)
        return correct(sde, score_fn, x, t, snr, n_corrector_steps, generator, snr_norm)

    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"sampling ({predictor}/{corrector})", leave=False)
    mean = x
    for i in iterator:
        t_val = times[i]
        if correct is not None and (order == "corrector_first" or predict is None):
            x, mean = corrector_at(x, t_val)
            _check_finite(x, i, t_val, "corrector")
        if predict is not None:
            t = torch.full((batch,), t_val, device=device)
            x, mean = predict(sde, score_fn, x, t, noise.randn_like(x, generator))
            _check_finite(x, i, t_val, "predictor")
            if correct is not None and order == "predictor_first" and i + 1 < steps:
                x, _ = corrector_at(x, times[i + 1])
                _check_finite(x, i, times[i + 1], "corrector")
        if callback is not None:
            callback({"i": i, "t": t_val, "x": x, "mean": mean})
    return mean if denoise else x


ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _ode_options(method: str, span: torch.Tensor, options: Optional[dict]) -> Optional[dict]:
    """Make adaptive torchdiffeq solvers step exactly onto the end time: their stages then never
    evaluate the score outside ``[eps, T]`` (below 0 the VP marginal std is undefined)."""
    if method in ADAPTIVE_METHODS:
        return {"step_t": span[-1:], **(options or {})}
    return options


@torch.no_grad()
def sample_ode(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, rtol: float = 1e-5,
               atol: float = 1e-5, method: str = "dopri5", eps: float = 1e-3, denoise: bool = False,
               generator: noise.Generator = None, device=None, options: Optional[dict] = None
               ) -> torch.Tensor:
    """Sample by integrating the probability-flow ODE ``dx = [f - 1/2 g^2 s] dt`` (Song et al. 2021,
    eq. 13) from ``T`` to ``eps`` with torchdiffeq's adaptive solver, on the sample's device.

    ``denoise=True`` ends with one noise-free Reverse Diffusion step at ``eps``. Returns ``[batch, ...]``."""
    from torchdiffeq import odeint

    _check_common(shape, eps, sde, generator)
    device = device if device is not None else noise.generator_device(generator, "cpu")
    score_fn = _checked(score_fn)
    flow = sde.reverse(score_fn, probability_flow=True)
    x = sde.prior_sampling(shape, generator, device=device)

    def drift(t, x):
        return flow.sde(x, t.expand(x.shape[0]).to(x))[0]

    span = torch.tensor([sde.T, eps], device=device, dtype=torch.float64)
    x = odeint(drift, x, span, rtol=rtol, atol=atol, method=method,
               options=_ode_options(method, span, options))[-1]
    if not torch.isfinite(x).all():
        raise FloatingPointError("probability-flow ODE produced non-finite samples; "
                                 "check the score function or lower rtol/atol")
    if denoise:
        _, x = reverse_diffusion(sde, score_fn, x, torch.full((x.shape[0],), eps, device=device),
                                 torch.zeros_like(x))
    return x
