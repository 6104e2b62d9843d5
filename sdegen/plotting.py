"""Pictures: scatter plots of 2-D samples over a density, and image grids."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def scatter_2d(samples: torch.Tensor, path: str | Path, *, log_density: Optional[Callable] = None,
               reference: Optional[torch.Tensor] = None, title: str = "", lim: Optional[float] = None) -> Path:
    """Save a scatter plot of ``samples`` ``[n, 2]`` over ``log_density`` (a ``[m, 2] -> [m]`` callable,
    drawn as a heat map) or beside ``reference`` samples."""
    plt = _pyplot()
    x = samples.detach().cpu().float()
    if lim is None:
        pts = x if reference is None else torch.cat([x, reference.detach().cpu().float()])
        lim = float(pts.abs().quantile(0.995)) * 1.15 + 0.1
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    if log_density is not None:
        g = torch.linspace(-lim, lim, 300, dtype=torch.float64)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        lp = log_density(torch.stack([gx.flatten(), gy.flatten()], 1)).reshape(300, 300)
        ax.imshow(lp.clamp_min(lp.max() - 12).numpy(), extent=(-lim, lim, -lim, lim), origin="lower",
                  cmap="Blues", alpha=0.9)
    if reference is not None:
        r = reference.detach().cpu().float()
        ax.scatter(r[:, 0], r[:, 1], s=1, c="tab:blue", alpha=0.3, label="data")
    ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:red", alpha=0.5, label="samples")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=6, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def to_uint8_images(images: torch.Tensor, value_range=(-1.0, 1.0)) -> torch.Tensor:
    """Images ``[N, C, H, W]`` with values in ``value_range`` -> uint8 ``[N, H, W, C]`` on the CPU
    (``round((x - lo) / (hi - lo) * 255)``, clipped): the layout of saved sample files."""
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def image_grid(images: torch.Tensor, path: str | Path, *, value_range=(0.0, 1.0), nrow: Optional[int] = None,
               upscale: int = 1, min_size: int = 0) -> Path:
    """The one image-grid writer: save images as one PNG grid (2-pixel white gaps).

    ``images``: floats ``[n, C, H, W]`` with values in ``value_range``, or uint8 ``[n, H, W, C]``.
    ``nrow``: images per row (default ``ceil(sqrt(n))``); each image is enlarged ``upscale`` times
    (nearest neighbour), or more so that it is at least ``min_size`` pixels high."""
    from torchvision.utils import save_image
    if images.dtype == torch.uint8:
        x = images.detach().cpu().permute(0, 3, 1, 2).float() / 255
    else:
        lo, hi = value_range
        x = ((images.detach().cpu().float() - lo) / (hi - lo)).clamp(0, 1)
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"image_grid needs a non-empty batch of images [n, C, H, W], got {tuple(images.shape)}")
    upscale = max(upscale, -(-min_size // x.shape[-2]))
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0)
    return path


def save_samples(x: torch.Tensor, path: str | Path, *, value_range=(-1.0, 1.0),
                 reference: Optional[torch.Tensor] = None, title: str = "", max_images: int = 100,
                 min_size: int = 32, nrow: Optional[int] = None) -> Path:
    """A picture of samples: a scatter plot of points ``[n, 2]`` (over ``reference`` points) or a grid of
    the first ``max_images`` images (floats ``[n, C, H, W]`` in ``value_range`` or uint8 ``[n, H, W, C]``),
    each enlarged to at least ``min_size`` pixels, ``nrow`` per row. Returns ``path``."""
    if x.dim() == 2:
        return scatter_2d(x, path, reference=reference, title=title)
    return image_grid(x[:max_images], path, value_range=value_range, min_size=min_size, nrow=nrow)
