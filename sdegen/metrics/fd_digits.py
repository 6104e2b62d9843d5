"""FD-digits: Frechet distance in the feature space of a small CNN trained on 8x8 digits.

FID's Inception-v3 is meaningless on 8x8 images, so models of scikit-learn's digits (1797 images,
8x8, 17 gray levels, 10 classes) are measured with :class:`DigitsCNN`, trained by
``scripts/train_fd_digits.py`` and shipped as ``sdegen/assets/fd_digits.safetensors``. The features
are its 64-d penultimate layer (``fc1``, before its ReLU: no dead units). Images are floats in [0, 1]
by default (``value_range`` says otherwise); images of another size (MNIST's 28x28, say) are
area-resampled to 8x8 first (bilinear when smaller); RGB is averaged to gray. MNIST digits differ in
style from these digits, so their distances are comparable with each other only.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .frechet import FeatureStats, Images, ValueRange, extract_features, fid_from_stats, sha256_file, \
    to_unit_interval

WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "assets" / "fd_digits.safetensors"
EXTRACTOR_NAME = "fd-digits-cnn"
SPLIT_SEED = 0  # the fixed train / held-out split of the 1797 digits
N_HELD_OUT = 360


class DigitsCNN(nn.Module):
    """Classifier of ``[B, 1, 8, 8]`` digits in [0, 1]; :meth:`features` gives ``[B, 64]``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.dropout = nn.Dropout(0.3)  # active in training only

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # [B, 32, 4, 4]
        return self.fc1(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 10]``."""
        return self.fc2(self.dropout(F.relu(self.features(x))))


def load_digits_split(split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as images ``[N, 1, 8, 8]`` (float32 in [0, 1]) and labels ``[N]``.

    ``split``: ``all`` (1797), ``train`` (1437) or ``test`` (360 held out from training the CNN)."""
    from sklearn.datasets import load_digits

    if split not in ("all", "train", "test"):
        raise ValueError(f"unknown digits split {split!r}; accepted: all, train, test")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # gray levels 0..16 -> [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    if split == "all":
        return x, y
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    idx = np.sort(perm[:N_HELD_OUT] if split == "test" else perm[N_HELD_OUT:])
    return x[idx], y[idx]


def to_digit_input(batch: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """``[B, 1 or 3, H, W]`` images in ``value_range`` -> float32 ``[B, 1, 8, 8]`` in [0, 1]."""
    if batch.dim() != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got shape {list(batch.shape)}")
    x = to_unit_interval(batch, value_range).float().mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        if x.shape[-2] < 8 or x.shape[-1] < 8:
            x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=(8, 8), mode="area")
    return x


@functools.lru_cache(maxsize=1)
def _load_network(path: str) -> tuple[DigitsCNN, str]:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"FD-digits weights missing at {path}; run scripts/train_fd_digits.py")
    net = DigitsCNN()
    net.load_state_dict(load_file(path))
    return net.eval().requires_grad_(False), sha256_file(path)


class DigitsFeatures:
    """Feature extractor (see :mod:`sdegen.metrics.frechet`) giving ``[B, 64]``; runs on CPU."""

    name = EXTRACTOR_NAME

    def __init__(self, weights_path: str | Path = WEIGHTS_PATH):
        self.net, self.weights_sha256 = _load_network(str(weights_path))

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
        return self.net.features(to_digit_input(batch.cpu(), value_range)).double()


def digits_stats(images: Images, *, value_range: ValueRange = (0.0, 1.0), batch_size: int = 500) -> FeatureStats:
    """FD-digits statistics of ``images`` (``[N, C, H, W]`` tensor / array or Dataset)."""
    net = DigitsFeatures()
    feats = extract_features(net, images, value_range=value_range, batch_size=batch_size)
    return FeatureStats.from_features(feats, net.name, net.weights_sha256)


def fd_digits(samples: Images, reference: Images | FeatureStats | None = None, *,
              value_range: ValueRange = (0.0, 1.0)) -> float:
    """FD-digits of ``samples`` ``[N, 1, 8, 8]`` in ``value_range`` (default [0, 1]; pass ``(-1, 1)``
    for centred data, None for uint8) against ``reference``: the 1797 real digits when None, else
    statistics or images (in the same ``value_range``)."""
    if reference is None:
        ref = digits_stats(load_digits_split("all")[0])
    elif isinstance(reference, FeatureStats):
        ref = reference
    else:
        ref = digits_stats(reference, value_range=value_range)
    return fid_from_stats(digits_stats(samples, value_range=value_range), ref)
