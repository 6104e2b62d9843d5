"""Pictures: scatter plots of 2-D samples over a density, and image grids."""
from __future__ import annotations

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


def image_grid(images: torch.Tensor, path: str | Path, *, value_range=(0.0, 1.0), nrow: Optional[int] = None,
               upscale: int = 1) -> Path:
    """Save images ``[n, C, H, W]`` with values in ``value_range`` as one PNG grid."""
    from torchvision.utils import save_image
    x = images.detach().cpu().float()
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=nrow or max(1, int(len(x) ** 0.5)), padding=2, pad_value=1.0)
    return path
