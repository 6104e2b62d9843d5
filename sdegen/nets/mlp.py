"""A small residual MLP score network for 2-D and other low-dimensional data."""
from __future__ import annotations

import torch
from torch import nn

from .layers import (GaussianFourierProjection, add_class_embedding, class_embedding, get_activation,
                     positional_embedding)

EMBEDDINGS = ("positional", "fourier")


class MLPScoreNet(nn.Module):
    """``net(x, labels)``: ``x`` ``[N, dim]``, ``labels`` ``[N]`` (or a scalar) -> ``[N, dim]``.

    The label (a time such as ``999 t``, or a noise level) is embedded (``positional``: sinusoidal, for
    labels up to ~1000; ``fourier``: Gaussian Fourier features, for labels of order 1 such as ``log sigma``),
    mapped by a two-layer MLP to ``hidden`` features and added inside each of ``layers`` residual blocks
    ``h <- h + W act(h + P temb)``. With ``num_classes > 0`` it is class-conditional: a learned embedding
    of the class label ``y`` (or of the null label) is added to ``temb``."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3, embed_dim: int = 128,
                 embedding: str = "positional", fourier_scale: float = 16.0, nonlinearity: str = "swish",
                 num_classes: int = 0):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
        if dim < 1 or hidden < 1 or layers < 1 or embed_dim < 2 or embed_dim % 2:
            raise ValueError("dim, hidden and layers must be >= 1 and embed_dim an even number >= 2; got "
                             f"dim={dim}, hidden={hidden}, layers={layers}, embed_dim={embed_dim}")
        self.dim, self.embedding, self.embed_dim = dim, embedding, embed_dim
        self.act = get_activation(nonlinearity)
        if embedding == "fourier":
            self.fourier = GaussianFourierProjection(embed_dim // 2, fourier_scale)
        self.temb = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.num_classes = num_classes
        self.class_embed = class_embedding(num_classes, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.cond = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """``y``: class labels ``[N]`` (or one int; None or :data:`~sdegen.nets.layers.NULL_LABEL`: no class)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape [N, {self.dim}], got {list(x.shape)}")
        labels = torch.as_tensor(labels, device=x.device, dtype=x.dtype)
        if labels.dim() == 0:
            labels = labels.expand(x.shape[0])
        if labels.shape != (x.shape[0],):
            raise ValueError(f"expected labels of shape [{x.shape[0]}] or a scalar, got {list(labels.shape)}")
        if self.embedding == "fourier":
            emb = self.fourier(labels)
        else:
            emb = positional_embedding(labels, self.embed_dim).to(x.dtype)
        temb = add_class_embedding(self.temb(emb), self.class_embed, y)
        h = self.inp(x)
        for cond, lin in zip(self.cond, self.blocks):
            h = h + lin(self.act(h + cond(temb)))
        return self.out(self.act(h))
