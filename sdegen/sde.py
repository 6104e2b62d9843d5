"""The forward SDEs of Song et al. 2021 (VE, VP, sub-VP), as small math objects.

Shapes: ``x`` is ``[batch, ...]``, ``t`` is ``[batch]`` in ``[0, T]``; per-sample coefficients are
returned with shape ``[batch]`` and broadcast with :func:`bcast`. Every tensor made here takes the
device and dtype of its input. What differs between the SDEs (ancestral rule, Langevin alpha,
discrete chain) is a method, so samplers never ask which SDE they hold.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import noise

# A score function: (x [batch, ...], t [batch]) -> the score of p_t at x, shaped like x. Defined here only.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample ``[batch]`` tensor to broadcast against ``x`` of shape ``[batch, ...]``."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim())).to(x.dtype)


def _flat_sq_norm(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(z.shape[0], -1).pow(2).sum(-1)


class SDE:
    """Base class: ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]``, discretised with ``N`` steps.

    Subclasses are frozen dataclasses with a field ``N``."""

    N: int

    @property
    def T(self) -> float:
        return 1.0

    def __post_init__(self):
        if not isinstance(self.N, int) or self.N < 1:
            raise ValueError(f"N must be an integer >= 1, got {self.N!r}")

    def _check_range(self, low: str, high: str, strict: bool) -> None:
        """Raise ValueError unless fields ``low`` and ``high`` are finite real numbers with
        ``0 < low < high`` (``<=`` unless ``strict``)."""
        for name in (low, high):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a finite number > 0, got {v!r}")
        lo, hi = getattr(self, low), getattr(self, high)
        if not (lo < hi if strict else lo <= hi):
            raise ValueError(f"{low} must be {'<' if strict else '<='} {high}, got {low}={lo}, {high}={hi}")

    # --- to be defined by each SDE -------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shaped like x) and diffusion ``g(t)`` (``[batch]``)."""
        raise NotImplementedError

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a(t), s(t))`` with ``p_0t(x(t) | x(0)) = N(a(t) x(0), s(t)^2 I)``; both ``[batch]``."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------
    def with_steps(self, N: int) -> "SDE":
        """The same SDE discretised with ``N`` steps (P2000 uses ``N=2000``)."""
        return dataclasses.replace(self, N=N)

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shaped like ``x0``) and std (``[batch]``) of the perturbation kernel ``p_0t``."""
        a, s = self.marginal_coeffs(t.to(x0))
        return bcast(a, x0) * x0, s

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise_: torch.Tensor) -> torch.Tensor:
        """``x(t) = mean + std * noise``: a draw from ``p_0t(. | x0)`` given standard normal noise."""
        mean, std = self.marginal_prob(x0, t)
        return mean + bcast(std, x0) * noise_

    def transition(self, x: torch.Tensor, s: float, t: float, noise_: torch.Tensor) -> torch.Tensor:
        """A draw of ``x(t)`` given ``x(s) = x`` for times ``s < t`` (forward in time), with standard normal
        ``noise_``: ``N((a_t / a_s) x, (s_t^2 - (a_t / a_s)^2 s_s^2) I)``, the transition kernel of a linear
        SDE (Kingma et al. 2021, VDM, Sec. 3.1: ``alpha_t|s``, ``sigma_t|s``)."""
        if not 0 <= s < t <= self.T:
            raise ValueError(f"transition needs 0 <= s < t <= T={self.T}, got s={s}, t={t}")
        (a_s, a_t), (s_s, s_t) = self.marginal_coeffs(torch.tensor([s, t], dtype=torch.float64))
        ratio = (a_t / a_s).item()
        std = math.sqrt(max(s_t.item() ** 2 - ratio ** 2 * s_s.item() ** 2, 0.0))
        return ratio * x + std * noise_

    def prior_sampling(self, shape: Sequence[int], generator: noise.Generator = None, *,
                       device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A draw from the prior ``p_T = N(0, prior_std^2 I)``."""
        device = device if device is not None else noise.generator_device(generator, "cpu")
        return self.prior_std * noise.randn(shape, generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, prior_std^2 I)`` per sample, in nats, shape ``[batch]``."""
        d = z[0].numel()
        var = self.prior_std ** 2
        return -0.5 * d * math.log(2 * math.pi * var) - _flat_sq_norm(z) / (2 * var)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Discrete index ``i = floor(t (N-1) / T)`` of the chain step at time ``t`` (official rule)."""
        return (t * (self.N - 1) / self.T).long().clamp(0, self.N - 1)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, G)`` of the forward chain ``x_{i+1} = x_i + f_i(x_i) + G_i z_i`` at time ``t``.

        Default: Euler-Maruyama with ``dt = T/N`` (Song et al. 2021, eq. 45 context)."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_i`` of the Langevin corrector (Song et al. 2021, Algorithms 4-5); ``[batch]``."""
        return torch.ones_like(t)

    def ancestral_step(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (``[batch]``) of the ancestral-sampling step from index ``i`` to ``i-1``."""
        raise NotImplementedError(f"ancestral sampling is not defined for {type(self).__name__}")

    @property
    def supports_ancestral(self) -> bool:
        return type(self).ancestral_step is not SDE.ancestral_step

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE, or with ``probability_flow=True`` the probability-flow ODE."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclass(frozen=True)
class ReverseSDE:
    """``dx = [f - c g^2 score] dt + g' dw_bar`` with ``c = 1`` (SDE) or ``1/2`` and ``g' = 0`` (ODE).

    Song et al. 2021, eq. (6) and eq. (13); ``discretize`` is the Reverse Diffusion rule, eq. (46)."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def _coef(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drift, diffusion = self.forward.sde(x, t)
        drift = drift - bcast(diffusion ** 2 * self._coef(), x) * self.score_fn(x, t)
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, G = self.forward.discretize(x, t)
        rev_f = f - bcast(G ** 2 * self._coef(), x) * self.score_fn(x, t)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: ``dx = sqrt(d[sigma^2(t)]/dt) dw``, ``sigma(t) = smin (smax/smin)^t``
    (Song et al. 2021, eq. 30)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def __post_init__(self):
        super().__post_init__()
        self._check_range("sigma_min", "sigma_max", strict=True)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        # g(t) = sigma(t) sqrt(2 log(smax/smin)) (Song et al. 2021, eq. 30)
        g = self.sigma(t.to(x)) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), g

    def marginal_coeffs(self, t):
        return torch.ones_like(t), self.sigma(t)

    def discrete_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigma_i, sigma_{i-1})`` of the SMLD noise levels at the index of ``t`` (``sigma_{-1} = 0``)."""
        i = self.timestep(t).to(t.dtype)
        ratio = self.sigma_max / self.sigma_min
        step = 1.0 / max(self.N - 1, 1)
        sigma = self.sigma_min * ratio ** (i * step)
        prev = torch.where(i > 0, self.sigma_min * ratio ** ((i - 1) * step), torch.zeros_like(i))
        return sigma, prev

    def discretize(self, x, t):
        # x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (Song et al. 2021, eq. 1 / seed slide "VE")
        sigma, prev = self.discrete_sigma(t.to(x))
        return torch.zeros_like(x), torch.sqrt(sigma ** 2 - prev ** 2)

    def ancestral_step(self, x, t, score):
        # SMLD ancestral rule (Song et al. 2021, eq. 47)
        sigma, prev = self.discrete_sigma(t.to(x))
        mean = x + bcast(sigma ** 2 - prev ** 2, x) * score
        std = torch.sqrt(prev ** 2 * (sigma ** 2 - prev ** 2) / sigma ** 2)
        return mean, std


@dataclass(frozen=True)
class _BetaSDE(SDE):
    """Shared linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        super().__post_init__()
        self._check_range("beta_min", "beta_max", strict=False)

    @property
    def prior_std(self) -> float:
        return 1.0

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: torch.Tensor) -> torch.Tensor:
        """``int_0^t beta(s) ds``."""
        return self.beta_min * t + 0.5 * t ** 2 * (self.beta_max - self.beta_min)

    def discrete_beta(self, t: torch.Tensor) -> torch.Tensor:
        """DDPM ``beta_i = beta_min/N + i/(N-1) (beta_max - beta_min)/N`` at the index of ``t``."""
        if self.beta_max >= self.N:
            raise ValueError(f"the discrete chain needs N > beta_max so that every beta_i < 1; got N={self.N}, "
                             f"beta_max={self.beta_max}: use more steps, or the euler_maruyama predictor "
                             "without a Langevin corrector")
        i = self.timestep(t).to(t.dtype)
        return (self.beta_min + i / max(self.N - 1, 1) * (self.beta_max - self.beta_min)) / self.N

    def langevin_alpha(self, t):
        return 1.0 - self.discrete_beta(t)


@dataclass(frozen=True)
class VPSDE(_BetaSDE):
    """Variance preserving: ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`` (Song et al. 2021, eq. 11)."""

    def sde(self, x, t):
        beta = self.beta(t.to(x))
        return -0.5 * bcast(beta, x) * x, torch.sqrt(beta)

    def marginal_coeffs(self, t):
        # Song et al. 2021, eq. 33: mean exp(-1/2 int beta) x0, var 1 - exp(-int beta)
        ib = self.integral_beta(t)
        return torch.exp(-0.5 * ib), torch.sqrt(-torch.expm1(-ib))

    def discretize(self, x, t):
        # x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (DDPM chain, Song et al. 2021 eq. 3)
        beta = self.discrete_beta(t.to(x))
        return bcast(torch.sqrt(1.0 - beta), x) * x - x, torch.sqrt(beta)

    def discrete_marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_i), sqrt(1 - abar_i))`` of the DDPM chain, ``abar_i = prod_{j<=i} (1 - beta_j)``
        (Ho et al. 2020, eq. 4), at the index of ``t``; both ``[batch]``."""
        n = torch.arange(self.N, device=t.device, dtype=torch.float64)
        betas = (self.beta_min + n / max(self.N - 1, 1) * (self.beta_max - self.beta_min)) / self.N
        abar = torch.cumprod(1.0 - betas, 0)[self.timestep(t)].to(t.dtype)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def ancestral_step(self, x, t, score):
        # x_{i-1} = (x_i + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z (Song et al. 2021, eq. 47)
        beta = self.discrete_beta(t.to(x))
        mean = (x + bcast(beta, x) * score) / bcast(torch.sqrt(1.0 - beta), x)
        return mean, torch.sqrt(beta)


@dataclass(frozen=True)
class SubVPSDE(_BetaSDE):
    """sub-VP: ``dx = -1/2 beta x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``
    (Song et al. 2021, eq. 29)."""

    def sde(self, x, t):
        t = t.to(x)
        beta = self.beta(t)
        g2 = beta * -torch.expm1(-2.0 * self.integral_beta(t))
        return -0.5 * bcast(beta, x) * x, torch.sqrt(g2)

    def marginal_coeffs(self, t):
        # Song et al. 2021, eq. 34: mean exp(-1/2 int beta) x0, std 1 - exp(-int beta)
        ib = self.integral_beta(t)
        return torch.exp(-0.5 * ib), -torch.expm1(-ib)


SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name (``ve``, ``vp``, ``subvp``)."""
    key = name.lower().replace("-", "").replace("_", "")
    key = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}.get(key, key)
    if key not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(SDES)}")
    return SDES[key](**kwargs)
