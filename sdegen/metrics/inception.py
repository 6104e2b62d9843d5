"""FID, KID and Inception Score with the standard Inception-v3 (TF 2015 weights, torch-fidelity's port).

The network is torch-fidelity's ``FeatureExtractorInceptionV3``: it takes uint8 images
``[N, 3, H, W]`` of any size and resizes them to 299x299 itself, as TensorFlow 1.x did. Images are
quantised to uint8 here as when they are saved as PNG: ``floor(255 u + 1/2)`` for ``u`` in [0, 1]
(EDM's ``x * 127.5 + 128`` for [-1, 1]); grayscale is repeated to 3 channels.

Weights (``weights-inception-2015-12-05-6726825d.pth``) are found in this order: an explicit path,
the ``SDEGEN_INCEPTION_WEIGHTS`` environment variable, torch hub's cache (where torch-fidelity
keeps its download), a download from torch-fidelity's GitHub release when the network allows.
FID from fewer than 50000 samples is biased upwards (Chong & Forsyth 2020): a warning says so.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import safe_load
from .frechet import (FeatureStats, Images, ValueRange, check_value_range, extract_features, fid_from_stats,
                      load_stats, sha256_file, to_unit_interval)
from .suite import inception_score_from_logits

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILENAME
INCEPTION_ENV = "SDEGEN_INCEPTION_WEIGHTS"
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registry name for this network
FID_UNBIASED_COUNT = 50_000  # the customary sample count for FID (Heusel et al. 2017)


def _missing_weights_message(where: str) -> str:
    return (f"Inception-v3 weights not found {where}. FID needs torch-fidelity's {INCEPTION_FILENAME}, "
            f"published at {INCEPTION_URL} (torch-fidelity's GitHub releases); download it and pass "
            f"--inception-weights PATH or set {INCEPTION_ENV}=PATH")


def resolve_inception_weights(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of the Inception-v3 weights file (see module doc for the search order).

    Raises FileNotFoundError naming the file and where it is published when none is found."""
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(_missing_weights_message(f"at {p}"))
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME
    if cached.is_file():
        return cached
    if not download:
        raise FileNotFoundError(_missing_weights_message(f"(looked in {cached.parent}; downloading is off)"))
    try:
        _download(INCEPTION_URL, cached)
    except Exception as e:  # no network, proxy, HTTP error: all mean the same to the user
        raise FileNotFoundError(_missing_weights_message(f"in {cached.parent} and the download failed ({e})"))
    return cached


def _download(url: str, dest: Path, timeout_s: float = 60.0) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file; a stalled connection fails after ``timeout_s``."""
    import shutil
    import urllib.request

    from ..checkpoint import atomic_write

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        atomic_write(dest, lambda f: shutil.copyfileobj(response, f))


@functools.lru_cache(maxsize=2)
def _load_network(path: str, mtime_ns: int, size: int, layer: str, device: str):
    """torch-fidelity's Inception-v3 on ``device`` and the weights' sha256 (cached per file version)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # refuse pickled code before torch-fidelity loads the file (it does so with weights_only=False)
    state = safe_load(path, what="Inception weights")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    del state
    try:
        net = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [layer], feature_extractor_weights_path=path)
    except RuntimeError as e:
        raise ValueError(f"{path} does not hold Inception-v3 weights for torch-fidelity: {e}") from e
    return net.to(device), sha256_file(path)


def quantize_uint8(batch: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """``[B, 1 or 3, H, W]`` images in ``value_range`` -> uint8 ``[B, 3, H, W]``, rounded to nearest."""
    if batch.dim() != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got shape {list(batch.shape)}")
    if batch.dtype != torch.uint8:
        batch = (to_unit_interval(batch, value_range) * 255.0 + 0.5).floor().to(torch.uint8)
    else:
        check_value_range(batch.dtype, value_range)
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


class InceptionV3:
    """Feature extractor (see :mod:`sdegen.metrics.frechet`): ``[B, 2048]`` pool features, or the
    1008 unbiased logits used by the Inception Score when ``layer="logits_unbiased"``."""

    def __init__(self, weights_path: str | os.PathLike | None = None, *, device=None, layer: str = "2048",
                 download: bool = True):
        if layer not in ("2048", "logits_unbiased"):
            raise ValueError(f"unknown Inception layer {layer!r}; accepted: 2048, logits_unbiased")
        path = resolve_inception_weights(weights_path, download=download)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        st = path.stat()
        self.net, self.weights_sha256 = _load_network(str(path.resolve()), st.st_mtime_ns, st.st_size,
                                                      layer, str(self.device))
        self.name = EXTRACTOR_NAME if layer == "2048" else f"{EXTRACTOR_NAME}/{layer}"

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
        (features,) = self.net(quantize_uint8(batch, value_range).to(self.device))
        return features.double().cpu()


def warn_if_few(count: int) -> None:
    if count < FID_UNBIASED_COUNT:
        warnings.warn(f"FID from {count} < {FID_UNBIASED_COUNT} samples is biased upwards; "
                      "compare only FIDs made with the same sample count", stacklevel=3)


def inception_features(images: Images, *, value_range: ValueRange = None, weights_path=None,
                       batch_size: int = 200, device=None, progress: bool = False) -> np.ndarray:
    """Inception-v3 pool features ``[N, 2048]`` (float64) of ``images``.

    ``images``: ``[N, C, H, W]`` (C = 1 or 3, any H, W) tensor or array, or a Dataset of ``[C, H, W]``
    items. ``value_range``: ``(0, 1)`` or ``(-1, 1)`` (any ``(lo, hi)``) for floats; None for uint8."""
    net = InceptionV3(weights_path, device=device)
    return extract_features(net, images, value_range=value_range, batch_size=batch_size, progress=progress)


def compute_stats(images: Images, *, value_range: ValueRange = None, weights_path=None, batch_size: int = 200,
                  device=None, progress: bool = False) -> FeatureStats:
    """FID statistics of ``images`` (arguments as in :func:`inception_features`)."""
    net = InceptionV3(weights_path, device=device)
    feats = extract_features(net, images, value_range=value_range, batch_size=batch_size, progress=progress)
    warn_if_few(len(feats))
    return FeatureStats.from_features(feats, net.name, net.weights_sha256)


def fid(images: Images, ref: FeatureStats | str | os.PathLike, **kwargs) -> float:
    """FID of ``images`` against reference statistics (or a statistics file); kwargs as in
    :func:`compute_stats`."""
    ref_stats = ref if isinstance(ref, FeatureStats) else load_stats(ref)
    return fid_from_stats(compute_stats(images, **kwargs), ref_stats)


def inception_score(images: Images, *, value_range: ValueRange = None, weights_path=None, splits: int = 10,
                    batch_size: int = 200, device=None, seed: int = 2020) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) as mean and std over ``splits``, by torch-fidelity's
    ``isc_features_to_metric`` on the unbiased logits (samples shuffled with ``seed`` as it does)."""
    net = InceptionV3(weights_path, device=device, layer="logits_unbiased")
    logits = extract_features(net, images, value_range=value_range, batch_size=batch_size)
    return inception_score_from_logits(logits, splits=splits, seed=seed)


def save_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised (He-normal, seeded) state dict of torch-fidelity's Inception-v3 to
    ``path``. For checking a pipeline without the real weights only: its distances mean nothing."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Fresh(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the fresh initialisation
            return None

    path = Path(path)
    torch.save({}, path)  # torch-fidelity's constructor loads a file; give it an empty one
    net = _Fresh(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(path))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)  # He et al. 2015
                if m.bias is not None:
                    m.bias.zero_()
    torch.save(net.state_dict(), path)
    return path
