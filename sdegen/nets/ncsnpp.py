"""NCSN++ and DDPM++: the U-Net score networks of Song et al. 2021 (App. H).

DDPM++ is this network with a positional time embedding, no FIR and no progressive growing (as in the
official configs). All layers live, in the order the forward pass uses them, in one ``ModuleList``
``all_modules``, as in the official code: its checkpoints load without renaming, and ``forward`` walks the
list with an iterator, mirroring ``__init__`` section by section.
"""
from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence

import torch
from torch import nn

from . import layers
from .layers import AttnBlock, Combine, Downsample, ResnetBlock, Upsample, conv2d, group_norm

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDINGS = ("fourier", "positional")


def _check(name: str, value: str, allowed: Sequence[str]) -> str:
    value = str(value).lower()
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


class NCSNpp(nn.Module):
    """U-Net score network ``net(x, labels)``: ``x`` ``[N, C, S, S]`` and ``labels`` ``[N]`` -> ``[N, C, S, S]``.

    ``labels`` is what the network is conditioned on: the noise level ``sigma`` for the Fourier embedding
    (it embeds ``log sigma``), or a time such as ``999 t`` for the positional embedding.

    Options (official names): ``nf`` base channels; ``ch_mult`` channel multiplier per resolution;
    ``num_res_blocks`` per resolution; ``attn_resolutions`` where to add self-attention; ``resblock_type``
    ``ddpm``/``biggan`` (BigGAN blocks also do the resampling); ``fir``/``fir_kernel`` FIR resampling;
    ``skip_rescale`` divide residual sums by sqrt 2; ``progressive`` (output side) ``none``/``output_skip``/
    ``residual``; ``progressive_input`` ``none``/``input_skip``/``residual``; ``progressive_combine``
    ``sum``/``cat``; ``embedding_type`` ``fourier``/``positional``; ``scale_by_sigma`` divide the output by
    sigma (the label for Fourier, ``sigmas[label]`` for positional); ``conditional`` use the time embedding;
    ``init_scale`` scale of the last layer of each block (0 -> almost zero); ``centered`` False means inputs
    are in [0, 1] and are mapped to [-1, 1] first; ``sigma_min``/``sigma_max``/``num_scales`` fill the
    ``sigmas`` buffer (geometric, largest first) kept for checkpoint compatibility; ``num_classes > 0``
    makes it class-conditional: ``net(x, labels, y)`` adds a learned embedding of the class label ``y``
    (or of the null label) to the time embedding (Dhariwal & Nichol 2021), outside ``all_modules``.
    """

    def __init__(self, image_size: int, num_channels: int = 3, *, nf: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resblock_type: str = "biggan",
                 fir: bool = True, fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 progressive: str = "none", progressive_input: str = "residual",
                 progressive_combine: str = "sum", embedding_type: str = "fourier",
                 fourier_scale: float = 16.0, scale_by_sigma: bool = True, conditional: bool = True,
                 init_scale: float = 0.0, resamp_with_conv: bool = True, nonlinearity: str = "swish",
                 centered: bool = True, sigma_min: float = 0.01, sigma_max: float = 50.0,
                 num_scales: int = 1000, num_classes: int = 0):
        super().__init__()
        if num_classes and not conditional:
            raise ValueError("a class-conditional network (num_classes > 0) needs conditional=True")
        self.resblock_type = _check("resblock_type", resblock_type, RESBLOCK_TYPES)
        self.progressive = _check("progressive", progressive, PROGRESSIVE)
        self.progressive_input = _check("progressive_input", progressive_input, PROGRESSIVE_INPUT)
        self.embedding_type = _check("embedding_type", embedding_type, EMBEDDINGS)
        combine = _check("progressive_combine", progressive_combine, ("sum", "cat"))
        levels = len(ch_mult)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2^(len(ch_mult) - 1) = "
                             f"{2 ** (levels - 1)}")
        self.image_size, self.num_channels, self.nf = image_size, num_channels, nf
        self.ch_mult, self.num_res_blocks = tuple(ch_mult), num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.conditional, self.scale_by_sigma = conditional, scale_by_sigma
        self.skip_rescale, self.centered = skip_rescale, centered
        self.act = layers.get_activation(nonlinearity)
        self.register_buffer("sigmas", torch.exp(torch.linspace(
            math.log(sigma_max), math.log(sigma_min), num_scales)))

        temb_dim = 4 * nf
        block = functools.partial(ResnetBlock, self.act, temb_dim=temb_dim, style=self.resblock_type,
                                  dropout=dropout, fir=fir, fir_kernel=fir_kernel,
                                  skip_rescale=skip_rescale, init_scale=init_scale)
        attn = functools.partial(AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        biggan = self.resblock_type == "biggan"
        mods: list[nn.Module] = []

        # Noise-level embedding, then a two-layer MLP to temb_dim.
        if self.embedding_type == "fourier":
            mods.append(layers.GaussianFourierProjection(nf, fourier_scale))
        if conditional:
            mods += [layers.dense(2 * nf if self.embedding_type == "fourier" else nf, temb_dim),
                     layers.dense(temb_dim, temb_dim)]

        # Down path. `skips` holds the channel counts of the features kept for the up path.
        mods.append(conv2d(num_channels, nf))
        ch, skips, in_pyramid_ch = nf, [nf], num_channels
        for level in range(levels):
            for _ in range(num_res_blocks):
                mods.append(block(ch, nf * ch_mult[level]))
                ch = nf * ch_mult[level]
                if self._resolution(level) in self.attn_resolutions:
                    mods.append(attn(ch))
                skips.append(ch)
            if level < levels - 1:
                mods.append(block(ch, down=True) if biggan
                            else Downsample(ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
                if self.progressive_input == "input_skip":
                    mods += [Downsample(in_pyramid_ch, fir=fir, fir_kernel=fir_kernel),
                             Combine(in_pyramid_ch, ch, method=combine)]
                    ch = 2 * ch if combine == "cat" else ch
                elif self.progressive_input == "residual":
                    mods.append(Downsample(in_pyramid_ch, ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    in_pyramid_ch = ch
                skips.append(ch)

        # Middle.
        mods += [block(ch), attn(ch), block(ch)]

        # Up path.
        out_pyramid_ch = 0
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                mods.append(block(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if self._resolution(level) in self.attn_resolutions:
                mods.append(attn(ch))
            if self.progressive != "none":
                if level == levels - 1:  # start the output pyramid
                    to_pyramid = num_channels if self.progressive == "output_skip" else ch
                    mods += [group_norm(ch), conv2d(ch, to_pyramid, init_scale=(
                        init_scale if self.progressive == "output_skip" else 1.0))]
                    out_pyramid_ch = to_pyramid
                elif self.progressive == "output_skip":
                    mods += [Upsample(out_pyramid_ch, fir=fir, fir_kernel=fir_kernel),
                             group_norm(ch), conv2d(ch, num_channels, init_scale=init_scale)]
                else:  # residual
                    mods.append(Upsample(out_pyramid_ch, ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    out_pyramid_ch = ch
            if level > 0:
                mods.append(block(ch, up=True) if biggan
                            else Upsample(ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
        assert not skips

        # Output head (with output_skip, the pyramid is the output).
        if self.progressive != "output_skip":
            mods += [group_norm(ch), conv2d(ch, num_channels, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(mods)
        self.num_classes = num_classes
        self.class_embed = layers.class_embedding(num_classes, temb_dim)

    def _resolution(self, level: int) -> int:
        return self.image_size // 2**level

    def _check_input(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return layers.check_image_input(x, labels, self.num_channels, self.image_size)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """``y``: class labels ``[N]`` (or one int; None or :data:`~sdegen.nets.layers.NULL_LABEL`: no class)."""
        labels = self._check_input(x, labels)
        mods: Iterator[nn.Module] = iter(self.all_modules)
        biggan = self.resblock_type == "biggan"

        # Noise-level embedding.
        if self.embedding_type == "fourier":
            labels = labels.to(x.dtype)
            temb = next(mods)(torch.log(labels))
        else:
            temb = layers.positional_embedding(labels, self.nf).to(x.dtype)
        if self.conditional:
            temb = next(mods)(temb)
            temb = layers.add_class_embedding(next(mods)(self.act(temb)), self.class_embed, y)
        else:
            temb = None

        if not self.centered:
            x = 2 * x - 1.0  # the network was trained on data in [0, 1]

        # Down path.
        in_pyramid = x
        h = next(mods)(x)
        hs = [h]
        for level in range(len(self.ch_mult)):
            for _ in range(self.num_res_blocks):
                h = next(mods)(h, temb)
                if self._resolution(level) in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level < len(self.ch_mult) - 1:
                h = next(mods)(h, temb) if biggan else next(mods)(h)
                if self.progressive_input == "input_skip":
                    in_pyramid = next(mods)(in_pyramid)
                    h = next(mods)(in_pyramid, h)
                elif self.progressive_input == "residual":
                    in_pyramid = layers.merge_residual(next(mods)(in_pyramid), h, self.skip_rescale)
                    h = in_pyramid
                hs.append(h)

        # Middle.
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        # Up path.
        out_pyramid = None
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if self._resolution(level) in self.attn_resolutions:
                h = next(mods)(h)
            if self.progressive != "none":
                if level == len(self.ch_mult) - 1:
                    norm, conv = next(mods), next(mods)
                    out_pyramid = conv(self.act(norm(h)))
                elif self.progressive == "output_skip":
                    up, norm, conv = next(mods), next(mods), next(mods)
                    out_pyramid = up(out_pyramid) + conv(self.act(norm(h)))
                else:  # residual
                    out_pyramid = layers.merge_residual(next(mods)(out_pyramid), h, self.skip_rescale)
                    h = out_pyramid
            if level > 0:
                h = next(mods)(h, temb) if biggan else next(mods)(h)

        # Output head.
        if self.progressive == "output_skip":
            h = out_pyramid
        else:
            norm, conv = next(mods), next(mods)
            h = conv(self.act(norm(h)))
        assert next(mods, None) is None, "forward did not use every module"

        if self.scale_by_sigma:
            # The network outputs sigma * score (Song et al. 2021, App. H: "rescale the output by 1/sigma").
            sigmas = labels if self.embedding_type == "fourier" else self.sigmas[labels.long()]
            h = h / sigmas.to(h.dtype).reshape(-1, 1, 1, 1)
        return h
