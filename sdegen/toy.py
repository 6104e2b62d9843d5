"""Toy data with known answers: Gaussian mixtures whose noised marginals have exact scores.

For an SDE with perturbation kernel ``N(a(t) x0, s(t)^2 I)``, a mixture ``sum_k w_k N(mu_k, C_k)`` stays a
mixture at every t: component k of ``p_t`` is ``N(a mu_k, a^2 C_k + s^2 I)``. With ``C_k = U_k diag(l_k) U_k^T``
(computed once), ``a^2 C_k + s^2 I = U_k diag(a^2 l_k + s^2) U_k^T``, so score and density at any t cost
no matrix factorisation.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import noise
from .sde import SDE


class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, C_k)`` in ``D`` dimensions.

    Args:
        means: ``[K, D]``.
        covs: ``[K, D, D]`` covariance matrices, or ``stds``: ``[K]`` isotropic standard deviations.
        weights: ``[K]`` non-negative, normalised here (default uniform).
    """

    def __init__(self, means, covs=None, *, stds=None, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        K, D = means.shape
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs [K, D, D] or stds [K]")
        if covs is None:
            stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
            if stds.shape != (K,) or not (stds > 0).all():
                raise ValueError(f"stds must be [K]={K} positive numbers, got {tuple(stds.shape)}")
            covs = stds[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape [K, D, D]=[{K}, {D}, {D}], got {tuple(covs.shape)}")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be [K]={K} non-negative numbers with a positive sum")
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(covs)
        if not (evals > 0).all():
            raise ValueError("every covariance must be positive definite")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self._evals, self._evecs = evals, evecs  # C_k = U diag(l) U^T
        self._chol = torch.linalg.cholesky(covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, *, return_labels: bool = False,
               device=None, dtype: torch.dtype = torch.float32):
        """``n`` draws ``[n, D]`` (and their component labels ``[n]`` if asked)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self._chol[labels], z)
        x = x.to(device=device, dtype=dtype)
        return (x, labels.to(device)) if return_labels else x

    # -- density and score of the noised marginal p_t --------------------------------------------
    def _components_t(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """Per-component log-density ``[B, K]`` and score ``[B, K, D]`` of ``N(a mu_k, a^2 C_k + s^2 I)``."""
        x = x.to(torch.float64)
        a = a.to(torch.float64).reshape(-1, 1, 1)
        s = s.to(torch.float64).reshape(-1, 1, 1)
        means, U, lam = (v.to(x.device) for v in (self.means, self._evecs, self._evals))
        var = a ** 2 * lam + s ** 2                                   # [B, K, D] eigenvalues of Sigma_k(t)
        diff = x[:, None, :] - a * means                              # [B, K, D]
        proj = torch.einsum("kdj,bkd->bkj", U, diff)                  # U^T diff
        logp = -0.5 * ((proj ** 2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        score = -torch.einsum("kdj,bkj->bkd", U, proj / var)          # -Sigma^{-1} diff
        return logp, score

    def _coeffs(self, x: torch.Tensor, t: torch.Tensor | None, sde: SDE | None):
        if sde is None:
            one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            return one, torch.zeros_like(one)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        return sde.marginal_coeffs(t.to(torch.float64))

    def log_prob_t(self, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
        """``log p_t(x)`` in nats, ``[B]``, of the mixture noised by ``sde`` up to time ``t``."""
        self._check(x)
        a, s = self._coeffs(x, t, sde)
        logp, _ = self._components_t(x, a, s)
        return torch.logsumexp(logp + self.weights.to(x.device).log(), dim=-1).to(x.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats, ``[B]``."""
        self._check(x)
        a, s = self._coeffs(x, None, None)
        logp, _ = self._components_t(x, a, s)
        return torch.logsumexp(logp + self.weights.to(x.device).log(), dim=-1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities ``[B, K]`` under the clean mixture."""
        a, s = self._coeffs(x, None, None)
        logp, _ = self._components_t(x, a, s)
        return torch.softmax(logp + self.weights.to(x.device).log(), dim=-1)

    def score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact score ``grad_x log p_t(x)`` of the noised marginal, as a ``score_fn(x, t)``."""

        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self._check(x)
            a, s = sde.marginal_coeffs(t.to(device=x.device, dtype=torch.float64))
            logp, comp_score = self._components_t(x, a, s)
            r = torch.softmax(logp + self.weights.to(x.device).log(), dim=-1)   # responsibilities
            return (r[..., None] * comp_score).sum(1).to(x.dtype)

        return score

    def moment_report(self, x: torch.Tensor) -> dict:
        """How well samples ``x`` ``[n, D]`` match the mixture, component by component.

        Each sample is assigned to its most probable component. Returns the largest errors of the
        component weights, means and covariances (``*_err``: absolute; covariance relative in Frobenius
        norm) and the largest absolute z-scores of the same quantities (``*_z``): errors divided by their
        standard errors at this sample size (weights: sqrt(w(1-w)/n); means: sqrt(C_dd/n_k); covariances:
        sqrt((C_ii C_jj + C_ij^2)/n_k), the Wishart variance). True samples give z-scores of order 1-4."""
        self._check(x)
        x = x.detach().to("cpu", torch.float64)
        n = x.shape[0]
        labels = self.responsibilities(x).argmax(-1)
        rep = dict(weights_err=0.0, means_err=0.0, covs_err=0.0, weights_z=0.0, means_z=0.0, covs_z=0.0)
        for k in range(self.n_components):
            w, mu, C = self.weights[k].item(), self.means[k], self.covs[k]
            xk = x[labels == k]
            nk = xk.shape[0]
            w_hat = nk / n
            rep["weights_err"] = max(rep["weights_err"], abs(w_hat - w))
            rep["weights_z"] = max(rep["weights_z"], abs(w_hat - w) / math.sqrt(w * (1 - w) / n + 1e-300))
            if nk < 2 * self.dim + 2:
                rep.update(means_err=math.inf, covs_err=math.inf, means_z=math.inf, covs_z=math.inf)
                continue
            mu_hat = xk.mean(0)
            C_hat = torch.cov(xk.T).reshape(self.dim, self.dim)
            d = torch.diagonal(C)
            rep["means_err"] = max(rep["means_err"], (mu_hat - mu).norm().item())
            rep["means_z"] = max(rep["means_z"], ((mu_hat - mu).abs() / (d / nk).sqrt()).max().item())
            rep["covs_err"] = max(rep["covs_err"], ((C_hat - C).norm() / C.norm()).item())
            se = ((d[:, None] * d[None, :] + C ** 2) / nk).sqrt()
            rep["covs_z"] = max(rep["covs_z"], ((C_hat - C).abs() / se).max().item())
        return rep

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape [batch, {self.dim}], got {tuple(x.shape)}")


# --- built-in toy sets ------------------------------------------------------------------------

def ring8(radius: float = 2.0, std: float = 0.02) -> GaussianMixture:
    """8 Gaussians evenly on a circle (Che et al. 2020, synthetic experiments)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, stds=[std] * 8)


def grid25(spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """5x5 grid of Gaussians at ``{-2,-1,0,1,2} * spacing`` (Che et al. 2020, 25-Gaussians)."""
    c = (torch.arange(5, dtype=torch.float64) - 2) * spacing
    means = torch.cartesian_prod(c, c)
    return GaussianMixture(means, stds=[std] * 25)


def gauss3() -> GaussianMixture:
    """Three anisotropic, unequally weighted components: a small 2-D testbed with exact answers."""
    means = [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]
    covs = [[[0.30, 0.15], [0.15, 0.20]],
            [[0.15, -0.05], [-0.05, 0.40]],
            [[0.25, 0.0], [0.0, 0.10]]]
    return GaussianMixture(means, covs, weights=[0.5, 0.3, 0.2])


def gmm16d(seed: int = 0) -> GaussianMixture:
    """A 16-D mixture of 4 components with random anisotropic covariances (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    K, D = 4, 16
    means = 3.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    covs = 0.1 * (A @ A.transpose(-1, -2)) + 0.02 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture(means, covs, weights=[0.4, 0.3, 0.2, 0.1])


class SampleOnly:
    """A 2-D toy set known only by its sampler (no exact score)."""

    dim = 2

    def __init__(self, name: str, sampler: Callable[[int, torch.Generator | None], torch.Tensor]):
        self.name, self._sampler = name, sampler

    def sample(self, n: int, generator: torch.Generator | None = None, *, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._sampler(n, generator).to(device=device, dtype=dtype)


def _swiss_roll(n: int, g) -> torch.Tensor:
    # 2-D swiss roll: r = theta, theta in [1.5 pi, 4.5 pi], scaled to about [-2, 2]
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([theta * theta.cos(), theta * theta.sin()], 1) / 7.0
    return x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _moons(n: int, g) -> torch.Tensor:
    # two interleaving half circles (as scikit-learn's make_moons), centred and scaled
    upper = torch.rand(n, generator=g) < 0.5
    angle = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.where(upper[:, None], torch.stack([angle.cos(), angle.sin()], 1),
                    torch.stack([1 - angle.cos(), 0.5 - angle.sin()], 1))
    x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.5
    return x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n: int, g) -> torch.Tensor:
    # uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2: square (col, row) with col + row even
    col = torch.randint(0, 4, (n,), generator=g)
    row = (col % 2) + 2 * torch.randint(0, 2, (n,), generator=g)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([col, row], 1).to(torch.float64) - 2 + u


TOY_SETS: dict[str, Callable[[], object]] = {
    "ring8": ring8,
    "grid25": grid25,
    "gauss3": gauss3,
    "gmm16d": gmm16d,
    "swiss_roll": lambda: SampleOnly("swiss_roll", _swiss_roll),
    "moons": lambda: SampleOnly("moons", _moons),
    "checkerboard": lambda: SampleOnly("checkerboard", _checkerboard),
}


def get_toy(name: str):
    """A built-in toy set by name: a :class:`GaussianMixture` (exact score) or a sample-only set."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOY_SETS)}")
    return TOY_SETS[name]()


def mixture_names() -> list[str]:
    """Names of the toy sets that have an exact score."""
    return [n for n, f in TOY_SETS.items() if isinstance(f(), GaussianMixture)]
