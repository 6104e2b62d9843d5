"""Distances for low-dimensional samples (toy 2-D sets, mixtures, latent codes): sliced Wasserstein,
MMD and mode coverage. Inputs are ``[N, d]`` tensors or arrays; work is done in float64 on CPU."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _points(x, name: str) -> torch.Tensor:
    t = (x.detach() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))).to("cpu", torch.float64)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be [N, d] with N >= 2, got shape {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have one dimension d, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def _w2_squared_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distances between the columns of sorted ``a`` ``[N, P]`` and ``b`` ``[M, P]``.

    W2^2 = int_0^1 (F_a^-1(u) - F_b^-1(u))^2 du, exactly, for the empirical quantile functions (step
    functions; Villani 2003, Thm 2.18), integrated over their merged breakpoints."""
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return (a - b).pow(2).mean(0)
    k = dict(dtype=torch.float64)
    u = torch.unique(torch.cat([torch.arange(1, n + 1, **k) / n, torch.arange(1, m + 1, **k) / m]))
    w = torch.diff(u, prepend=u.new_zeros(1))
    mid = u - w / 2
    ia = (mid * n).floor().long().clamp(max=n - 1)
    ib = (mid * m).floor().long().clamp(max=m - 1)
    return ((a[ia] - b[ib]).pow(2) * w[:, None]).sum(0)


def sliced_wasserstein(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance ``(E_theta W2^2(<theta, x>, <theta, y>))^(1/2)`` with ``theta``
    uniform on the unit sphere (Rabin et al. 2011; Bonneel et al. 2015, eq. 5), Monte Carlo over
    ``n_projections`` directions drawn from ``generator``. ``x``: ``[N, d]``, ``y``: ``[M, d]``.

    For ``y = x + delta`` it is ``|delta| / sqrt(d)`` (up to the Monte Carlo error); in 1-D it is W2."""
    x, y = _pair(x, y)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
    return float(_w2_squared_sorted(px, py).mean().sqrt())


def _median_distance(z: torch.Tensor, max_points: int = 2000) -> float:
    z = z[torch.linspace(0, len(z) - 1, min(len(z), max_points)).long()]  # an even, deterministic subset
    d = torch.cdist(z, z)
    return float(d[torch.triu_indices(len(z), len(z), 1).unbind()].median())


def mmd_rbf(x, y, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased estimate of the squared MMD (Gretton et al. 2012, eq. 3) between ``x`` ``[N, d]`` and
    ``y`` ``[M, d]`` with the kernel ``sum_h exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths``
    (default: the pooled median distance times 0.5, 1 and 2). May be slightly negative; its spread
    for two samples of one distribution is O(1 / N). Memory is O((N + M)^2)."""
    x, y = _pair(x, y)
    if bandwidths is None:
        med = _median_distance(torch.cat([x, y]))
        bandwidths = [0.5 * med, med, 2.0 * med]
    h = torch.as_tensor(list(bandwidths), dtype=torch.float64)
    if h.numel() == 0 or not (h > 0).all():
        raise ValueError(f"bandwidths must be positive numbers, got {list(bandwidths)}")

    def gram(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return torch.exp(-d2[..., None] / (2 * h ** 2)).sum(-1)

    n, m = len(x), len(y)
    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def mode_stats(samples, centers, std, threshold: float = 4.0, min_count: int = 1) -> dict:
    """Mode coverage of samples from a mixture with isotropic components.

    A sample is *high quality* if it lies within ``threshold * std`` (Euclidean) of its nearest centre;
    a mode is *recovered* if at least ``min_count`` high-quality samples are nearest to it (the protocol
    of the synthetic mixtures of Dumoulin et al. 2017 and Che et al. 2020, with 4 std).
    ``samples``: ``[N, d]``; ``centers``: ``[K, d]``; ``std``: a number or ``[K]`` per-mode stds.

    Returns ``modes_recovered`` (int), ``high_quality_share`` (float in [0, 1]) and ``counts``
    (high-quality samples per mode, a list of K ints)."""
    s, c = _points(samples, "samples"), _points(centers, "centers")
    if s.shape[1] != c.shape[1]:
        raise ValueError(f"samples have dimension {s.shape[1]} but centers {c.shape[1]}")
    std_k = np.asarray(std, dtype=np.float64)
    if std_k.ndim == 0:
        std_k = np.full(len(c), float(std_k))
    if std_k.shape != (len(c),) or not (std_k > 0).all():
        raise ValueError(f"std must be a positive number or a [K={len(c)}] array of them")
    dist, nearest = torch.cdist(s, c).min(dim=1)
    hq = dist <= threshold * torch.from_numpy(std_k)[nearest]
    counts = torch.bincount(nearest[hq], minlength=len(c))
    return {"modes_recovered": int((counts >= min_count).sum()), "high_quality_share": float(hq.double().mean()),
            "counts": counts.tolist()}
