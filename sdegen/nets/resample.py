"""Up- and down-sampling of image batches ``[N, C, H, W]`` with FIR filters and plain pooling.

The FIR resampling of StyleGAN2 (Karras et al. 2020, App. B; the ``upfirdn2d`` operation) as used by
NCSN++ (Song et al. 2021, App. H), written with plain torch convolutions: no compiled extension.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def fir_filter(k: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """The separable 2-D filter ``outer(k, k) / sum``, on the device and dtype of ``like``."""
    k1 = torch.as_tensor(k, dtype=torch.float64)
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).to(device=like.device, dtype=like.dtype)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the 2-D filter ``f``, keep every ``down``-th pixel.

    ``pad = (before, after)`` applies to both axes; negative values crop. Output size per axis:
    ``(H * up + before + after - len(f)) // down + 1``."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    x = x.reshape(n * c, 1, x.shape[2], x.shape[3])
    kernel = torch.flip(f, (0, 1))[None, None]  # a true convolution, not a correlation
    x = F.conv2d(x, kernel, stride=down)
    return x.reshape(n, c, x.shape[2], x.shape[3])


def upsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR upsampling ``[N, C, H, W] -> [N, C, fH, fW]``; a constant image stays constant."""
    f = fir_filter(k, x) * factor**2
    p = f.shape[0] - factor
    return upfirdn2d(x, f, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR downsampling ``[N, C, H, W] -> [N, C, H/f, W/f]``; a constant image stays constant."""
    f = fir_filter(k, x)
    p = f.shape[0] - factor
    return upfirdn2d(x, f, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling (each pixel repeated ``factor x factor`` times)."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Mean over ``factor x factor`` blocks."""
    return F.avg_pool2d(x, factor)

