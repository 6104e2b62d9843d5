"""Frechet distance between Gaussian fits of features, and the statistics it is computed from.

A feature extractor (Inception-v3 for FID, the small digits CNN for FD-digits) is any object with
``name: str``, ``weights_sha256: str`` and ``__call__(batch, value_range) -> [B, D]``, where
``batch`` is an image tensor ``[B, C, H, W]``. :func:`extract_features` feeds it images in batches;
:class:`FeatureStats` stores the fit ``(mu, sigma)`` with the extractor's name and weights hash, so
that statistics from different networks are never compared (:func:`fid_from_stats`).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

Images = Union[torch.Tensor, np.ndarray, torch.utils.data.Dataset]
ValueRange = Union[tuple[float, float], None]

# Keys of a statistics .npz file.
_STATS_KEYS = ("mu", "sigma", "count", "extractor", "weights_sha256")


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Squared Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, in float64.

    ``mu*``: ``[D]``; ``sigma*``: ``[D, D]``, symmetric positive semi-definite (PSD), checked within
    round-off (see :func:`check_covariance`): a covariance that is not raises ValueError naming it.
    ``tr (sigma1 sigma2)^(1/2)`` is the sum of the square roots of the eigenvalues of ``sigma1 sigma2``
    (torch-fidelity's route; same value as ``scipy.linalg.sqrtm``, faster). For PSD inputs they are
    real and >= 0 up to round-off: those below ``D * machine_eps * max |eigenvalue|`` count as 0;
    imaginary parts of the roots up to ``1e-3 * max(1, sqrt(max |eigenvalue|))`` are dropped, larger
    ones raise ValueError (an input is not PSD). If the eigenvalues are not finite, ``eps * I`` is
    added to both covariances and they are computed again.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be [{d}, {d}] to match the means, got {list(s.shape)}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        check_covariance(s, name)

    tr_sqrt = _trace_sqrt_product(sigma1, sigma2)
    if tr_sqrt is None:
        offset = eps * np.eye(d)
        tr_sqrt = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
        if tr_sqrt is None:
            raise ValueError(f"cannot take the square root of sigma1 @ sigma2, even with {eps} * I added")
    diff = mu1 - mu2
    # d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Dowson & Landau 1982; Heusel et al. 2017, eq. 6)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def check_covariance(sigma: np.ndarray, name: str = "sigma") -> None:
    """Raise ValueError naming ``name`` unless ``sigma`` ``[D, D]`` is symmetric and PSD within round-off:
    ``|sigma - sigma^T| <= tol`` and every eigenvalue ``>= -tol``, ``tol = D * eps_float32 * max |sigma|``
    (the round-off of covariances accumulated in float32; float64 ones are far inside it)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    scale = float(np.abs(sigma).max(initial=0.0))
    tol = sigma.shape[0] * np.finfo(np.float32).eps * scale
    asym = float(np.abs(sigma - sigma.T).max(initial=0.0))
    if asym > tol:
        raise ValueError(f"{name} is not symmetric (|{name} - {name}^T| reaches {asym:.3g}, tolerance "
                         f"{tol:.3g}); a covariance matrix is symmetric positive semi-definite")
    if scale == 0:
        return
    try:  # a Cholesky factor of sigma + tol I exists iff every eigenvalue > -tol (cheaper than eigenvalues)
        np.linalg.cholesky((sigma + sigma.T) / 2 + tol * np.eye(len(sigma)))
        return
    except np.linalg.LinAlgError:
        low = float(np.linalg.eigvalsh((sigma + sigma.T) / 2).min(initial=0.0))
    if low < -tol:
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {low:.3g}, tolerance "
                         f"{-tol:.3g}); a covariance matrix is symmetric positive semi-definite")


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float | None:
    """``tr (sigma1 sigma2)^(1/2)``, or None when the eigenvalues are not finite."""
    try:
        lam = np.linalg.eigvals(sigma1 @ sigma2)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(lam).all():
        return None
    scale = float(np.abs(lam).max(initial=0.0))
    lam = np.where(np.abs(lam) <= len(lam) * np.finfo(np.float64).eps * scale, 0.0, lam)  # round-off zeros
    roots = np.sqrt(lam.astype(np.complex128))
    tol = 1e-3 * max(1.0, np.sqrt(scale))
    imag = float(np.abs(roots.imag).max(initial=0.0))
    if imag > tol:
        raise ValueError(f"sigma1 @ sigma2 has eigenvalues far from the non-negative real axis (imaginary part "
                         f"{imag:.3g} of a square root > {tol:.3g}); are both covariances positive semi-definite?")
    return float(roots.real.sum())


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features`` ``[N, D]``, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Gaussian fit of ``count`` feature vectors made by extractor ``extractor`` with weights whose
    file hash is ``weights_sha256``. ``mu``: ``[D]``, ``sigma``: ``[D, D]``, float64."""
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    extractor: str
    weights_sha256: str

    @classmethod
    def from_features(cls, features, extractor: str, weights_sha256: str) -> "FeatureStats":
        mu, sigma = feature_stats(features)
        return cls(mu, sigma, int(np.shape(features)[0]), extractor, weights_sha256)


def save_stats(path: str | os.PathLike, stats: FeatureStats) -> None:
    """Write ``stats`` to an ``.npz`` file with keys mu, sigma, count, extractor, weights_sha256."""
    from ..checkpoint import atomic_write
    # a file object keeps numpy from appending ".npz" to the name
    atomic_write(path, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count),
                                          extractor=np.str_(stats.extractor),
                                          weights_sha256=np.str_(stats.weights_sha256)))


def load_stats(path: str | os.PathLike) -> FeatureStats:
    """Read statistics written by :func:`save_stats` (no pickles are loaded)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no statistics file at {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz file ({e})") from e
    if not hasattr(z, "files"):
        raise ValueError(f"{path} holds a single array, not an .npz statistics file")
    with z:
        missing = [k for k in _STATS_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not an sdegen statistics file: it lacks {', '.join(missing)} "
                             f"(has {', '.join(z.files) or 'nothing'}); make one with `sdegen fid-stats`")
        return FeatureStats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["count"]),
                            str(z["extractor"]), str(z["weights_sha256"]))


def check_compatible(a: FeatureStats, b: FeatureStats) -> None:
    """Raise ValueError unless ``a`` and ``b`` come from the same extractor, weights and dimension."""
    if a.extractor != b.extractor:
        raise ValueError(f"statistics from different feature extractors cannot be compared: "
                         f"{a.extractor!r} vs {b.extractor!r}")
    if a.weights_sha256 != b.weights_sha256:
        raise ValueError(f"statistics from different weights of {a.extractor!r} cannot be compared: "
                         f"sha256 {a.weights_sha256[:12]}... vs {b.weights_sha256[:12]}...")
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between two statistics of one extractor (FID when it is Inception-v3)."""
    check_compatible(a, b)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def split_stats(features, blocks: int, extractor: str, weights_sha256: str) -> list[FeatureStats]:
    """Statistics of ``blocks`` disjoint contiguous blocks of the rows of ``features`` ``[N, D]``.

    Scoring each block against a reference gives a spread over independent sample sets; EDM
    (Karras et al. 2022) reports the minimum over such repeats."""
    f = np.asarray(features, dtype=np.float64)
    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
    if f.shape[0] < 2 * blocks:
        raise ValueError(f"{f.shape[0]} samples cannot make {blocks} blocks of at least 2")
    return [FeatureStats.from_features(part, extractor, weights_sha256) for part in np.array_split(f, blocks)]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- feeding images to an extractor ------------------------------------------------------------

def check_value_range(dtype: torch.dtype, value_range: ValueRange) -> tuple[float, float]:
    """The ``(lo, hi)`` range of images of ``dtype``: uint8 is always ``(0, 255)``; floats must say."""
    if dtype == torch.uint8:
        if value_range is not None and tuple(value_range) != (0, 255):
            raise ValueError(f"uint8 images have value range (0, 255), got value_range={value_range}")
        return 0.0, 255.0
    if not dtype.is_floating_point:
        raise ValueError(f"images must be uint8 or floating point, got {dtype}")
    if value_range is None:
        raise ValueError("float images need value_range, e.g. (0, 1) or (-1, 1)")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    return lo, hi


def to_unit_interval(batch: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Float64 copy of ``batch`` mapped from ``value_range`` to ``[0, 1]`` and clipped there."""
    lo, hi = check_value_range(batch.dtype, value_range)
    return ((batch.double() - lo) / (hi - lo)).clamp(0.0, 1.0)


def iter_batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield ``[B, C, H, W]`` tensors from a tensor / array ``[N, C, H, W]`` (``[N, H, W]`` is taken as
    one channel) or a Dataset whose items are ``[C, H, W]`` tensors or ``(tensor, label)`` pairs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        if images.dim() == 3:
            images = images[:, None]
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W] or [N, H, W], got shape {list(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size]
        return
    if not (hasattr(images, "__len__") and hasattr(images, "__getitem__")):
        raise ValueError(f"images must be a tensor, a numpy array or a Dataset, got {type(images).__name__}")
    for start in range(0, len(images), batch_size):
        items = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        yield torch.stack([torch.as_tensor(it) for it in items])


def extract_features(extractor: Callable, images: Images, *, value_range: ValueRange = None,
                     batch_size: int = 200, progress: bool = False) -> np.ndarray:
    """Features ``[N, D]`` (float64) of all ``images`` under ``extractor`` (see module doc)."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(images), disable=not progress, unit="img", desc=getattr(extractor, "name", "")) as bar:
        for batch in iter_batches(images, batch_size):
            out.append(torch.as_tensor(extractor(batch, value_range)).double().cpu().numpy())
            bar.update(batch.shape[0])
    if not out:
        raise ValueError("no images given")
    return np.concatenate(out)


def summarize(values: Sequence[float]) -> dict:
    """``min``, ``mean`` and population ``std`` of per-block distances."""
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "mean": float(v.mean()), "std": float(v.std()), "values": v.tolist()}
