"""The sampler contract (:data:`SAMPLERS`, :func:`generate`) and the samplers of Song et al. 2021:
predictors, correctors, the PC loop, and the probability-flow ODE.

Every sampler is a function over ``(sde, score_fn, shape, ...)`` that honours the contract of
:mod:`sdegen.contract` (start point ``x_T``, ``callback``, ``step_hook``). A predictor step maps ``x`` at
time ``t`` one step of ``dt = T/N`` down and returns ``(x, mean)``, ``mean`` being the noise-free part; a
corrector step runs Langevin MCMC at fixed ``t``. Noise comes from ``generator`` (see :mod:`sdegen.noise`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from . import noise
from .contract import (Callback, Observed, StepHook, Steps, check_common, check_finite, check_options,
                       sampler_options, start_point)
from .langevin import langevin_step
from .score import ScoreFn
from .sde import SDE, bcast
from .solvers import SOLVERS

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
    near zero gets a huge step). See :func:`sample` for the default."""
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
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(sorted(registry))} or none "
                         "(None in Python)")
    return registry[name]


def _device(device, generator, x_T):
    if device is not None:
        return device
    return x_T.device if x_T is not None else noise.generator_device(generator, "cpu")


@torch.no_grad()
def sample(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *,
           predictor: Optional[str] = "reverse_diffusion", corrector: Optional[str] = "langevin",
           snr: float = 0.16, n_corrector_steps: int = 1, steps: Optional[int] = None, eps: float = 1e-3,
           denoise: bool = True, order: str = "predictor_first", snr_norm: str = "batch",
           generator: noise.Generator = None, x_T: Optional[torch.Tensor] = None, device=None,
           progress: bool = False, callback: Optional[Callback] = None, step_hook: Optional[StepHook] = None
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
        snr_norm: how the Langevin corrector takes its norms (:func:`langevin_corrector`). The default
            ``"batch"`` (batch means, as the official code) is the one that is right in every dimension:
            per-sample norms (``"sample"``) give a huge step to a low-dimensional sample whose score is
            near zero. ``"sample"`` with per-sample generators makes an image sample independent of its
            batch, which is what large sampling jobs want; the image presets choose it in their config.
        denoise: return the noise-free mean of the last predictor step at ``t = eps`` (Tweedie denoising).
        generator, x_T, callback, step_hook: the sampler contract (:mod:`sdegen.contract`); the corrector
            steps are steps too (``i`` of the level they belong to).
        progress: show a progress bar over the steps.

    Returns: samples ``[batch, ...]`` on ``device`` (default: ``x_T``'s, else the generator's, else CPU).
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
    if not snr > 0 or not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
        raise ValueError(f"snr must be > 0 and n_corrector_steps an integer >= 0, got {snr}, {n_corrector_steps}")
    check_common(sde, shape, eps, generator)
    sde = sde.with_steps(steps)
    if predict is ancestral and not sde.supports_ancestral:
        raise ValueError(f"predictor 'ancestral' is not defined for {type(sde).__name__}; "
                         "use 'reverse_diffusion' or 'euler_maruyama'")
    device = _device(device, generator, x_T)
    score_fn = Observed(score_fn)
    report = Steps(sde, callback, step_hook, score_fn)

    x = start_point(sde, shape, generator, x_T, device)
    times = torch.linspace(sde.T, eps, steps, dtype=torch.float64).tolist()
    batch = x.shape[0]
    if predict not in (None, euler_maruyama) or correct is not None:
        # every sampler but Euler-Maruyama steps on the discrete chain: check it exists before any work
        sde.discretize(x[:1], torch.full((1,), sde.T, device=device))

    def corrector_at(x, t_val, i, last):
        """The corrector's steps at ``t_val``, each one through the hook; the last returns its mean if
        ``last`` (the sampler's final step) and ``denoise``."""
        t = torch.full((batch,), t_val, device=device)
        for k in range(n_corrector_steps):
            x, mean = correct(sde, score_fn, x, t, snr, 1, generator, snr_norm)
            check_finite(x, i, t_val, "corrector")
            x = report.hook(mean if last and denoise and k + 1 == n_corrector_steps else x, t)
        return x

    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"sampling ({predictor}/{corrector})", leave=False)
    for i in iterator:
        t_val, last = times[i], i + 1 == steps
        t_after = t_val
        if correct is not None and (order == "corrector_first" or predict is None):
            x = corrector_at(x, t_val, i, last and predict is None)
        if predict is not None:
            t = torch.full((batch,), t_val, device=device)
            x, mean = predict(sde, score_fn, x, t, noise.randn_like(x, generator))
            check_finite(x, i, t_val, "predictor")
            t_after = times[i + 1] if not last else max(t_val - sde.T / steps, 0.0)
            x = report.hook(mean if last and denoise else x, t_after)
            if correct is not None and order == "predictor_first" and not last:
                x = corrector_at(x, t_after, i, False)
        report.report(i, t_after, x)
    return x


ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def ode_options(method: str, span: torch.Tensor, options: Optional[dict]) -> Optional[dict]:
    """torchdiffeq options that make adaptive solvers step exactly onto the end time: their stages then
    never evaluate the score outside ``[eps, T]`` (below 0 the VP marginal std is undefined)."""
    if method in ADAPTIVE_METHODS:
        return {"step_t": span[-1:], **(options or {})}
    return options


class _Flow:
    """The probability-flow drift as torchdiffeq's ``func``, reporting every accepted step: torchdiffeq
    calls ``callback_step`` at the start of each attempt, so a new start time is an accepted step's end."""

    def __init__(self, flow, report: Steps, t_start: float):
        self.flow, self.report, self.t_last, self.i = flow, report, t_start, 0

    def __call__(self, t, x):
        return self.flow.sde(x, t.expand(x.shape[0]).to(x))[0]

    def callback_step(self, t0, y0, dt):
        if float(t0) != self.t_last:
            self.end_step(float(t0), y0)

    def end_step(self, t: float, x: torch.Tensor) -> None:
        self.report.report(self.i, t, x)
        self.t_last, self.i = t, self.i + 1


@torch.no_grad()
def sample_ode(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, rtol: float = 1e-5,
               atol: float = 1e-5, method: str = "dopri5", eps: float = 1e-3, denoise: bool = False,
               generator: noise.Generator = None, x_T: Optional[torch.Tensor] = None, device=None,
               options: Optional[dict] = None, callback: Optional[Callback] = None,
               step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """Sample by integrating the probability-flow ODE ``dx = [f - 1/2 g^2 s] dt`` (Song et al. 2021,
    eq. 13) from ``T`` to ``eps`` with torchdiffeq's solver ``method`` (adaptive: ``rtol``, ``atol``).

    ``denoise=True`` ends with one noise-free Reverse Diffusion step at ``eps``. ``callback`` is called
    after every accepted step (adaptive methods) and after the denoising step. An adaptive solver cannot
    take a ``step_hook`` (changing the state between steps breaks its error control): giving one is an
    error. Returns ``[batch, ...]``."""
    from torchdiffeq import odeint

    if step_hook is not None:
        raise ValueError("the probability-flow ODE sampler cannot take a step_hook (an adaptive solver's "
                         "state must not change between steps); use a fixed-step sampler such as 'pc', "
                         "'heun' or 'dpm_solver_pp_2m'")
    check_common(sde, shape, eps, generator)
    device = _device(device, generator, x_T)
    score_fn = Observed(score_fn, check_values=True)
    report = Steps(sde, callback, None, score_fn)
    flow = _Flow(sde.reverse(score_fn, probability_flow=True), report, sde.T)
    x = start_point(sde, shape, generator, x_T, device)

    span = torch.tensor([sde.T, eps], device=device, dtype=torch.float64)
    func = flow if callback is not None and method in ADAPTIVE_METHODS else flow.__call__
    x = odeint(func, x, span, rtol=rtol, atol=atol, method=method, options=ode_options(method, span, options))[-1]
    if not torch.isfinite(x).all():
        raise FloatingPointError("probability-flow ODE produced non-finite samples; "
                                 "check the score function or lower rtol/atol")
    flow.end_step(eps, x)
    if denoise:
        _, x = reverse_diffusion(sde, score_fn, x, torch.full((x.shape[0],), eps, device=device),
                                 torch.zeros_like(x))
        flow.end_step(0.0, x)
    return x


# --- the contract: every sampler by name ----------------------------------------------------------------

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"pc": sample, "ode": sample_ode, **SOLVERS}


def _sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_defaults(name: str) -> dict:
    """The options of sampler ``name`` with their defaults (read from its signature, the one place they
    are written; the contract's arguments excluded). ``None`` means "required, or chosen at run time"."""
    return sampler_options(_sampler(name))


def check_sampler_options(name: str, options: dict) -> None:
    """Raise a ValueError for an unknown sampler, or naming the options it does not take and those it does."""
    check_options(name, _sampler(name), options)


class _Checked(Exception):
    """Raised by the stand-in score of :func:`check_sampler` at the sampler's first evaluation."""


def check_sampler(sde: SDE, sampler: str = "pc", shape: Sequence[int] = (1, 1), **options) -> None:
    """Check ``sampler`` and its ``options`` for ``sde`` without sampling: the sampler runs its own checks
    and stops at its first score evaluation. Raises the ValueError the sampler would raise."""
    def stop(x, t):
        raise _Checked

    try:
        generate(sde, stop, shape, sampler=sampler, **options)
    except _Checked:
        pass


def generate(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, sampler: str = "pc",
             generator: noise.Generator = None, x_T: Optional[torch.Tensor] = None, device=None,
             callback: Optional[Callback] = None, step_hook: Optional[StepHook] = None,
             **options) -> torch.Tensor:
    """Draw samples ``[batch, ...]`` of ``shape`` with any sampler of :data:`SAMPLERS`.

    Args:
        sde: the forward SDE (VE, VP, sub-VP).
        score_fn: ``(x [B, ...], t [B]) -> score [B, ...]`` (an exact score, a network, a guided score...).
        sampler: ``"pc"`` (predictor-corrector; ``predictor=``, ``corrector=``), ``"ode"`` (probability
            flow) or a fast solver (``"heun"``, ``"ddim"``, ``"dpm_solver"``, ``"dpm_solver_multistep"``,
            ``"dpm_solver_pp_2m"``, ``"adaptive_sde"``).
        generator: a ``torch.Generator``, or one per sample (:mod:`sdegen.noise`).
        x_T: the start point at ``t = T`` (default: a draw from the prior).
        callback, step_hook: see :mod:`sdegen.contract`.
        options: the sampler's own options; :func:`sampler_defaults` lists them with their defaults.
    """
    check_sampler_options(sampler, options)
    return _sampler(sampler)(sde, score_fn, shape, generator=generator, x_T=x_T, device=device,
                             callback=callback, step_hook=step_hook, **options)
