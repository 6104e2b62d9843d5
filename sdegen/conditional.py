"""Conditional generation with an unconditional score: inpainting and colorization.

``inpaint`` fills the unobserved entries of ``known`` (``mask`` = 1 where observed); the observed entries
of its result equal ``known`` exactly. Its methods (:data:`METHODS`):

- ``"replace"``: Song et al. 2021, App. I.2 (the official ``get_pc_inpainter``): after every predictor and
  corrector step the observed entries are replaced by a fresh forward-noised copy of ``known`` at the
  current time. It rides on the sampler contract's ``step_hook``, so it works with every sampler that
  takes one (all but the adaptive ODE sampler).
- ``"repaint"``: Lugmayr et al. 2022 (RePaint, Algorithm 1 with the "jump" schedule of its code): the same
  replacement hook, and every ``jump`` steps the state travels ``jump`` steps back up in time and down again,
  ``resample - 1`` times, so the unobserved part can harmonise with the observed one. With ``"pc"`` it
  travels on the chain (its predictor and correctors down, its forward steps up); with a solver (every
  fixed-step solver on its own time grid, ``adaptive_sde`` on the PC chain's levels) the solver itself
  re-runs the piece of the grid, and the SDE's transition kernel noises the state up. (The adaptive ODE
  sampler takes no step hook, so it has neither method.) Like the replacement it conditions on a noised
  copy of ``known``, so it is not exact: more
  resampling brings it closer to the replacement's equilibrium, which on some conditionals is further
  from the exact one than a single pass (benchmarks/conditional_accuracy.py).
- ``"smc"``: the twisted diffusion sampler (TDS, Wu et al. 2023, Algorithm 1): ``particles`` particles per
  row run the PC chain's predictor with the score shifted by the gradient of a twisting function
  ``log p~(known | x_t)`` (a Gaussian around the Tweedie denoiser's observed entries, of Tweedie's
  posterior variance), and are weighted so that the returned draw (one particle per row, picked by
  weight; systematic resampling when a row's effective sample size falls under half) is exact as
  ``particles`` grows, up to the chain's discretisation. The last step sets the observed entries to
  ``known`` and swaps the twist for the chain's likelihood of them. The twist's gradient takes autograd
  through ``score_fn`` (run under ``torch.enable_grad``; network scores work); one score evaluation and
  two backward passes per particle and step.

``colorize`` is inpainting in a decoupled orthogonal colour basis whose first vector lies along the grey
axis (Song et al. 2021, App. I.3): the grey level is the observed coordinate.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import noise
from .contract import Observed
from .sampling import CORRECTORS, PREDICTORS, generate, sampler_defaults
from .solvers import SOLVERS, solver_grid
from .score import ScoreFn
from .sde import SDE, bcast

METHODS = ("replace", "repaint", "smc")
#: the options of each method, with their defaults
METHOD_OPTIONS = {"replace": {}, "repaint": {"resample": 5, "jump": 10}, "smc": {"particles": 16}}
#: the PC sampler's options that RePaint and SMC read (SMC takes no corrector)
CHAIN_OPTIONS = ("predictor", "corrector", "snr", "n_corrector_steps", "steps", "eps", "denoise", "snr_norm")
ESS_FRACTION = 0.5   # SMC resamples a row when its effective sample size falls below this share of particles


def inpaint(sde: SDE, score_fn: ScoreFn, known: torch.Tensor, mask, *, method: str = "replace",
            sampler: str = "pc", generator: noise.Generator = None, resample: Optional[int] = None,
            jump: Optional[int] = None, particles: Optional[int] = None, **sampler_options) -> torch.Tensor:
    """Draw the unobserved entries of ``known`` from the model's conditional given the observed ones.

    Args:
        sde: the forward SDE; score_fn: its (unconditional) score ``(x [B, ...], t [B]) -> [B, ...]``.
        known: ``[B, ...]``, the values at the observed entries (the others are ignored).
        mask: ``known``'s shape or broadcastable to it; 1 (True) where an entry is observed.
        method: ``"replace"``, ``"repaint"`` or ``"smc"`` (see the module documentation).
        sampler: for ``"replace"`` any sampler of :data:`sdegen.SAMPLERS` that takes a ``step_hook``;
            ``"repaint"``: ``"pc"`` or a solver of :data:`sdegen.solvers.SOLVERS`; ``"smc"`` drives the
            ``"pc"`` sampler's predictor itself.
        generator: a ``torch.Generator``, or one per row (:mod:`sdegen.noise`).
        resample, jump: RePaint's ``U`` (passes over each stretch, 1 = plain replacement) and ``J`` (steps
            per stretch); defaults 5 and 10.
        particles: SMC's ``K`` per row; default 16.
        sampler_options: the sampler's options (:func:`sdegen.sampling.sampler_defaults`); on the PC chain
            ``"repaint"`` and ``"smc"`` take those among :data:`CHAIN_OPTIONS` (``"smc"``: no corrector).

    Returns: ``[B, ...]`` with ``known``'s dtype, equal to ``known`` where ``mask`` is 1.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    given = {k: v for k, v in dict(resample=resample, jump=jump, particles=particles).items() if v is not None}
    wrong = sorted(set(given) - set(METHOD_OPTIONS[method]))
    if wrong:
        raise ValueError(f"method {method!r} takes no option {wrong}; its own options: "
                         f"{sorted(METHOD_OPTIONS[method]) or 'none'}")
    opts = {**METHOD_OPTIONS[method], **given}
    for name, value in opts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    known, mask = _check_observation(known, mask)

    def replace(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:   # the step hook
        return torch.where(mask, _noised(sde, known, t, generator), x)

    if method == "replace":
        x = generate(sde, score_fn, tuple(known.shape), sampler=sampler, generator=generator,
                     device=known.device, step_hook=replace, **sampler_options)
    elif method == "repaint" and sampler != "pc":
        if sampler not in SOLVERS:
            raise ValueError(f"method 'repaint' travels back up in time, which the {sampler!r} sampler cannot "
                             f"follow; choose 'pc' or one of {sorted(SOLVERS)}")
        x = _repaint_solver(sde, score_fn, known, replace, sampler, sampler_options, opts["resample"],
                            opts["jump"], generator)
    else:
        if sampler != "pc":
            raise ValueError(f"method 'smc' runs the 'pc' sampler's chain itself; got sampler={sampler!r}")
        chain = _Chain(sde, score_fn, sampler_options, method, generator)
        if method == "repaint":
            x = _repaint_pc(chain, known, replace, opts["resample"], opts["jump"])
        else:
            x = _smc(chain, known, mask, opts["particles"])
    return torch.where(mask, known, x.to(known.dtype))


def decoupled_color_basis(channels: int = 3) -> torch.Tensor:
    """An orthogonal ``[C, C]`` matrix whose first column is the grey axis ``1 / sqrt(C)``; for ``C = 3`` it
    equals, up to rounding, the matrix of Song et al. 2021, App. I.3 (official ``get_pc_colorizer``).
    A pixel ``x [C]`` has decoupled coordinates ``u = M^T x``, with ``u_0 = sqrt(C) mean(x)``."""
    if not isinstance(channels, int) or channels < 2:
        raise ValueError(f"channels must be an integer >= 2, got {channels!r}")
    a = torch.cat([torch.ones(channels, 1, dtype=torch.float64), torch.eye(channels, dtype=torch.float64)[:, :-1]], 1)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))   # Gram-Schmidt with positive diagonal: q[:, 0] = +1/sqrt(C)


def colorize(sde: SDE, score_fn: ScoreFn, gray: torch.Tensor, *, channels: int = 3, method: str = "replace",
             sampler: str = "pc", generator: noise.Generator = None, **options) -> torch.Tensor:
    """Colour images (or pixels) given their grey level, the mean over channels.

    Inpainting in the decoupled basis of :func:`decoupled_color_basis`: the score is rotated into it
    (the SDEs are isotropic, so the rotated process is the same SDE), its grey coordinate
    ``sqrt(C) gray`` is observed (Song et al. 2021, App. I.3).

    Args:
        gray: ``[B, 1, ...]``, the channel mean of the images to colour.
        channels: ``C`` of the model's images ``[B, C, ...]``.
        method, sampler, generator, options: as for :func:`inpaint`.

    Returns: ``[B, C, ...]`` whose channel mean equals ``gray`` (to floating-point rounding of the mean).
    """
    if not isinstance(gray, torch.Tensor) or gray.dim() < 2 or gray.shape[1] != 1:
        got = tuple(gray.shape) if isinstance(gray, torch.Tensor) else type(gray).__name__
        raise ValueError(f"gray must be a tensor [batch, 1, ...] (the channel mean), got {got}")
    basis = decoupled_color_basis(channels).to(device=gray.device, dtype=gray.dtype)

    def to_u(x):   # u_j = sum_c x_c M_cj
        return torch.einsum("bc...,cj->bj...", x, basis)

    def to_x(u):
        return torch.einsum("bj...,cj->bc...", u, basis)

    def rotated_score(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return to_u(score_fn(to_x(u), t))

    shape = (gray.shape[0], channels) + tuple(gray.shape[2:])
    known = torch.zeros(shape, dtype=gray.dtype, device=gray.device)
    known[:, :1] = math.sqrt(channels) * gray
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[:, :1] = True
    x = to_x(inpaint(sde, rotated_score, known, mask, method=method, sampler=sampler, generator=generator,
                     **options))
    return x + (gray - x.mean(1, keepdim=True))   # remove the rounding of the rotation from the grey level


# --- helpers ------------------------------------------------------------------------------------------

def _check_observation(known, mask) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(known, torch.Tensor) or not known.is_floating_point() or known.dim() < 2:
        got = f"{known.dtype} {tuple(known.shape)}" if isinstance(known, torch.Tensor) else type(known).__name__
        raise ValueError(f"known must be a floating-point tensor [batch, ...], got {got}")
    if not torch.isfinite(known).all():
        raise ValueError("known holds non-finite values (unobserved entries may hold any finite value)")
    mask = torch.as_tensor(mask, device=known.device)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold 0/1 (or booleans): 1 where an entry of known is observed")
    try:
        mask = torch.broadcast_to(mask.bool(), known.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to known's shape "
                         f"{tuple(known.shape)}") from None
    return known, mask


def _noised(sde: SDE, x0: torch.Tensor, t: torch.Tensor, generator, z: Optional[torch.Tensor] = None):
    """A draw from the perturbation kernel ``N(a(t) x0, s(t)^2 I)`` (Song et al. 2021, eqs. 29-34)."""
    a, s = sde.marginal_coeffs(t.to(device=x0.device, dtype=torch.float64))
    z = noise.randn_like(x0, generator) if z is None else z
    return bcast(a, x0) * x0 + bcast(s, x0) * z


class _Chain:
    """The PC sampler's chain driven step by step, for methods that leave its loop (the predictors and
    correctors are those of :mod:`sdegen.sampling`). Level ``l`` (``N`` at ``T``, ``0`` at the end) is at
    time ``times[N - l]``; a predictor step at level ``l`` goes to ``l - 1``."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, options: dict, method: str, generator):
        pc = sampler_defaults("pc")
        unknown = sorted(set(options) - set(CHAIN_OPTIONS))
        if unknown:
            raise ValueError(f"method {method!r} takes no option {unknown}; it takes the 'pc' options "
                             f"{list(CHAIN_OPTIONS)} and its own {sorted(METHOD_OPTIONS[method])}")
        if method == "smc":
            pc["corrector"] = None
            if options.get("corrector") is not None:
                raise ValueError("method 'smc' runs the predictor alone (a corrector is not a move of its "
                                 "particle targets): leave corrector=None")
        o = {**pc, **options}
        if o["predictor"] not in PREDICTORS:
            raise ValueError(f"unknown predictor {o['predictor']!r}; choose one of {sorted(PREDICTORS)}")
        if o["corrector"] is not None and o["corrector"] not in CORRECTORS:
            raise ValueError(f"unknown corrector {o['corrector']!r}; choose one of {sorted(CORRECTORS) + [None]}")
        steps = sde.N if o["steps"] is None else o["steps"]
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not 0 < o["eps"] < sde.T:
            raise ValueError(f"eps must be in (0, T={sde.T}), got {o['eps']}")
        self.sde = sde.with_steps(steps)
        if o["predictor"] == "ancestral" and not self.sde.supports_ancestral:
            raise ValueError(f"predictor 'ancestral' is not defined for {type(sde).__name__}")
        self.predict = PREDICTORS[o["predictor"]]
        self.correct = CORRECTORS[o["corrector"]] if o["corrector"] is not None else None
        self.o, self.steps, self.generator = o, steps, generator
        self.score_fn = Observed(score_fn)
        # the PC loop's times, and the end time of its last step
        times = torch.linspace(self.sde.T, o["eps"], steps, dtype=torch.float64).tolist()
        self.times = times + [max(times[-1] - self.sde.T / steps, 0.0)]

    def time(self, level: int) -> float:
        return self.times[self.steps - level]

    def tvec(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.time(level), device=x.device)

    def predictor(self, x: torch.Tensor, level: int, z: torch.Tensor):
        """``(x, mean)`` of the predictor step from ``level`` to ``level - 1`` with noise ``z``."""
        return self.predict(self.sde, self.score_fn, x, self.tvec(level, x), z)


def _repaint(x: torch.Tensor, down, up, N: int, jump: int, resample: int) -> torch.Tensor:
    """RePaint's schedule (Lugmayr et al. 2022, Algorithm 1; the official ``get_schedule_jump`` with
    ``jump_length = J``, ``jump_n_sample = U``) on levels ``N`` (at ``T``) to ``0``: arriving at a level
    ``l = 1 + m J`` with ``l + J <= N`` (RePaint's ``t = l - 1``), the state travels ``J`` levels back up and
    down again, ``U - 1`` times. ``down(x, hi, lo)`` runs the sampler (with the replacement) from level
    ``hi`` to ``lo``; ``up(x, lo, hi)`` noises ``x`` forward from ``lo`` to ``hi``."""
    level = N
    for stop in list(range(1, N - jump + 1, jump))[::-1] + [0]:
        x = down(x, level, stop)
        level = stop
        for _ in range(resample - 1 if stop > 0 else 0):
            x = down(up(x, stop, stop + jump), stop + jump, stop)
    return x


def _repaint_pc(chain: _Chain, known: torch.Tensor, replace, resample: int, jump: int) -> torch.Tensor:
    """RePaint on the PC chain: its predictor and correctors go down, its own forward steps
    ``q(x_l | x_{l-1})`` go up."""
    gen, o = chain.generator, chain.o

    def down(x, hi, lo):
        for level in range(hi, lo, -1):
            x, mean = chain.predictor(x, level, noise.randn_like(x, gen))
            x = replace(mean if level == 1 and o["denoise"] else x, chain.tvec(level - 1, x))
            if chain.correct is not None and level > 1:
                for _ in range(o["n_corrector_steps"]):
                    x, _ = chain.correct(chain.sde, chain.score_fn, x, chain.tvec(level - 1, x), o["snr"], 1, gen,
                                         o["snr_norm"])
                    x = replace(x, chain.tvec(level - 1, x))
        return x

    def up(x, lo, hi):
        for level in range(lo + 1, hi + 1):
            f, G = chain.sde.discretize(x, chain.tvec(level, x))
            x = x + f + bcast(G, x) * noise.randn_like(x, gen)
        return x

    x = chain.sde.prior_sampling(known.shape, gen, device=known.device, dtype=known.dtype)
    return _repaint(x, down, up, chain.steps, jump, resample)


def _repaint_solver(sde: SDE, score_fn: ScoreFn, known: torch.Tensor, replace, sampler: str, options: dict,
                    resample: int, jump: int, generator) -> torch.Tensor:
    """RePaint with a solver of :data:`sdegen.solvers.SOLVERS`: the solver runs, with the replacement as its
    step hook, on the pieces of its own time grid (``times``; ``adaptive_sde`` from ``t_start`` to ``eps`` on
    the PC chain's uniform levels); up is the SDE's exact transition kernel. A run on a piece starts afresh
    (a multistep solver refills its history; ``dpm_solver`` takes ``order`` on every step)."""
    grid, rest = solver_grid(sampler, sde, options)
    denoise, n = rest.pop("denoise", True), len(grid) - 1

    def down(x, hi, lo):
        piece = (dict(t_start=grid[n - hi], eps=grid[n - lo]) if sampler == "adaptive_sde"
                 else dict(times=grid[n - hi:n - lo + 1]))
        return generate(sde, score_fn, tuple(known.shape), sampler=sampler, generator=generator,
                        device=known.device, x_T=x, step_hook=replace, denoise=denoise and lo == 0, **piece, **rest)

    def up(x, lo, hi):
        return sde.transition(x, grid[n - lo], grid[n - hi], noise.randn_like(x, generator))

    x = sde.prior_sampling(known.shape, generator, device=known.device, dtype=known.dtype)
    return _repaint(x, down, up, n, jump, resample)


def _smc(chain: _Chain, known: torch.Tensor, mask: torch.Tensor, K: int) -> torch.Tensor:
    """The twisted diffusion sampler (Wu et al. 2023, Algorithm 1) with ``K`` particles per row; see the
    module doc. Particles are ``[B, K, ...]`` (a row's particles and draws are its own); the network sees
    them as one batch ``[B K, ...]``."""
    gen, sde, N = chain.generator, chain.sde, chain.steps
    B, shape, dev, dt = known.shape[0], tuple(known.shape[1:]), known.device, known.dtype
    dims = tuple(range(2, 2 + len(shape)))
    rows = torch.arange(B, device=dev)[:, None]
    obs, y = mask[:, None], known[:, None]

    def flat(v):
        return v.reshape((B * K,) + shape)

    n_obs = obs.reshape(B, 1, -1).sum(2).clamp_min(1).double()   # [B, 1] observed entries per row

    def twist(x, level):
        """The score at ``x`` ``[B, K, ...]`` and the log twisting function ``log p~(y | x_t)`` ``[B, K]`` (up to
        a constant per level) with its gradient. ``p~(y | x_t) = N(y; x0_hat(x_t)_obs, r^2 I)``: the Tweedie
        denoiser ``x0_hat = (x_t + s^2 score) / a`` gives the mean (Wu et al. 2023, Sec. 3: the twisting function, with a
        Gaussian in place of the degenerate likelihood of an exact observation), and Tweedie's second-order
        formula ``Cov[x0 | x_t] = (s^2 / a) d x0_hat / d x_t`` its variance (as in Boys et al. 2023, TMPD): ``r^2``
        is its mean over the observed entries, estimated with one Rademacher probe ``v`` per particle
        (Hutchinson: ``E[v . J v]``), floored at 1% of ``(s / a)^2``. Moment matching keeps the twist no
        sharper than the true ``p(y | x_t)``; a sharper one starves modes of particles. The gradient holds
        ``r^2`` fixed (it only shapes the proposal; the weights use the twist's value)."""
        t = torch.full((B * K,), chain.time(level), device=dev)
        a, s = (v.item() for v in sde.marginal_coeffs(torch.tensor(chain.time(level), dtype=torch.float64)))
        m = flat(obs.expand((B, K) + shape))
        v = torch.where(obs, 2 * (noise.rand((B, K) + shape, gen, device=dev, dtype=dt) < 0.5).to(dt) - 1, 0.0)
        with torch.enable_grad():
            xf = flat(x).detach().requires_grad_(True)
            score = chain.score_fn(xf, t)
            if not score.requires_grad:
                raise ValueError("method 'smc' needs the gradient of score_fn with respect to x; score_fn "
                                 "returned a tensor outside autograd (detached, or computed under no_grad)")
            x0 = (xf + s ** 2 * score) / a
            jv, = torch.autograd.grad((x0 * flat(v)).sum(), xf, retain_graph=True)
            err = torch.where(m, flat(y.expand((B, K) + shape)) - x0, torch.zeros_like(x0))
            sq = err.pow(2).reshape(B, K, -1).sum(2).double()
            r2 = (s ** 2 / a * (jv.reshape(x.shape) * v).reshape(B, K, -1).sum(2).double() / n_obs)
            r2 = r2.clamp_min(0.01 * (s / a) ** 2)
            grad, = torch.autograd.grad(-0.5 * (sq / r2).sum(), xf)
        log_tw = -0.5 * sq.detach() / r2 - 0.5 * n_obs * r2.log()
        return score.detach().reshape(x.shape), log_tw, grad.reshape(x.shape)

    def step(x, level, score):
        """``(mean, std)`` ``[B, K, ...]`` of the chain's reverse step from ``level`` with the score ``score``
        (the predictors are affine in the score, so the twisted proposal is the step with a shifted score)."""
        xf = flat(x)
        x1, mean = chain.predict(chain.sde, lambda *_: flat(score), xf, chain.tvec(level, xf), torch.ones_like(xf))
        return mean.reshape(x.shape), (x1 - mean).reshape(x.shape)

    def pick(logw, u):   # inverse-CDF draws from each row's weights, for uniforms u [B, 1] or [B, K] in [0, 1)
        cdf = torch.softmax(logw, 1).cumsum(1)
        cdf[:, -1] = 1.0
        return torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(K - 1)

    x = sde.prior_sampling((B, K) + shape, gen, device=dev, dtype=dt)
    score, log_tw, grad = twist(x, N)
    logw = log_tw.clone()                                        # w_T = p~(y | x_T) (Algorithm 1)
    for level in range(N, 1, -1):
        # resample rows whose effective sample size fell below ESS_FRACTION K (systematic; uniforms for every row)
        u = (noise.rand((B,), gen, device=dev, dtype=torch.float64)[:, None]
             + torch.arange(K, device=dev, dtype=torch.float64)) / K
        w = torch.softmax(logw, 1)
        redo = (1 / (w * w).sum(1) < ESS_FRACTION * K)[:, None]
        idx = torch.where(redo, pick(logw, u), torch.arange(K, device=dev))
        x, score, grad, log_tw = x[rows, idx], score[rows, idx], grad[rows, idx], log_tw[rows, idx]
        logw = torch.where(redo, torch.zeros_like(logw), logw)
        # propose from the reverse step with the twisted score s + grad log p~ (Wu et al. 2023, Algorithm 1) ...
        mean, std = step(x, level, score)
        shift = step(x, level, score + grad)[0] - mean
        z = noise.randn((B, K) + shape, gen, device=dev, dtype=dt)
        x = mean + shift + std * z
        # ... and weight by p(x' | x) p~(y | x') / (q(x' | x) p~(y | x)) (Algorithm 1); log p / q of two Gaussians
        # with one std and means shift apart, at x' = mean + shift + std z: -(shift / std)^2 / 2 - shift z / std
        r = (shift / std).double()
        log_pq = -(0.5 * r * r + r * z.double()).sum(dims)
        score, log_tw_new, grad = twist(x, level - 1)
        logw = logw + log_pq + log_tw_new - log_tw
        log_tw = log_tw_new
    # the last step: the observed entries take their values exactly, the others the chain's step (the untwisted
    # proposal); the weight swaps the twist for the chain's likelihood of the observation, N(known; mean, std^2)
    mean, std = step(x, 1, score)
    if bool((std > 0).all()):   # (a noise-free last step, as ancestral VE's, keeps the twist as the weight)
        log_lik = torch.where(obs, -0.5 * ((y - mean) / std).double() ** 2, 0.0).sum(dims)
        logw = logw + log_lik - log_tw
    z = noise.randn((B, K) + shape, gen, device=dev, dtype=dt)
    x = mean if chain.o["denoise"] else mean + std * z
    idx = pick(logw, noise.rand((B,), gen, device=dev, dtype=torch.float64)[:, None])   # one particle per row
    return x[rows, idx][:, 0]
