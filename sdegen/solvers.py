"""Fast samplers: EDM's Heun with stochastic churn, DDIM, DPM-Solver (single- and multistep),
DPM-Solver++, and an adaptive-step reverse-SDE solver with error control.

The fixed-step samplers work in the sigma parametrisation of Karras et al. 2022 (EDM). With the
perturbation kernel ``N(a(t) x0, s(t)^2 I)``, the scaled state ``x_hat = x / a(t)`` is ``x0`` plus
Gaussian noise of std ``sigma(t) = s(t) / a(t)``, for VE (``a = 1``), VP and sub-VP alike. Since
``p_hat(x_hat; sigma) = a^D p_t(a x_hat)``, the score converts as
``grad_{x_hat} log p_hat = a(t) score(x, t)``, which gives

- the denoiser (Tweedie): ``D(x_hat; sigma) = x_hat + sigma^2 a score = x_hat + (s^2 / a) score``;
- the noise prediction: ``eps = (x_hat - D) / sigma = -s(t) score(x, t)``;
- the probability-flow ODE: ``d x_hat / d sigma = (x_hat - D) / sigma = eps`` (EDM eq. 4, s(t) = 1).

In these coordinates every SDE has ``alpha = 1`` and log-SNR ``lambda = -log sigma``, so the update
rules of DPM-Solver (written for VP) apply to VE and sub-VP unchanged.

Time grids run from ``T`` down to ``eps``; with ``denoise=True`` (default) one last step goes from
``sigma(eps)`` to ``sigma = 0`` (the Tweedie denoiser ``D``, EDM's final Euler step), costing one
evaluation. Exact evaluation counts (``denoise`` counts as ``d`` = 0 or 1):

============================  ==================  =====================================================
solver                        ``steps=K``         ``nfe=n`` (exact budget)
============================  ==================  =====================================================
``heun``                      ``2K + d``          ``ceil((n - d) / 2)`` steps; if ``n - d`` is odd the
                                                  first (highest-noise) step is an Euler step
``ddim``                      ``K + d``           ``n - d`` steps
``dpm_solver`` (order k)      ``k K + d``         DPM-Solver-fast split of ``n - d`` (Lu et al. 2022,
                                                  Sec. 3.4), e.g. order 3: ``[3, ..., 3, 2, 1]``
``dpm_solver_multistep``      ``K + d``           ``n - d`` steps
``dpm_solver_pp_2m``          ``K + d``           ``n - d`` steps
``adaptive_sde``              (tolerances)        ``2`` per iteration ``+ d``; see ``info``
============================  ==================  =====================================================

Custom grids: every fixed-step solver also takes ``times``, the grid itself: a float64 sequence (a list of
floats or a float64 tensor) of at least 2 strictly decreasing positive times, from the first (``T``, or any
start: ``x_T`` is taken as the state at ``times[0]``) down to the last (which replaces ``eps``), e.g. a
diffusers scheduler's timesteps (:func:`sdegen.interop.diffusers_times`). It replaces ``nfe``/``steps``
and ``schedule``/``rho`` (giving both is an error); ``K + 1`` times cost what ``steps=K`` does.

Every solver takes ``info``: a dict it fills with ``nfe`` (batched score calls) and ``steps``, and
honours the sampler contract of :mod:`sdegen.contract` (``x_T``, ``callback``, ``step_hook``): the hook
sees ``x = a(t) x_hat`` in the SDE's coordinates.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Optional, Sequence

import torch

from . import noise
from .brownian import BrownianMemory, BrownianTree, tree_seeds
from .contract import Callback, Observed, StepHook, Steps, check_common, check_options, start_point
from .score import ScoreFn
from .sde import SDE, bcast

SCHEDULES = ("edm", "uniform", "logsnr")
PREDICTIONS = ("noise", "data")

# --- time grids ------------------------------------------------------------------------------------


def sigma_of_t(sde: SDE, t) -> torch.Tensor:
    """EDM's noise level ``sigma(t) = s(t) / a(t)`` in float64; ``t``: a number, list or tensor (pass
    numbers or float64, not float32, where precision matters)."""
    a, s = sde.marginal_coeffs(torch.as_tensor(t, dtype=torch.float64))
    return s / a


def t_of_sigma(sde: SDE, sigma, iters: int = 80) -> torch.Tensor:
    """Inverse of :func:`sigma_of_t` by bisection in float64 (``sigma(t)`` increases in ``t``).

    Times above ``T`` are returned where ``sigma > sigma(T)`` (stochastic churn may ask for them)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    floor = sigma_of_t(sde, torch.zeros(()))
    if (sigma < floor).any() or not torch.isfinite(sigma).all():
        raise ValueError(f"sigma must be finite and >= sigma(0) = {floor.item():.6g}, got min "
                         f"{sigma.min().item():.6g}")
    lo, hi = torch.zeros_like(sigma), torch.full_like(sigma, sde.T)
    for _ in range(64):  # widen the bracket for sigma > sigma(T)
        short = sigma_of_t(sde, hi) < sigma
        if not short.any():
            break
        hi = torch.where(short, 2 * hi, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = sigma_of_t(sde, mid) < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def time_grid(sde: SDE, steps: int, schedule: str = "edm", eps: float = 1e-3, rho: float = 7.0
              ) -> torch.Tensor:
    """``steps + 1`` times (float64) from ``T`` down to ``eps``.

    ``"uniform"``: uniform in ``t``; ``"edm"``: ``sigma_i = (smax^(1/rho) + i/K (smin^(1/rho) -
    smax^(1/rho)))^rho`` (Karras et al. 2022, eq. 5), mapped to ``t`` by :func:`t_of_sigma`;
    ``"logsnr"``: uniform in ``lambda = -log sigma`` (Lu et al. 2022, Sec. 3.3)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    T = sde.T
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule == "uniform":
        t = T + frac * (eps - T)
    else:
        s_max, s_min = sigma_of_t(sde, T), sigma_of_t(sde, eps)
        if schedule == "edm":
            sig = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        else:
            sig = torch.exp(s_max.log() + frac * (s_min.log() - s_max.log()))
        t = t_of_sigma(sde, sig)
    t[0], t[-1] = T, eps
    return t


def solver_grid(solver: str, sde: SDE, options: dict) -> tuple[list[float], dict]:
    """The time grid (floats, ``T`` down to the last time, without the denoising step) that ``solver`` runs
    with ``options``, and the options left once the grid is fixed: what a run on a piece of the grid takes
    beside ``times`` (RePaint's resampling, :mod:`sdegen.conditional`). With ``nfe``, the grid has the steps
    that budget gives (``dpm_solver``: its DPM-Solver-fast split's steps). ``adaptive_sde`` has no grid of
    its own: it gets ``sde.N`` uniform steps (the PC chain's), and runs on a piece with ``t_start``/``eps``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    o = {k: v for k, v in options.items() if k not in ("nfe", "steps", "times", "schedule", "rho", "eps")}
    if solver == "adaptive_sde":
        o.pop("t_start", None)
        return time_grid(sde, sde.N, "uniform", options.get("eps", 1e-3)).tolist(), o
    if options.get("times") is not None:
        if any(options.get(k) is not None for k in ("nfe", "steps")):
            raise ValueError(f"{solver}: give times or nfe/steps, not both")
        return _given_times(options["times"], solver), o
    nfe, steps, denoise = options.get("nfe"), options.get("steps"), options.get("denoise", True)
    order = options.get("order", 3 if solver == "dpm_solver" else 1)
    per_step = {"heun": 2, "dpm_solver": order}.get(solver, 1)
    n = _n_steps(nfe, steps, denoise, solver, per_step)
    if solver == "dpm_solver" and nfe is not None:
        _check_order(order)
        n = len(_fast_orders(nfe - int(denoise), order))
    grid = time_grid(sde, n, options.get("schedule", "edm"), options.get("eps", 1e-3), options.get("rho", 7.0))
    return grid.tolist(), o


# --- the score in the sigma parametrisation ---------------------------------------------------------


class _Model:
    """``score_fn`` seen from ``x_hat = x / a(t)``: returns ``(eps, D)`` at a scalar time ``t``; reports
    steps and applies the step hook (:class:`sdegen.contract.Steps`) in these coordinates."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, callback: Optional[Callback] = None,
                 step_hook: Optional[StepHook] = None):
        self.sde, self.score_fn, self.nfe = sde, score_fn, 0
        self.steps = Steps(sde, callback, step_hook)

    def coeffs(self, t: float) -> tuple[float, float]:
        a, s = self.sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
        return a.item(), s.item()

    def __call__(self, xh: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = self.coeffs(t)
        score = self.score_fn(a * xh, torch.full((xh.shape[0],), t, device=xh.device, dtype=xh.dtype))
        self.nfe += 1
        eps = -s * score                     # eps = -s(t) score (Song et al. 2021, App. C)
        return eps, xh - (s / a) * eps       # D = x_hat - sigma eps (EDM eq. 3, Tweedie)

    def step_done(self, i: int, xh: torch.Tensor, t: float, sigma: float, denoised) -> torch.Tensor:
        """After step ``i`` to time ``t``: the hook on ``x = a x_hat`` (returned as ``x_hat``), the report."""
        if self.steps.step_hook is not None:
            a = self.coeffs(t)[0]
            xh = self.steps.hook(a * xh, t) / a
        if self.steps.callback is not None:
            self.steps.report(i, t, self.coeffs(t)[0] * xh, denoised, sigma)
        return xh


def _setup(sde, score_fn, shape, eps, generator, device, dtype, x_T, callback, step_hook, t0=None):
    """Check the common arguments; take ``x_T`` (default: a draw from the prior) as the state at ``t0``
    (default ``T``), scaled to ``x_hat``."""
    check_common(sde, shape, eps, generator)
    if device is None:
        device = x_T.device if x_T is not None else noise.generator_device(generator, "cpu")
    model = _Model(sde, Observed(score_fn), callback, step_hook)
    x = start_point(sde, shape, generator, x_T, device, dtype)
    return x / model.coeffs(sde.T if t0 is None else t0)[0], model


def _finish(xh: torch.Tensor, model: _Model, eps: float, denoise: bool, info, steps: int, what: str):
    if not torch.isfinite(xh).all():
        raise FloatingPointError(f"{what} produced non-finite samples; check the score function or use "
                                 "more steps")
    if info is not None:
        info.update(nfe=model.nfe, steps=steps)
    return xh if denoise else model.coeffs(eps)[0] * xh   # sigma = 0 means a = 1


def _given_times(times, what: str) -> list[float]:
    """``times`` checked: at least 2 finite, strictly decreasing, positive numbers (returned as floats)."""
    dtype = getattr(times, "dtype", None)   # a tensor or array: float64 only (float32 times are rounded)
    if dtype is not None and str(dtype).replace("torch.", "") != "float64":
        raise ValueError(f"{what}: times must be float64 (a list of floats or a float64 tensor/array), got {dtype}")
    try:
        t = torch.as_tensor(times, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what}: times must be a sequence of numbers, got {type(times).__name__}") from None
    if t.dim() != 1 or len(t) < 2:
        raise ValueError(f"{what}: times must be a 1-D sequence of at least 2 times (T down to eps), got shape "
                         f"{list(t.shape)}")
    if not torch.isfinite(t).all() or not (t[-1] > 0) or not (t.diff() < 0).all():
        raise ValueError(f"{what}: times must be finite, strictly decreasing and > 0 (from T down to eps), got "
                         f"{t.tolist()}")
    return t.tolist()


def _n_steps(nfe, steps, denoise: bool, what: str, per_step: int = 1, times=None) -> int:
    """Number of ODE steps from ``steps``, from an exact ``nfe`` budget of ``per_step`` NFE/step, or from
    the given ``times`` (``len(times) - 1``)."""
    if times is not None:
        if nfe is not None or steps is not None:
            raise ValueError(f"{what}: give times or nfe/steps, not both")
        return len(_given_times(times, what)) - 1
    if nfe is not None and steps is not None:
        raise ValueError(f"{what}: give nfe or steps, not both")
    if nfe is None:
        if steps is None:
            raise ValueError(f"{what}: give nfe (an exact evaluation budget) or steps")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{what}: steps must be an integer >= 1, got {steps!r}")
        return steps
    if not isinstance(nfe, int) or nfe < 1 + int(denoise):
        raise ValueError(f"{what}: nfe must be an integer >= {1 + int(denoise)} (one ODE step"
                         f"{' plus the final denoising step' if denoise else ''}), got {nfe!r}")
    return -(-(nfe - int(denoise)) // per_step)


def _sigma_grid(sde, n, schedule, eps, rho, denoise, times=None):
    """Times and sigmas (float64 lists) of ``n`` steps (of :func:`time_grid`, or the given ``times``,
    checked by :func:`_n_steps`), with ``sigma = 0`` appended for ``denoise``."""
    if times is None:
        t = time_grid(sde, n, schedule, eps, rho)
    elif (schedule, rho) != ("edm", 7.0):
        raise ValueError(f"times replaces the grid that schedule and rho make; give times or "
                         f"schedule={schedule!r}/rho={rho}, not both")
    else:
        t = torch.tensor(_given_times(times, "times"), dtype=torch.float64)
    sig = sigma_of_t(sde, t)
    t, sig = t.tolist(), sig.tolist()
    if denoise:
        t.append(0.0)
        sig.append(0.0)
    return t, sig


# --- EDM Heun with stochastic churn ----------------------------------------------------------------


@torch.no_grad()
def heun(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, nfe: Optional[int] = None,
         steps: Optional[int] = None, times: Optional[Sequence[float]] = None, schedule: str = "edm",
         rho: float = 7.0, eps: float = 1e-3, denoise: bool = True, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = math.inf,
         s_noise: float = 1.0, generator: noise.Generator = None, x_T: Optional[torch.Tensor] = None,
         device=None, dtype: torch.dtype = torch.float32, callback: Optional[Callback] = None,
         step_hook: Optional[StepHook] = None, info: Optional[dict] = None) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 1),
    with EDM's stochastic churn (Algorithm 2) when ``s_churn > 0``.

    Churn: at each step with ``s_tmin <= sigma_i <= s_tmax`` (sigma units), noise of std
    ``sqrt(sigma_hat^2 - sigma_i^2) * s_noise`` lifts the state to ``sigma_hat = (1 + gamma) sigma_i``,
    ``gamma = min(s_churn / N, sqrt(2) - 1)`` with ``N`` the number of steps, before the model call.
    The step into ``sigma = 0`` is an Euler step. NFE: see the module table.

    Returns: samples ``[batch, ...]`` (denoised at ``sigma = 0`` if ``denoise``, else at ``t = eps``)."""
    n = _n_steps(nfe, steps, denoise, "heun", per_step=2, times=times)
    n_euler = (nfe - int(denoise)) % 2 if nfe is not None else 0
    if not s_churn >= 0 or not s_noise > 0 or not s_tmin <= s_tmax:
        raise ValueError(f"need s_churn >= 0, s_noise > 0 and s_tmin <= s_tmax, got s_churn={s_churn}, "
                         f"s_noise={s_noise}, s_tmin={s_tmin}, s_tmax={s_tmax}")
    t, sig = _sigma_grid(sde, n, schedule, eps, rho, denoise, times)
    xh, model = _setup(sde, score_fn, shape, eps, generator, device, dtype, x_T, callback, step_hook, t[0])
    n_int = len(sig) - 1
    gamma = min(s_churn / n_int, math.sqrt(2) - 1)
    churn = [gamma > 0 and s_tmin <= s <= s_tmax for s in sig[:-1]]
    sig_hat = [s * (1 + gamma) if c else s for s, c in zip(sig[:-1], churn)]
    t_hat = t_of_sigma(sde, sig_hat).tolist() if any(churn) else t[:-1]
    for i in range(n_int):
        s_cur, s_next, t_cur = sig_hat[i], sig[i + 1], t_hat[i] if churn[i] else t[i]
        if churn[i]:  # EDM Algorithm 2, lines 4-6: raise the noise level before the model call
            z = noise.randn_like(xh, generator)
            xh = xh + math.sqrt(s_cur ** 2 - sig[i] ** 2) * s_noise * z
        e_cur, den = model(xh, t_cur)
        x_next = xh + (s_next - s_cur) * e_cur                     # Euler step (Algorithm 1, line 5)
        if s_next > 0 and i >= n_euler:                            # 2nd-order correction (lines 6-8)
            e_next, _ = model(x_next, t[i + 1])
            x_next = xh + (s_next - s_cur) * 0.5 * (e_cur + e_next)
        xh = model.step_done(i, x_next, t[i + 1], s_next, den)
    return _finish(xh, model, t[n], denoise, info, n_int, "heun")


# --- DDIM ---------------------------------------------------------------------------------------------


@torch.no_grad()
def ddim(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, nfe: Optional[int] = None,
         steps: Optional[int] = None, times: Optional[Sequence[float]] = None, eta: float = 0.0,
         schedule: str = "edm", rho: float = 7.0,
         eps: float = 1e-3, denoise: bool = True, generator: noise.Generator = None,
         x_T: Optional[torch.Tensor] = None, device=None, dtype: torch.dtype = torch.float32,
         callback: Optional[Callback] = None, step_hook: Optional[StepHook] = None,
         info: Optional[dict] = None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12), written for ``x_hat`` with ``sigma = sqrt(1-abar)/sqrt(abar)``:
    ``x_hat' = D + sqrt(sigma'^2 - s_eta^2) eps + s_eta z`` with
    ``s_eta = eta sigma' sqrt(1 - sigma'^2 / sigma^2)`` (eq. 16 in these units).

    ``eta = 0`` is deterministic (Euler on the probability-flow ODE in sigma, = DPM-Solver-1);
    ``eta = 1`` is ancestral sampling. One evaluation per step; ``eta`` in ``[0, 1]``."""
    n = _n_steps(nfe, steps, denoise, "ddim", times=times)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    t, sig = _sigma_grid(sde, n, schedule, eps, rho, denoise, times)
    xh, model = _setup(sde, score_fn, shape, eps, generator, device, dtype, x_T, callback, step_hook, t[0])
    for i in range(len(sig) - 1):
        e, den = model(xh, t[i])
        s_next = sig[i + 1]
        s_eta = eta * s_next * math.sqrt(max(1.0 - (s_next / sig[i]) ** 2, 0.0))
        xh = den + math.sqrt(s_next ** 2 - s_eta ** 2) * e
        if s_eta > 0:
            xh = xh + s_eta * noise.randn_like(xh, generator)
        xh = model.step_done(i, xh, t[i + 1], s_next, den)
    return _finish(xh, model, t[n], denoise, info, len(sig) - 1, "ddim")


# --- DPM-Solver ----------------------------------------------------------------------------------------


def _fast_orders(budget: int, order: int) -> list[int]:
    """Per-step orders that spend exactly ``budget`` evaluations (DPM-Solver-fast, Lu et al. 2022, Sec. 3.4)."""
    if order == 1:
        return [1] * budget
    if order == 2:
        return [2] * (budget // 2) + [1] * (budget % 2)
    k, r = budget // 3 + 1, budget % 3
    return [3] * (k - 2) + [2, 1] if r == 0 else [3] * (k - 1) + [r]


def _check_order(order, allowed=(1, 2, 3)):
    if not isinstance(order, int) or order not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order!r}")


@torch.no_grad()
def dpm_solver_singlestep(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, nfe: Optional[int] = None,
                          steps: Optional[int] = None, times: Optional[Sequence[float]] = None,
                          order: int = 3, schedule: str = "edm",
                          rho: float = 7.0, eps: float = 1e-3, denoise: bool = True,
                          generator: noise.Generator = None, x_T: Optional[torch.Tensor] = None,
                          device=None, dtype: torch.dtype = torch.float32, callback: Optional[Callback] = None,
                          step_hook: Optional[StepHook] = None, info: Optional[dict] = None) -> torch.Tensor:
    """Singlestep DPM-Solver-1/2/3 in noise prediction (Lu et al. 2022, Sec. 3.2 and Algorithms 1-2 with
    ``r1 = 1/2``; ``r1 = 1/3, r2 = 2/3``). ``steps``: that many steps of ``order``; ``nfe``: the
    DPM-Solver-fast mix of orders that spends exactly the budget."""
    _check_order(order)
    n = _n_steps(nfe, steps, denoise, "dpm_solver", per_step=order, times=times)
    orders = _fast_orders(nfe - int(denoise), order) if nfe is not None else [order] * n
    t, sig = _sigma_grid(sde, len(orders), schedule, eps, rho, False, times)
    # intermediate points at lambda_s + r h, i.e. sigma = sigma_s^(1-r) sigma_t^r
    rs = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}
    mids = [[sig[i] ** (1 - r) * sig[i + 1] ** r for r in rs[k]] for i, k in enumerate(orders)]
    flat = [m for ms in mids for m in ms]
    t_flat = iter(t_of_sigma(sde, flat).tolist() if flat else [])
    xh, model = _setup(sde, score_fn, shape, eps, generator, device, dtype, x_T, callback, step_hook, t[0])
    for i, k in enumerate(orders):
        s_s, s_t = sig[i], sig[i + 1]
        h = math.log(s_s / s_t)                         # h = lambda_t - lambda_s, lambda = -log sigma
        e_s, den = model(xh, t[i])
        if k == 1:    # DPM-Solver-1: x_t = x_s - sigma_t (e^h - 1) eps_s (Lu et al. 2022, Sec. 3.2)
            xh = xh - s_t * math.expm1(h) * e_s
        elif k == 2:  # DPM-Solver-2 (Algorithm 1, r1 = 1/2)
            r1, (s_1,) = 0.5, mids[i]
            u = xh - s_1 * math.expm1(r1 * h) * e_s
            e_1, _ = model(u, next(t_flat))
            xh = xh - s_t * math.expm1(h) * e_s - s_t / (2 * r1) * math.expm1(h) * (e_1 - e_s)
        else:         # DPM-Solver-3 (Algorithm 2, r1 = 1/3, r2 = 2/3)
            r1, r2 = 1 / 3, 2 / 3
            s_1, s_2 = mids[i]
            u1 = xh - s_1 * math.expm1(r1 * h) * e_s
            d1 = model(u1, next(t_flat))[0] - e_s
            u2 = (xh - s_2 * math.expm1(r2 * h) * e_s
                  - s_2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1)
            d2 = model(u2, next(t_flat))[0] - e_s
            xh = xh - s_t * math.expm1(h) * e_s - (s_t / r2) * (math.expm1(h) / h - 1) * d2
        xh = model.step_done(i, xh, t[i + 1], s_t, den)
    if denoise:
        den = model(xh, t[-1])[1]
        xh = model.step_done(len(orders), den, 0.0, 0.0, den)
    return _finish(xh, model, t[-1], denoise, info, len(orders) + int(denoise), "dpm_solver")


def _multistep_update(xh, hist, s_s: float, s_t: float, prediction: str):
    """One multistep DPM-Solver / DPM-Solver++ step from ``sigma_s`` to ``sigma_t`` with the model
    outputs ``hist = [(lambda, m), ...]`` (newest last; ``m`` = eps or D).

    Order 2: Lu et al. 2022b (DPM-Solver++), Algorithm 2 and its noise-prediction twin:
    ``m0 + (m0 - m1) / (2 r)``. Order 3: the Taylor expansion of the exact solution to the 2nd
    derivative in lambda (Lu et al. 2022, Sec. 3.1), ``h f'`` and ``h^2 f''`` from divided differences
    of the last three outputs. (``d2`` estimates ``h^2 f''``, not ``h^2 f'' / 2``: with the half, the
    update is only 2nd order, which the convergence tests would show.)"""
    h = math.log(s_s / s_t)
    (l0, m0), k = hist[-1], len(hist)
    d1 = d2 = None
    if k >= 2:
        l1, m1 = hist[-2]
        r0 = (l0 - l1) / h
        d1 = (m0 - m1) / r0                             # ~ h f'(lambda_s)
    if k == 3:
        l2, m2 = hist[-3]
        r1 = (l1 - l2) / h
        d1_1 = (m1 - m2) / r1
        d2 = 2 * (d1 - d1_1) / (r0 + r1)                # ~ h^2 f''
        d1 = d1 + r0 / (r0 + r1) * (d1 - d1_1)          # ~ h f', 2nd-order accurate
    if prediction == "noise":   # x_t = x_s - sigma_t int e^{lambda_t - lambda} eps (Lu et al. 2022, Prop. 3.1)
        e1 = math.expm1(h)
        if k == 1:
            return xh - s_t * e1 * m0
        if k == 2:
            return xh - s_t * e1 * (m0 + 0.5 * d1)
        return xh - s_t * (e1 * m0 + (e1 - h) / h * d1 + (e1 - h - h * h / 2) / (h * h) * d2)
    # data: x_t = (sigma_t / sigma_s) x_s + int e^{lambda - lambda_t} D (Lu et al. 2022b, Sec. 3.2)
    e1 = -math.expm1(-h)
    ratio = s_t / s_s
    if k == 1:
        return ratio * xh + e1 * m0
    if k == 2:
        return ratio * xh + e1 * (m0 + 0.5 * d1)
    return ratio * xh + e1 * m0 + (h - e1) / h * d1 + (h * h / 2 - h + e1) / (h * h) * d2


@torch.no_grad()
def dpm_solver_multistep(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, nfe: Optional[int] = None,
                         steps: Optional[int] = None, times: Optional[Sequence[float]] = None,
                         order: int = 2, prediction: str = "noise",
                         lower_order_final: bool = True, schedule: str = "edm", rho: float = 7.0,
                         eps: float = 1e-3, denoise: bool = True, generator: noise.Generator = None,
                         x_T: Optional[torch.Tensor] = None, device=None, dtype: torch.dtype = torch.float32,
                         callback: Optional[Callback] = None, step_hook: Optional[StepHook] = None,
                         info: Optional[dict] = None) -> torch.Tensor:
    """Multistep DPM-Solver (``prediction="noise"``) or DPM-Solver++ (``"data"``) of ``order`` 1-3
    (Lu et al. 2022b, Sec. 4 and Algorithm 2): one evaluation per step, earlier evaluations reused.

    The first steps use lower orders while the history fills; with ``lower_order_final`` and fewer than
    15 steps (the denoising step included), the last steps do too, so that the step into ``sigma = 0``
    or ``sigma(eps)`` is 1st order and the one before at most 2nd (Lu et al. 2022b, Sec. 5: stability
    at few steps)."""
    _check_order(order)
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    n = _n_steps(nfe, steps, denoise, "dpm_solver_multistep", times=times)
    t, sig = _sigma_grid(sde, n, schedule, eps, rho, False, times)
    xh, model = _setup(sde, score_fn, shape, eps, generator, device, dtype, x_T, callback, step_hook, t[0])
    hist: list = []
    for i in range(n):
        e, den = model(xh, t[i])
        hist = (hist + [(-math.log(sig[i]), e if prediction == "noise" else den)])[-order:]
        k = min(order, i + 1)
        if lower_order_final and n + int(denoise) < 15:  # the denoising step is itself a 1st-order last step
            k = min(k, n + int(denoise) - i)
        xh = _multistep_update(xh, hist[-k:], sig[i], sig[i + 1], prediction)
        xh = model.step_done(i, xh, t[i + 1], sig[i + 1], den)
    if denoise:
        den = model(xh, t[-1])[1]
        xh = model.step_done(n, den, 0.0, 0.0, den)
    return _finish(xh, model, t[-1], denoise, info, n + int(denoise), "dpm_solver_multistep")


def dpm_solver_pp_2m(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], **kwargs) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): :func:`dpm_solver_multistep` with
    ``order=2, prediction="data"``; takes the same keyword arguments otherwise."""
    for fixed in ("order", "prediction"):
        if fixed in kwargs:
            raise ValueError(f"dpm_solver_pp_2m fixes {fixed}; use dpm_solver_multistep to choose it")
    return dpm_solver_multistep(sde, score_fn, shape, order=2, prediction="data", **kwargs)


# its options are dpm_solver_multistep's but the two it fixes (what help() and the contract read)
dpm_solver_pp_2m.__signature__ = inspect.signature(dpm_solver_multistep).replace(parameters=[
    p for p in inspect.signature(dpm_solver_multistep).parameters.values() if p.name not in ("order", "prediction")])


# --- adaptive reverse-SDE solver ------------------------------------------------------------------


BROWNIAN = ("memory", "tree", "redraw")
BROWNIAN_DEPTH = 32   # levels of the Brownian tree: knots (T - eps) / 2^32 apart (see sdegen.brownian)
# On a consistent path, W(t - h) moves by ~sqrt(dh) when h moves by dh, so the float32 round-off of the
# error estimate (it differs with the batch, e.g. in a batched score) would change every later step.
# Proposed steps are rounded to 4 significant bits (+-3%): round-off then changes a sample's steps only
# when it straddles a rounding boundary (none in 128 samples tested), not in every run.
STEP_BITS = 4


@torch.no_grad()
def adaptive_sde(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, rtol: float = 0.01,
                 atol: float = 0.0078, safety: float = 0.9, exponent: float = 0.9, h_init: float = 0.01,
                 eps: float = 1e-3, t_start: Optional[float] = None, denoise: bool = True,
                 max_iters: int = 100_000, brownian: str = "memory",
                 generator: noise.Generator = None, x_T: Optional[torch.Tensor] = None, device=None,
                 dtype: torch.dtype = torch.float32, callback: Optional[Callback] = None,
                 step_hook: Optional[StepHook] = None, info: Optional[dict] = None) -> torch.Tensor:
    """Reverse SDE with adaptive steps (Jolicoeur-Martineau et al. 2021, Algorithm 1).

    Per sample, from ``t = T`` (or ``t_start``, the time of ``x_T``) down to ``eps``: ``x' = x + K1``
    (Euler-Maruyama), ``x'' = x + (K1 + K2) / 2``
    (improved Euler, the same Brownian increment ``dW`` in both stages); the error ``E = ||(x' - x'') /
    delta||_2 / sqrt(n)`` with ``delta = max(atol, rtol max(|x'|, |x'_prev|))``; accept ``x''``
    (extrapolation) if ``E <= 1``; next ``h = min(t - eps, safety h E^-exponent)``. Each sample has its
    own ``t`` and ``h``, so with per-sample generators a sample does not depend on its batch. ``atol`` is
    in data units (the paper's 0.0078 is for data in [-1, 1]). Only samples still running are scored.

    ``brownian`` says where ``dW`` over ``[t - h, t]`` comes from (:mod:`sdegen.brownian`):

    - ``"memory"`` (default): ``W(t - h) - W(t)`` of one Brownian path per sample that remembers the
      points it has drawn (rejection sampling with memory, Rackauckas & Nie 2017), so a rejected step
      is retried on the same path (the shorter increment is the Brownian bridge's value). Exact; one
      normal per element per iteration.
    - ``"tree"``: the same from a virtual Brownian tree (Li et al. 2020) seeded once per sample: the path
      depends on the seed alone, not on the steps taken (the same path at every tolerance). Exact at
      knots ``(T - eps) / 2^32`` apart, linear between them; ``33`` normals per element per iteration.
    - ``"redraw"``: a fresh ``sqrt(h) z`` every iteration, as in the paper's Algorithm 1. Rejection then
      prefers small ``|z|``, which shrinks the samples' spread: biased; kept for comparison.

    ``info`` gets ``nfe`` (batched score calls, 2 per iteration + denoise), ``nfe_per_sample`` (mean
    evaluations per sample), ``accepted`` and ``rejected`` (mean per sample). ``callback`` and
    ``step_hook`` are called once per iteration with each sample's own time ``t [B]`` (a rejected sample
    keeps its time), and after the denoising step."""
    if not (rtol > 0 and atol > 0 and 0 < safety <= 1 and exponent > 0 and h_init > 0):
        raise ValueError("adaptive_sde needs rtol > 0, atol > 0, 0 < safety <= 1, exponent > 0, h_init > 0; "
                         f"got rtol={rtol}, atol={atol}, safety={safety}, exponent={exponent}, h_init={h_init}")
    if brownian not in BROWNIAN:
        raise ValueError(f"unknown brownian {brownian!r}; choose one of {BROWNIAN}")
    check_common(sde, shape, eps, generator)
    t0 = sde.T if t_start is None else float(t_start)
    if not eps < t0 <= sde.T:
        raise ValueError(f"t_start must be in (eps={eps}, T={sde.T}], got {t_start}")
    if device is None:
        device = x_T.device if x_T is not None else noise.generator_device(generator, "cpu")
    score_fn = Observed(score_fn)
    steps = Steps(sde, callback, step_hook, score_fn)
    reverse = sde.reverse(score_fn)
    x = start_point(sde, shape, generator, x_T, device, dtype)
    B, n_el = x.shape[0], x[0].numel()
    t = torch.full((B,), t0, dtype=torch.float64, device=device)
    h = torch.full((B,), min(h_init, t0 - eps), dtype=torch.float64, device=device)
    x_prev = x.clone()   # x'_prev starts at x_T (official implementation)
    path = None   # draws come after x_T's, so a given x_T and a drawn one agree
    if brownian == "tree":
        path = BrownianTree(tree_seeds(B, generator, device), eps, sde.T, x.shape[1:], BROWNIAN_DEPTH)
    elif brownian == "memory":
        path = BrownianMemory(t, x.shape[1:], generator)
    if path is not None:
        w = torch.zeros(B, *x.shape[1:], dtype=torch.float64, device=device)   # W(t_start) = 0 (memory)
        if brownian == "tree":
            w = path(t)   # W(t) of every sample at its current time (float64)
    calls, scored, accepted, rejected = 0, 0, 0, 0
    denoised = torch.zeros_like(x)
    for it in range(max_iters + 1):
        active = (t - eps) > 1e-12 * sde.T
        if not active.any():
            break
        if it == max_iters:
            raise RuntimeError(f"adaptive_sde did not reach t = eps in {max_iters} iterations; "
                               "loosen rtol/atol")
        idx = active.nonzero().squeeze(1)
        xa, ta, ha = x[idx], t[idx], h[idx]
        t_next = (ta - ha).clamp(eps, sde.T)   # t - h >= eps up to rounding
        if path is not None:
            w_next = path(t_next, idx)
            dw = (w_next - w[idx]).to(dtype)                          # W(t - h) - W(t) ~ N(0, h)
        else:
            z_all = noise.randn_like(x, generator)                     # every sample draws every iteration
            dw = bcast(ha.sqrt().to(dtype), xa) * z_all[idx]
        hb = bcast(ha, xa)
        drift, g = reverse.sde(xa, ta.to(dtype))
        k1 = -hb * drift + bcast(g, xa) * dw                          # Euler-Maruyama increment
        x1 = xa + k1
        drift2, g2 = reverse.sde(x1, t_next.to(dtype))
        k2 = -hb * drift2 + bcast(g2, xa) * dw
        x2 = xa + 0.5 * (k1 + k2)                                      # improved Euler (Heun)
        calls, scored = calls + 2, scored + 2 * idx.numel()
        delta = torch.maximum(rtol * torch.maximum(x1.abs(), x_prev[idx].abs()),
                              torch.full_like(x1, atol))
        err = ((x1 - x2) / delta).reshape(idx.numel(), -1).pow(2).sum(1).div(n_el).sqrt().double()
        if not torch.isfinite(err).all():
            raise FloatingPointError(f"adaptive_sde: non-finite error estimate at iteration {it}")
        ok = err <= 1.0
        okb = bcast(ok, xa).bool()
        x = x.index_put((idx,), torch.where(okb, x2, xa))   # a new tensor: reported states stay as reported
        x_prev[idx] = torch.where(okb, x1, x_prev[idx])
        if path is not None:
            w[idx] = torch.where(bcast(ok, w_next).bool(), w_next, w[idx])
            path.advance(t_next[ok], idx[ok])
        t_new = torch.where(ok, t_next, ta)
        t[idx] = t_new
        h_new = safety * ha * err.clamp_min(1e-10) ** -exponent
        if path is not None:   # see STEP_BITS
            mant, expo = torch.frexp(h_new)
            h_new = torch.ldexp(torch.round(mant * 2.0 ** STEP_BITS) / 2.0 ** STEP_BITS, expo)
        h[idx] = torch.minimum((t_new - eps).clamp_min(0.0), h_new)
        accepted, rejected = accepted + int(ok.sum()), rejected + int((~ok).sum())
        x = steps.hook(x, t)
        if steps.callback is not None:   # each sample's Tweedie estimate at its own latest evaluation
            denoised = denoised.index_put((idx,), steps.denoised())
            steps.report(it, t, x, denoised)
    if denoise:
        a, s = sde.marginal_coeffs(torch.tensor([eps], dtype=torch.float64))
        a, s = a.item(), s.item()
        x = (x + s * s * score_fn(x, torch.full((B,), eps, device=device, dtype=dtype))) / a  # Tweedie
        calls, scored = calls + 1, scored + B
        x = steps.hook(x, 0.0)
        steps.report(it, 0.0, x, x)
    if not torch.isfinite(x).all():
        raise FloatingPointError("adaptive_sde produced non-finite samples; check the score function")
    if info is not None:
        info.update(nfe=calls, nfe_per_sample=scored / B, steps=accepted / B,
                    accepted=accepted / B, rejected=rejected / B)
    return x


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "heun": heun,
    "ddim": ddim,
    "dpm_solver": dpm_solver_singlestep,
    "dpm_solver_multistep": dpm_solver_multistep,
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
    "adaptive_sde": adaptive_sde,
}


def solve(sde: SDE, score_fn: ScoreFn, shape: Sequence[int], *, solver: str, nfe: Optional[int] = None,
          steps: Optional[int] = None, schedule: Optional[str] = None, eps: float = 1e-3,
          generator: noise.Generator = None, device=None, **solver_options) -> torch.Tensor:
    """Sample with one of :data:`SOLVERS` by name (as :func:`sdegen.generate` does for every sampler).

    Args:
        sde: the forward SDE (VE, VP, sub-VP).
        score_fn: ``(x [B, ...], t [B]) -> score [B, ...]``.
        shape: ``[batch, ...]`` of the samples.
        solver: a key of :data:`SOLVERS`.
        nfe: exact budget of score evaluations (fixed-step solvers; see the module table), or
        steps: the number of steps. ``adaptive_sde`` takes neither (its knob is ``rtol``/``atol``).
            The fixed-step solvers also take ``times`` (a float64 grid, instead of nfe/steps/schedule;
            see the module doc).
        schedule: ``"edm"`` (default), ``"uniform"`` or ``"logsnr"``; not for ``adaptive_sde``.
        eps: the last time of the grid; generator: see :mod:`sdegen.noise`.
        solver_options: the solver's own keyword arguments (``s_churn``, ``eta``, ``order``,
            ``prediction``, ``rtol``, ``denoise``, ``dtype``, ``info``, ``x_T``, ``callback``, ...).

    Returns: samples ``[batch, ...]``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    kwargs = dict(solver_options, eps=eps, generator=generator, device=device)
    for key, value in (("nfe", nfe), ("steps", steps), ("schedule", schedule)):
        if value is not None:
            kwargs[key] = value
    check_options(solver, SOLVERS[solver], kwargs)
    return SOLVERS[solver](sde, score_fn, shape, **kwargs)
