"""Building blocks of the score networks: embeddings, initialisation, convolutions, ResNet and attention blocks.

Attribute names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ``Conv2d_0``, ``W``, ``b``...) follow the
official score_sde code (Song et al. 2021) so that its checkpoints load without renaming. Image tensors are
``[N, C, H, W]``; time embeddings are ``[N, temb_dim]``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..score import NULL_LABEL   # the label "no class": a conditional network's unconditional output
from . import resample

Activation = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Activation] = {
    "swish": F.silu,
    "elu": F.elu,
    "relu": F.relu,
    "lrelu": functools.partial(F.leaky_relu, negative_slope=0.2),
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown nonlinearity {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


# --- initialisation ---------------------------------------------------------------------------------

def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """In place: uniform variance scaling, mode ``fan_avg`` (the DDPM initialisation, Ho et al. 2020).

    ``Var = scale / ((fan_in + fan_out) / 2)``, fans from dims 1 and 0 times the receptive field; a
    ``scale`` of 0 means 1e-10 (an almost-zero layer). Uses torch's default generator, like ``nn.Linear``."""
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:])
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    limit = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-limit, limit)


def conv2d(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
           init_scale: float = 1.0) -> nn.Conv2d:
    """Convolution with the DDPM initialisation and zero bias; 'same' padding by default."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride,
                     padding=kernel // 2 if padding is None else padding)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    """Linear layer with the DDPM initialisation and zero bias."""
    lin = nn.Linear(in_dim, out_dim)
    default_init_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def group_norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with ``min(ch // 4, 32)`` groups, as in NCSN++."""
    return nn.GroupNorm(min(ch // 4, 32), ch, eps=1e-6)


class NIN(nn.Module):
    """Per-pixel linear map over channels ("network in network"): ``W`` is ``[in, out]``, ``b`` is ``[out]``."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init_(torch.empty(in_dim, out_dim), init_scale))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,co->nohw", x, self.W) + self.b[None, :, None, None]


class FIRConv2d(nn.Module):
    """A ``k x k`` convolution fused with FIR up- or down-sampling by 2 (StyleGAN2, Karras et al. 2020).

    Up: :func:`resample.upsample_2d` then a 'same' convolution; down: a 'same' convolution then
    :func:`resample.downsample_2d`. Padding happens once, so results equal the separate operations away
    from the border only. Parameters ``weight`` ``[out, in, k, k]`` and ``bias`` ``[out]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, up: bool = False, down: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if up and down:
            raise ValueError("FIRConv2d resamples up or down, not both")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {kernel}")
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down, self.kernel, self.fir_kernel = up, down, kernel, tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, factor = self.weight, 2
        if self.up:
            # Strided transposed convolution with the flipped kernel, then the FIR filter (StyleGAN2).
            f = resample.fir_filter(self.fir_kernel, x) * factor**2
            p = (f.shape[0] - factor) - (self.kernel - 1)
            x = F.conv_transpose2d(x, torch.flip(w, (2, 3)).transpose(0, 1), stride=factor)
            x = resample.upfirdn2d(x, f, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        elif self.down:
            f = resample.fir_filter(self.fir_kernel, x)
            p = (f.shape[0] - factor) + (self.kernel - 1)
            x = F.conv2d(resample.upfirdn2d(x, f, pad=((p + 1) // 2, p // 2)), w, stride=factor)
        else:
            x = F.conv2d(x, w, padding=self.kernel // 2)
        return x + self.bias[None, :, None, None]


# --- noise-level / time embeddings ------------------------------------------------------------------

def positional_embedding(t: torch.Tensor, dim: int, max_positions: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N] -> [N, dim]``: ``sin(t w_i), cos(t w_i)``, ``w_i = max^(-i/(dim/2-1))``.

    Transformer positional encoding (Vaswani et al. 2017) as used by DDPM (Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device)
                      * -(math.log(max_positions) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[N] -> [N, 2 size]``: ``sin(2 pi x W), cos(2 pi x W)``, ``W ~ N(0, scale^2)``.

    Tancik et al. 2020; Song et al. 2021, App. H. ``W`` is a fixed (not trained) parameter."""

    def __init__(self, size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)




class ClassEmbedding(nn.Module):
    """Learned embedding of class labels ``y`` ``[N]`` (ints in ``0..num_classes-1`` or :data:`NULL_LABEL`)
    -> ``[N, dim]``; row ``num_classes`` of ``weight`` is the null label's (Ho & Salimans 2022)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | int | None, batch: int, device) -> torch.Tensor:
        if y is None:
            y = NULL_LABEL
        y = torch.as_tensor(y, device=device)
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"expected class labels y: integers of shape [{batch}] or one integer, got "
                             f"{y.dtype} of shape {list(y.shape)}")
        bad = (y != NULL_LABEL) & ((y < 0) | (y >= self.num_classes))
        if bad.any():
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1} or NULL_LABEL={NULL_LABEL}, "
                             f"got {y[bad][0].item()}")
        return self.embed(torch.where(y == NULL_LABEL, self.num_classes, y).long())


def class_embedding(num_classes: int, dim: int) -> ClassEmbedding | None:
    """A :class:`ClassEmbedding`, or None for an unconditional network (``num_classes == 0``)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes}")
    return ClassEmbedding(num_classes, dim) if num_classes else None


def add_class_embedding(temb: torch.Tensor, embedding: ClassEmbedding | None, y) -> torch.Tensor:
    """``temb + embedding(y)`` (class embedding added to the time embedding, as in Dhariwal & Nichol 2021);
    an unconditional network (``embedding`` None) refuses labels other than None."""
    if embedding is None:
        if y is not None:
            raise ValueError("this network is unconditional (num_classes=0): it takes no class labels y")
        return temb
    return temb + embedding(y, temb.shape[0], temb.device).to(temb.dtype)


# --- blocks -----------------------------------------------------------------------------------------

def merge_residual(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """Residual sum, divided by sqrt(2) to keep the variance when ``skip_rescale`` (Song et al. 2021, App. H)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class AttnBlock(nn.Module):
    """Self-attention over the pixels of a feature map (DDPM's attention block), residual."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.GroupNorm_0(x)
        q, k, v = (self.NIN_0(y).reshape(n, c, h * w), self.NIN_1(y).reshape(n, c, h * w),
                   self.NIN_2(y).reshape(n, c, h * w))
        attn = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) * c**-0.5, dim=-1)
        y = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
        return merge_residual(x, self.NIN_3(y), self.skip_rescale)


class Combine(nn.Module):
    """Merges an input-pyramid image into the features: 1x1 conv of it, then sum or concatenation."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"combine method must be 'cat' or 'sum', got {method!r}")
        self.Conv = conv2d(dim1, dim2, kernel=1)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class _Resample(nn.Module):
    """The layers of :class:`Upsample` (``up``) and :class:`Downsample`, named as the official modules."""

    def __init__(self, in_ch: int, out_ch: int | None, with_conv: bool, fir: bool, fir_kernel: Sequence[float],
                 up: bool):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, 3, up=up, down=not up, fir_kernel=fir_kernel)
        elif with_conv:
            self.Conv_0 = conv2d(in_ch, out_ch) if up else conv2d(in_ch, out_ch, stride=2, padding=0)
        elif out_ch != in_ch:
            raise ValueError(f"{type(self).__name__} without conv keeps the channel count")
        self.with_conv, self.fir, self.fir_kernel = with_conv, fir, tuple(fir_kernel)


class Upsample(_Resample):
    """Resolution x2: FIR (optionally fused with a 3x3 conv), or nearest neighbour (optionally + 3x3 conv)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel, up=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else resample.upsample_2d(x, self.fir_kernel)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.Conv_0(x) if self.with_conv else x


class Downsample(_Resample):
    """Resolution /2: FIR (optionally fused with a 3x3 conv), or stride-2 3x3 conv / 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel, up=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else resample.downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))  # TensorFlow's 'SAME' padding for stride 2
        return F.avg_pool2d(x, 2)


class ResnetBlock(nn.Module):
    """Residual block ``x -> (x + F(x, temb)) [/ sqrt 2]`` with GroupNorm, two 3x3 convs and a time bias.

    ``style="ddpm"``: the DDPM block (Ho et al. 2020), shortcut ``NIN_0`` when channels change.
    ``style="biggan"``: the BigGAN block (Brock et al. 2019): may resample (``up``/``down``, FIR or naive)
    inside, shortcut 1x1 ``Conv_2`` when channels change or it resamples (Song et al. 2021, App. H)."""

    def __init__(self, act: Activation, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 style: str = "biggan", up: bool = False, down: bool = False, dropout: float = 0.1,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0):
        super().__init__()
        if style not in ("ddpm", "biggan"):
            raise ValueError(f"resblock style must be 'ddpm' or 'biggan', got {style!r}")
        if style == "ddpm" and (up or down):
            raise ValueError("the ddpm ResNet block does not resample; use Upsample/Downsample")
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv2d(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv2d(out_ch, out_ch, init_scale=init_scale)
        self.shortcut: str | None = None  # name of the shortcut layer, if any
        if style == "ddpm" and in_ch != out_ch:
            self.NIN_0, self.shortcut = NIN(in_ch, out_ch), "NIN_0"
        elif style == "biggan" and (in_ch != out_ch or up or down):
            self.Conv_2, self.shortcut = conv2d(in_ch, out_ch, kernel=1), "Conv_2"
        self.act, self.up, self.down = act, up, down
        self.fir, self.fir_kernel, self.skip_rescale = fir, tuple(fir_kernel), skip_rescale

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return resample.upsample_2d(x, self.fir_kernel) if self.fir else resample.naive_upsample_2d(x)
        if self.down:
            return resample.downsample_2d(x, self.fir_kernel) if self.fir else resample.naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.shortcut is not None:
            x = getattr(self, self.shortcut)(x)
        return merge_residual(x, h, self.skip_rescale)


def check_image_input(x: torch.Tensor, labels, channels: int, size: int) -> torch.Tensor:
    """Check ``x`` is ``[N, channels, size, size]``; return the noise ``labels`` as a tensor ``[N]`` (a
    scalar is broadcast)."""
    expected = (channels, size, size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"expected x of shape [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
    labels = torch.as_tensor(labels, device=x.device)
    if labels.dim() == 0:
        labels = labels.expand(x.shape[0])
    if labels.shape != (x.shape[0],):
        raise ValueError(f"expected labels of shape [{x.shape[0]}] or a scalar, got {list(labels.shape)}")
    return labels
