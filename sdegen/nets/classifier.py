"""Noise-conditional (time-dependent) classifiers ``net(x, labels) -> logits [N, num_classes]``, for
classifier guidance (Song et al. 2021, eq. 14 and App. I.1; Dhariwal & Nichol 2021).

Like the score networks they take the noise level as ``labels`` (``999 t`` with a positional embedding, or
``sigma`` with a Fourier one), and are trained with the ``classifier`` loss of :mod:`sdegen.losses`
(cross-entropy on ``x_t ~ p_0t(. | x_0)``).

- :class:`EncoderClassifier`: the down path of DDPM++ (BigGAN ResNet blocks with the time embedding,
  self-attention where asked), a middle block, global average pooling and a linear head, as the
  classifier of Dhariwal & Nichol 2021 is the encoder half of their U-Net;
- :class:`MLPClassifier`: the residual MLP of :class:`~sdegen.nets.mlp.MLPScoreNet` with a ``num_classes``
  head, for low-dimensional data.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

from . import layers
from .layers import AttnBlock, ResnetBlock, conv2d, group_norm
from .mlp import MLPScoreNet

EMBEDDINGS = ("positional", "fourier")


class EncoderClassifier(nn.Module):
    """``net(x, labels)``: images ``[N, C, S, S]`` and noise labels ``[N]`` (or a scalar) -> logits
    ``[N, num_classes]``.

    Options: ``nf`` base channels; ``ch_mult`` channel multiplier per resolution (a resolution halving
    between levels); ``num_res_blocks`` per resolution; ``attn_resolutions`` where to add self-attention;
    ``embedding_type`` ``positional`` (labels ``999 t``) or ``fourier`` (labels ``sigma``, embeds
    ``log sigma``); ``centered`` False: inputs in [0, 1] are mapped to [-1, 1] first."""

    def __init__(self, image_size: int, num_channels: int = 1, num_classes: int = 10, *, nf: int = 32,
                 ch_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (),
                 dropout: float = 0.0, embedding_type: str = "positional", fourier_scale: float = 16.0,
                 nonlinearity: str = "swish", skip_rescale: bool = True, centered: bool = True):
        super().__init__()
        if embedding_type not in EMBEDDINGS:
            raise ValueError(f"embedding_type must be one of {list(EMBEDDINGS)}, got {embedding_type!r}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        levels = len(ch_mult)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2^(len(ch_mult) - 1) = "
                             f"{2 ** (levels - 1)}")
        self.image_size, self.num_channels, self.num_classes = image_size, num_channels, num_classes
        self.nf, self.embedding_type, self.centered = nf, embedding_type, centered
        self.act = layers.get_activation(nonlinearity)
        temb_dim = 4 * nf
        if embedding_type == "fourier":
            self.fourier = layers.GaussianFourierProjection(nf, fourier_scale)
        self.temb = nn.ModuleList([layers.dense(2 * nf if embedding_type == "fourier" else nf, temb_dim),
                                   layers.dense(temb_dim, temb_dim)])
        block = functools.partial(ResnetBlock, self.act, temb_dim=temb_dim, style="biggan", dropout=dropout,
                                  skip_rescale=skip_rescale, init_scale=0.0)
        self.inp = conv2d(num_channels, nf)
        blocks: list[nn.Module] = []
        ch, size = nf, image_size
        for level in range(levels):
            for _ in range(num_res_blocks):
                blocks.append(block(ch, nf * ch_mult[level]))
                ch = nf * ch_mult[level]
                if size in attn_resolutions:
                    blocks.append(AttnBlock(ch, skip_rescale=skip_rescale))
            if level < levels - 1:
                blocks.append(block(ch, down=True))
                size //= 2
        blocks += [block(ch), AttnBlock(ch, skip_rescale=skip_rescale), block(ch)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = group_norm(ch)
        self.head = layers.dense(ch, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = layers.check_image_input(x, labels, self.num_channels, self.image_size)
        if self.embedding_type == "fourier":
            emb = self.fourier(torch.log(labels.to(x.dtype)))
        else:
            emb = layers.positional_embedding(labels, self.nf).to(x.dtype)
        temb = self.temb[1](self.act(self.temb[0](emb)))
        h = self.inp(x if self.centered else 2 * x - 1)
        for blk in self.blocks:
            h = blk(h, temb) if isinstance(blk, ResnetBlock) else blk(h)
        h = self.act(self.norm(h)).mean(dim=(2, 3))   # global average pooling
        return self.head(h)


class MLPClassifier(MLPScoreNet):
    """``net(x, labels)``: points ``[N, dim]`` and noise labels ``[N]`` -> logits ``[N, num_classes]``; the
    residual MLP of :class:`~sdegen.nets.mlp.MLPScoreNet` with a ``num_classes``-way linear head."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, layers: int = 3, embed_dim: int = 64,
                 embedding: str = "positional", fourier_scale: float = 16.0, nonlinearity: str = "swish"):
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        super().__init__(dim, hidden, layers, embed_dim, embedding, fourier_scale, nonlinearity)
        self.num_classes = num_classes
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return super().forward(x, labels)
