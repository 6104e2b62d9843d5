"""Toy data with known answers: Gaussian mixtures whose noised marginals, conditionals and classifiers
are exact.

For an SDE with perturbation kernel ``N(a(t) x0, s(t)^2 I)``, a mixture ``sum_k w_k N(mu_k, C_k)`` stays a
mixture at every t: component k of ``p_t`` is ``N(a mu_k, a^2 C_k + s^2 I)``. With ``C_k = U_k diag(l_k) U_k^T``
(computed once), ``a^2 C_k + s^2 I = U_k diag(a^2 l_k + s^2) U_k^T``, so its whitening matrix
``W_k = U_k diag(a^2 l_k + s^2)^{-1/2}`` and its log-determinant cost no factorisation at any t, and the
score of a batch sharing one t is two matrix products ``[B, D] x [D, K D]``. When every ``C_k`` is diagonal
(isotropic included) it is a few ``[B, D] x [D, K]`` products. Everything is computed in float64 (the
expanded quadratic forms cancel), and returned in the input's dtype.

A Gaussian mixture's conditionals are mixtures: each component is conditioned as a Gaussian (Bishop 2006,
eqs. 2.81-2.82) and reweighted by the likelihood of the observation under it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import torch

from .sde import SDE

LOG_2PI = math.log(2 * math.pi)


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
        diag = torch.diagonal(covs, dim1=-2, dim2=-1)
        #: "diagonal" when every covariance is diagonal (isotropic ones included), else "full"
        self.structure = "diagonal" if torch.equal(covs, torch.diag_embed(diag)) else "full"
        if self.structure == "diagonal":
            evals, evecs = diag.clone(), None
        else:
            evals, evecs = torch.linalg.eigh(covs)
        if not (evals > 0).all():
            raise ValueError("every covariance must be positive definite")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self._evals, self._evecs = evals, evecs  # C_k = U diag(l) U^T (U = I when diagonal)
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

    # -- density, classifier and score of the noised marginal p_t -----------------------------------
    def _terms(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None = None,
               want_score: bool = True):
        """``log w_k + log N(x; a mu_k, a^2 C_k + s^2 I)`` ``[B, K]`` and, if asked, the score
        ``sum_k r_k grad log N_k`` ``[B, D]``: ``r`` the responsibilities, or one-hot for rows with a
        label ``>= 0`` (the score of that component alone). ``a``, ``s``: ``[B]``, or ``[1]`` for a batch
        sharing one time (then the batch is a few matrix products).

        The per-time parameters are made in float64; the batch is then processed in float64 for float64
        ``x`` (exact to rounding) and in float32 otherwise (the quadratic forms are centred or whitened,
        so float32 loses only float32 rounding)."""
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(cdt)
        B, D = x.shape
        a, s = a.to(device=x.device, dtype=torch.float64), s.to(device=x.device, dtype=torch.float64)
        mu, lam = self.means.to(x.device), self._evals.to(x.device)
        shared = a.numel() == 1
        a, s = a.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
        var = a ** 2 * lam + s ** 2                                     # [1 or B, K, D] eigenvalues of Sigma_k(t)
        log_norm = self.weights.to(x.device).log() - 0.5 * (var.log().sum(-1) + D * LOG_2PI)   # [1 or B, K]
        if shared:
            a, var, log_norm = a[0, 0, 0], var[0], log_norm[0]
            if self.structure == "diagonal":
                # -1/2 (x - a mu)^T diag(iv) (x - a mu) = [x*x, x, 1] . [-iv/2, a mu iv, -a^2 |mu|^2_iv / 2]
                iv = var.reciprocal()                                    # [K, D]
                const = log_norm - 0.5 * a ** 2 * (mu * mu * iv).sum(-1)
                coef = torch.cat([-0.5 * iv, a * mu * iv, const[:, None]], 1)
                log_joint = torch.cat([x * x, x, torch.ones_like(x[:, :1])], 1) @ coef.T.to(cdt)
            else:
                W = self._evecs.to(x.device) * var.rsqrt()[:, None, :]   # [K, D, D]: Sigma_k^{-1} = W_k W_k^T
                m = (a * torch.einsum("kd,kdj->kj", mu, W)).reshape(-1)
                z = torch.addmm(-m.to(cdt), x, W.permute(1, 0, 2).reshape(D, -1).to(cdt)).view(B, -1, D)
                log_joint = log_norm.to(cdt) - 0.5 * (z * z).sum(-1)   # z_k = W_k^T (x - a mu_k)
        else:                                                            # one time per row
            diff = x[:, None, :] - (a * mu).to(cdt)                      # [B, K, D]
            if self.structure == "full":
                diff = torch.einsum("kdj,bkd->bkj", self._evecs.to(x.device, cdt), diff)   # U_k^T diff
            iv = var.reciprocal().to(cdt)
            log_joint = log_norm.to(cdt) - 0.5 * (diff * diff * iv).sum(-1)
        if not want_score:
            return log_joint, None
        e = (log_joint - log_joint.max(-1, keepdim=True).values).exp()
        r = e / e.sum(-1, keepdim=True)                                  # responsibilities
        if labels is not None:
            r = torch.where(labels[:, None] >= 0, torch.nn.functional.one_hot(labels.clamp_min(0), r.shape[1]).to(r), r)
        if shared and self.structure == "diagonal":                     # -sum_k r_k (x - a mu_k) / var_k
            g = r @ torch.cat([iv, mu * iv], 1).to(cdt)
            score = a.to(cdt) * g[:, D:] - x * g[:, :D]
        elif shared:                                                     # -sum_k r_k W_k z_k
            score = -((r[..., None] * z).reshape(B, -1) @ W.transpose(1, 2).reshape(-1, D).to(cdt))
        elif self.structure == "diagonal":
            score = -(r[..., None] * diff * iv).sum(1)
        else:
            score = -torch.einsum("bk,kdj,bkj->bd", r, self._evecs.to(x.device, cdt), diff * iv)
        return log_joint, score

    def _at(self, x: torch.Tensor, t, sde: SDE | None):
        """``(a(t), s(t))`` ``[B]`` in float64 for ``x``; the clean mixture when ``sde`` is None."""
        self._check(x)
        if sde is None:
            one = torch.ones(1, dtype=torch.float64, device=x.device)
            return one, torch.zeros_like(one)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float64).reshape(-1)
        if t.numel() not in (1, x.shape[0]):
            raise ValueError(f"t must be a number or hold one time per point ({x.shape[0]}), got {t.numel()}")
        if t.numel() > 1 and bool((t == t[0]).all()):
            t = t[:1]                                    # one time for the batch: the coefficients once
        return sde.marginal_coeffs(t)

    def log_prob_t(self, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
        """``log p_t(x)`` in nats, ``[B]``, of the mixture noised by ``sde`` up to time ``t``."""
        log_joint, _ = self._terms(x, *self._at(x, t, sde), want_score=False)
        return torch.logsumexp(log_joint, dim=-1).to(x.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats, ``[B]``."""
        log_joint, _ = self._terms(x, *self._at(x, None, None), want_score=False)
        return torch.logsumexp(log_joint, dim=-1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities ``[B, K]`` under the clean mixture."""
        log_joint, _ = self._terms(x, *self._at(x, None, None), want_score=False)
        return torch.softmax(log_joint, dim=-1)

    def score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact score ``grad_x log p_t(x)`` of the noised marginal, as a ``score_fn(x, t)``."""

        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._terms(x, *self._at(x, t, sde))[1].to(x.dtype)

        return score

    def conditional_score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact class-conditional score ``grad_x log p_t(x | k)``, the components being the classes,
        as ``score(x [B, D], t [B], y)``; ``y`` an int or a LongTensor ``[B]``, where a negative label
        (``sdegen.score.NULL_LABEL = -1``) asks for the unconditional score ``grad_x log p_t(x)``."""

        def score(x: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
            labels = torch.as_tensor(y, device=x.device).reshape(-1)
            if labels.numel() not in (1, x.shape[0]):
                raise ValueError(f"y must be an int or hold one label per row ({x.shape[0]}), got {labels.numel()}")
            labels = labels.expand(x.shape[0])
            if labels.dtype.is_floating_point or bool((labels >= self.n_components).any()):
                raise ValueError(f"labels must be integers < {self.n_components} (negative: unconditional), "
                                 f"got {y!r}")
            return self._terms(x, *self._at(x, t, sde), labels=labels.long())[1].to(x.dtype)

        return score

    def classifier_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact time-dependent classifier over the components: ``classifier(x [B, D], t [B])`` gives
        ``log p_t(k | x)`` ``[B, K]`` (normalised logits), differentiable in ``x``."""

        def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            log_joint, _ = self._terms(x, *self._at(x, t, sde), want_score=False)
            return torch.log_softmax(log_joint, dim=-1).to(x.dtype)

        return classifier

    # -- mixtures derived from this one -------------------------------------------------------------
    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone, as a one-component mixture (its class-conditional distribution)."""
        if not 0 <= int(k) < self.n_components:
            raise ValueError(f"component must be in [0, {self.n_components}), got {k}")
        return GaussianMixture(self.means[k:k + 1], self.covs[k:k + 1])

    def marginal(self, mask) -> "GaussianMixture":
        """The mixture of the coordinates where ``mask`` ``[D]`` is true (same weights)."""
        idx = self._mask_index(mask, allow_all=True)[0]
        return GaussianMixture(self.means[:, idx], self.covs[:, idx][:, :, idx], weights=self.weights)

    def condition(self, values, mask) -> Union["GaussianMixture", list]:
        """The exact conditional of the unobserved coordinates given the observed ones.

        Args:
            values: ``[D]``, or ``[B, D]`` for one observation per row; only the entries where ``mask``
                is true are read.
            mask: ``[D]``, true (or 1) where a coordinate is observed; at least one of each kind.

        Returns: the mixture over the unobserved coordinates (in their order), ``[D_u]``; a list of
        ``B`` of them for ``[B, D]`` values. Component ``k`` becomes ``N(mu_u + C_uo C_oo^{-1} (v_o - mu_o),
        C_uu - C_uo C_oo^{-1} C_ou)`` (Bishop 2006, eqs. 2.81-2.82), weight ``prop. to w_k N(v_o; mu_o, C_oo)``.
        """
        obs, un = self._mask_index(mask)
        values = torch.as_tensor(values, dtype=torch.float64)
        single = values.dim() == 1
        values = values.reshape(-1, values.shape[-1])
        if values.shape[1] != self.dim:
            raise ValueError(f"values must have shape [{self.dim}] or [B, {self.dim}], got {tuple(values.shape)}")
        v = values[:, obs]
        mu, C = self.means, self.covs
        C_oo, C_uo, C_uu = C[:, obs][:, :, obs], C[:, un][:, :, obs], C[:, un][:, :, un]
        gain = torch.linalg.solve(C_oo, C_uo.transpose(1, 2)).transpose(1, 2)         # C_uo C_oo^{-1}, [K, U, O]
        cov = C_uu - gain @ C_uo.transpose(1, 2)
        mean = mu[:, un] + torch.einsum("kuo,bko->bku", gain, v[:, None, :] - mu[:, obs])
        weights = self.marginal(mask).responsibilities(v)                              # prop. to w_k N(v; mu_o, C_oo)
        out = [GaussianMixture(mean[b], cov, weights=weights[b]) for b in range(v.shape[0])]
        return out[0] if single else out

    def condition_linear(self, A, y) -> Union["LinearConditional", list]:
        """The exact conditional given a linear observation ``A x = y``.

        Args:
            A: ``[M, D]`` of rank ``M < D`` (e.g. ``[[1/3, 1/3, 1/3]]``: the grey level of an RGB pixel).
            y: ``[M]``, or ``[B, M]`` for one observation per row.

        Returns: a :class:`LinearConditional` (a list of ``B`` for ``[B, M]``): ``x = offset + basis c`` with
        ``basis`` an orthonormal basis of the null space of ``A`` and ``c`` distributed as its ``mixture``.
        Made by rotating to ``V^T x`` (``A = U S V^T``, the SVD) and conditioning on its first ``M``
        coordinates, which ``y`` fixes to ``S^{-1} U^T y``."""
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.dim() != 2 or A.shape[1] != self.dim or not A.shape[0] < self.dim:
            raise ValueError(f"A must have shape [M, {self.dim}] with M < {self.dim}, got {tuple(A.shape)}")
        M = A.shape[0]
        U, S, Vh = torch.linalg.svd(A, full_matrices=True)
        if not S.min() > 1e-10 * S.max():
            raise ValueError("A must have full row rank")
        y = torch.as_tensor(y, dtype=torch.float64)
        single = y.dim() == 1
        y = y.reshape(-1, y.shape[-1])
        if y.shape[1] != M:
            raise ValueError(f"y must have shape [{M}] or [B, {M}], got {tuple(y.shape)}")
        V = Vh.T
        rotated = GaussianMixture(self.means @ V, V.T @ self.covs @ V, weights=self.weights)
        c_r = (y @ U) / S                                                               # [B, M]
        mask = torch.arange(self.dim) < M
        conds = rotated.condition(torch.cat([c_r, torch.zeros(len(y), self.dim - M, dtype=torch.float64)], 1), mask)
        out = [LinearConditional(m, V[:, M:], c_r[b] @ V[:, :M].T) for b, m in enumerate(conds)]
        return out[0] if single else out

    def _mask_index(self, mask, allow_all: bool = False):
        mask = torch.as_tensor(mask).reshape(-1).cpu()
        if mask.shape != (self.dim,) or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"mask must be [{self.dim}] of booleans or 0/1, got {tuple(mask.shape)}")
        mask = mask.bool()
        if not mask.any() or (not allow_all and mask.all()):
            raise ValueError("mask must mark at least one observed" + ("" if allow_all else " and one unobserved")
                             + " coordinate")
        return mask.nonzero().reshape(-1), (~mask).nonzero().reshape(-1)

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

    def distribution_report(self, x: torch.Tensor) -> dict:
        """How well samples ``x`` ``[n, D]`` match the mixture, by statistics that are unbiased for exact
        samples even when components overlap (as a conditional's often do).

        ``tv``: total variation ``1/2 sum_k |w_hat_k - w_k|`` between the mean responsibilities
        ``w_hat_k = mean_i p(k | x_i)`` (``E[p(k | X)] = w_k``) and the weights; ``mean_err`` (norm) and
        ``cov_err`` (relative, Frobenius) of the mixture's overall mean and covariance. ``*_z``: the largest
        absolute error of an entry over its standard error, estimated from the samples. True samples give
        ``tv`` of order ``sqrt(K / n) / 2`` and z-scores of order 1-4."""
        self._check(x)
        x = x.detach().to("cpu", torch.float64)
        n = x.shape[0]
        r = self.responsibilities(x)
        w_hat, w = r.mean(0), self.weights
        mean = (w[:, None] * self.means).sum(0)
        second = (w[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        cov = second - mean[:, None] * mean[None, :]
        xc = x - mean
        prod = xc[:, :, None] * xc[:, None, :]                           # E[prod] = cov
        cov_hat = prod.mean(0) - (x.mean(0) - mean)[:, None] * (x.mean(0) - mean)[None, :]

        def z(err, samples):   # |error| / standard error of a sample mean (at least 1/n: one sample's worth)
            return (err.abs() / (samples.std(0) / math.sqrt(n)).clamp_min(1 / n)).max().item()

        return dict(tv=0.5 * (w_hat - w).abs().sum().item(), weights_z=z(w_hat - w, r),
                    mean_err=(x.mean(0) - mean).norm().item(), mean_z=z(x.mean(0) - mean, x),
                    cov_err=((cov_hat - cov).norm() / cov.norm()).item(), cov_z=z(prod.mean(0) - cov, prod))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape [batch, {self.dim}], got {tuple(x.shape)}")


@dataclasses.dataclass(frozen=True)
class LinearConditional:
    """A mixture on an affine subspace: ``x = offset + basis @ c`` with ``c ~ mixture``.

    ``basis``: ``[D, D_c]`` orthonormal columns; ``offset``: ``[D]``, orthogonal to them."""

    mixture: GaussianMixture
    basis: torch.Tensor
    offset: torch.Tensor

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """The coordinates ``c = basis^T (x - offset)`` ``[n, D_c]`` of points ``x`` ``[n, D]``."""
        return (x.to(torch.float64) - self.offset.to(x.device)) @ self.basis.to(x.device)

    def sample(self, n: int, generator: torch.Generator | None = None, *, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` draws ``[n, D]``."""
        c = self.mixture.sample(n, generator, dtype=torch.float64)
        return (self.offset + c @ self.basis.T).to(device=device, dtype=dtype)


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
