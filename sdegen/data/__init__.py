"""Image data: readers for each format (``images``), per-image transforms (``transforms``).

``get_dataset(name, root, ...)`` is the one entry point; ``DATASETS`` lists the names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from sdegen.data.images import (CIFAR10_URL, MNIST_URL, SPLITS, DataError, DataNotFoundError, ImageDataset,
                                load_cifar10, load_digits, load_folder, load_mnist, read_cifar_batch,
                                read_idx)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set: its reader and the shape of its images."""
    load: Callable[..., ImageDataset]  # (root, split, *, download, **options) -> ImageDataset
    channels: int  # 3 for folder unless grayscale
    size: int | None  # native side length; None when the files decide
    about: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(load_digits, 1, 8, "scikit-learn's 8x8 digits, built in (1500 train / 297 test)"),
    "mnist": DatasetInfo(load_mnist, 1, 28, f"MNIST IDX files, {MNIST_URL}"),
    "cifar10": DatasetInfo(load_cifar10, 3, 32, f"CIFAR-10 python batches, {CIFAR10_URL}"),
    "folder": DatasetInfo(load_folder, 3, None, "every PNG/JPEG under a folder"),
}


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(DATASETS)}")
    return DATASETS[name]


def get_dataset(name: str, root: str | os.PathLike | None = None, *, split: str = "train",
                image_size: int | None = None, centered: bool = False, flip: bool = False,
                dequantize: bool = False, download: bool = False, grayscale: bool = False,
                generator: torch.Generator | None = None) -> ImageDataset:
    """The data set ``name`` (a key of ``DATASETS``) as float images ``[C, H, W]``.

    Args:
        root: data folder (or archive for cifar10); unused by ``digits``.
        split: ``"train"`` or ``"test"``.
        image_size: side length to resize to (None: native size).
        centered: values in [-1, 1] instead of [0, 1].
        flip: random horizontal flips.
        dequantize: uniform dequantization ``(255 x + u) / 256`` for 8-bit data.
        download: allow fetching MNIST / CIFAR-10 into ``root`` when missing; never otherwise.
        grayscale: read ``folder`` images as one channel.
        generator: source of the random draws (see :class:`ImageDataset`).

    Raises ``DataNotFoundError``/``DataError`` naming the expected files when the data is missing or
    malformed, ``ValueError`` for an unknown name or option.
    """
    info = _info(name)
    extra = {}
    if grayscale:
        if name != "folder":
            raise ValueError(f"grayscale applies to the folder data set only, not {name!r}")
        extra["grayscale"] = True
    return info.load(root, split, download=download, image_size=image_size, centered=centered, flip=flip,
                     dequantize=dequantize, generator=generator, **extra)


def data_shape(name: str, image_size: int | None = None, *, grayscale: bool = False) -> tuple[int, int]:
    """``(channels, side length)`` of the images ``get_dataset(name, image_size=...)`` returns."""
    info = _info(name)
    size = image_size or info.size
    if size is None:
        raise ValueError(f"{name} images have no fixed size; pass image_size")
    return (1 if grayscale else info.channels), size


__all__ = ["DATASETS", "DatasetInfo", "DataError", "DataNotFoundError", "ImageDataset", "SPLITS",
           "data_shape", "get_dataset", "load_cifar10", "load_digits", "load_folder", "load_mnist",
           "read_cifar_batch", "read_idx"]
