"""MLP generator and discriminator for low-dimensional (e.g. 2-D toy) data."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _mlp(d_in: int, d_out: int, hidden: int, depth: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    if depth < 1 or hidden < 1:
        raise ValueError(f"depth and hidden must be >= 1, got depth={depth}, hidden={hidden}")
    dims = [d_in] + [hidden] * depth
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(dims[-1], d_out))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """``z [N, latent_dim]`` -> ``x [N, data_dim]``; ``depth`` hidden layers of width ``hidden`` (ReLU)."""

    def __init__(self, latent_dim: int = 2, data_dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.config = dict(latent_dim=latent_dim, data_dim=data_dim, hidden=hidden, depth=depth)
        self.latent_shape = (latent_dim,)
        self.net = _mlp(latent_dim, data_dim, hidden, depth, nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``x [N, data_dim]`` -> logit ``d(x)`` ``[N]``; ``depth`` hidden layers (LeakyReLU 0.2)."""

    def __init__(self, data_dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.config = dict(data_dim=data_dim, hidden=hidden, depth=depth)
        self.net = _mlp(data_dim, 1, hidden, depth, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0])

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x) = sigmoid(d(x))`` ``[N]``."""
        return torch.sigmoid(self(x))
