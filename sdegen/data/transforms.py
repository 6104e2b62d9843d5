"""Per-image transforms on float tensors ``[..., C, H, W]``.

Random transforms take an explicit ``torch.Generator``; none touches global state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer pixel codes ``0 .. levels-1`` -> float32 in [0, 1] (``code / (levels - 1)``)."""
    return codes.to(torch.float32) / (levels - 1)


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of quantized data ``x`` in [0, 1].

    ``x`` holds codes ``k / (levels - 1)``; the result is ``(k + u) / levels`` with ``u ~ U[0, 1)``,
    which lies in the code's bin ``[k / levels, (k + 1) / levels)``. For 8-bit data this is
    ``(x * 255 + u) / 256``.
    """
    # Uniform dequantization (Theis et al. 2016, "A note on the evaluation of generative models"),
    # as used for bits/dim by Song et al. 2021 (score SDE): x = (255 x + u) / 256.
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return (k + u) / levels


def center(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (``2 x - 1``)."""
    return 2.0 * x - 1.0


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[C, H, W]`` (or ``[N, C, H, W]``) to ``size x size``.

    Antialiased when shrinking; values stay within the input's range.
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    batch = x if x.dim() == 4 else x.unsqueeze(0)
    out = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out if x.dim() == 4 else out.squeeze(0)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror ``x`` left-right (last axis) with probability ``p``; one draw from ``generator``."""
    flip = bool(torch.rand((), generator=generator) < p)
    return x.flip(-1) if flip else x
