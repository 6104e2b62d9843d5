"""DCGAN generator and discriminator (Radford et al. 2016) for square images of 8 to 64 pixels.

One family of layouts, whose 32x32 RGB member with ``nz=100, ngf=ndf=64`` is exactly the layout of the
pretrained CIFAR-10 DCGAN of github.com/csinva/gan-vae-pretrained-pytorch
(``cifar10_dcgan/weights/netG_epoch_199.pth``, ``netD_epoch_199.pth``), so those state dicts load as they
are (keys ``main.0.weight``, ``main.1.running_mean``, ...):

- G: ``z [N, nz, 1, 1]`` -> ConvT(nz -> ngf 2^u, 4, 1, 0) 1->4 px, BN, ReLU; then ``u = log2(size / 4)``
  blocks ConvT(4, 2, 1) + BN + ReLU halving the channels down to ``ngf`` (4 -> 8 -> ... -> size px); then
  ConvT(ngf -> nc, 1, 1, 0) keeps the size; Tanh. Images in ``[-1, 1]``. No biases.
- D: Conv(nc -> ndf, 4, 2, 1) size -> size/2, LeakyReLU(0.2); then ``log2(size) - 2`` blocks
  Conv(4, 2, 1) + BN + LeakyReLU doubling the channels, down to 2x2 px; then Conv(-> 1, 2, 2, 0) to 1x1.
  No biases. :meth:`DCGANDiscriminator.forward` returns the **logit** ``d(x)`` (the output before the
  Sigmoid of the original, which has no parameters and is left out); ``D(x) = sigmoid(d(x))``.

For CIFAR-10 (size 32): G 1 -> 4 -> 8 -> 16 -> 32 px with 512, 256, 128, 64, 3 channels;
D 32 -> 16 -> 8 -> 4 -> 2 -> 1 px with 64, 128, 256, 512, 1 channels.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

SIZES = (8, 16, 32, 64)


def _n_up(image_size: int) -> int:
    if image_size not in SIZES:
        raise ValueError(f"image_size must be one of {SIZES}, got {image_size}")
    return int(math.log2(image_size // 4))


def dcgan_init_(module: nn.Module) -> nn.Module:
    """DCGAN initialisation (Radford et al. 2016, Sec. 4): conv weights N(0, 0.02), BN scale N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class DCGANGenerator(nn.Module):
    """``z [N, nz, 1, 1]`` (or ``[N, nz]``) -> images ``[N, nc, image_size, image_size]`` in ``[-1, 1]``."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 32):
        super().__init__()
        u = _n_up(image_size)
        self.config = dict(nz=nz, ngf=ngf, nc=nc, image_size=image_size)
        self.latent_shape = (nz, 1, 1)
        ch = [ngf * 2 ** (u - i) for i in range(u + 1)]          # e.g. 512, 256, 128, 64
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ch[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 1, 1, 0, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """Images ``[N, nc, image_size, image_size]`` in ``[-1, 1]`` -> logit ``d(x)`` ``[N]``."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 32):
        super().__init__()
        n_blocks = _n_up(image_size)                               # size/2 -> 2 px
        self.config = dict(ndf=ndf, nc=nc, image_size=image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        c = ndf
        for _ in range(n_blocks):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c),
                       nn.LeakyReLU(0.2, True)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 2, 2, 0, bias=False)]          # 2x2 -> 1x1; the Sigmoid is left out
        self.main = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).reshape(x.shape[0])

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x) = sigmoid(d(x))``, the probability that ``x`` is real, ``[N]``."""
        return torch.sigmoid(self(x))


# --- the pretrained CIFAR-10 DCGAN of csinva/gan-vae-pretrained-pytorch --------------------------

def _read_state_dict(path: str | os.PathLike, map_location, what: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights: no file at {path}")
    try:
        sd: Any = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{what} weights {path}: not a PyTorch state dict file "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        got = f"a dict with keys {sorted(sd)[:4]}" if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{what} weights {path}: expected a state dict (name -> tensor), got {got}")
    return {k.removeprefix("module."): v for k, v in sd.items()}   # nn.DataParallel prefix


def _conv_weights(sd: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    convs = [(int(k.split(".")[1]), v) for k, v in sd.items()
             if k.startswith("main.") and k.endswith(".weight") and v.dim() == 4]
    return [v for _, v in sorted(convs, key=lambda kv: kv[0])]


def _load_checked(net: nn.Module, sd: dict[str, torch.Tensor], path, what: str) -> None:
    own = net.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # absent in old files; BN fills it
    missing = sorted(set(own) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"wrong shape {wrong[:3]}" if wrong else ""]
        raise ValueError(f"{what} weights {path} do not match the csinva DCGAN {what} layout: "
                         + "; ".join(p for p in parts if p))
    net.load_state_dict(sd, strict=True)


def load_csinva_dcgan(g_path: str | os.PathLike, d_path: str | os.PathLike, map_location="cpu"
                      ) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    """Load the csinva pretrained DCGAN (generator, discriminator) from its two ``.pth`` state dicts.

    The sizes (``nz``, ``ngf``, ``ndf``, ``nc``, image size) are read from the weight shapes, so the
    CIFAR-10 files give ``nz=100``, 32x32 RGB. Loaded with ``weights_only=True``; both nets are returned
    in eval mode. Raises FileNotFoundError for a missing file and ValueError for a file that is not a
    state dict of that layout (e.g. the two files swapped)."""
    g_sd = _read_state_dict(g_path, map_location, "generator")
    d_sd = _read_state_dict(d_path, map_location, "discriminator")
    g_conv, d_conv = _conv_weights(g_sd), _conv_weights(d_sd)
    # G: first ConvT weight is [nz, ngf 2^u, 4, 4], last [ngf, nc, 1, 1]; D: first Conv is [ndf, nc, 4, 4]
    if len(g_conv) < 3 or g_conv[0].shape[-2:] != (4, 4) or g_conv[-1].shape[-2:] != (1, 1):
        raise ValueError(f"generator weights {g_path} do not look like a csinva DCGAN generator "
                         f"(expected ConvTranspose weights main.0 [nz, C, 4, 4] ... [ngf, nc, 1, 1])")
    if len(d_conv) < 3 or d_conv[0].shape[-2:] != (4, 4) or d_conv[-1].shape[:2] != (1, d_conv[-2].shape[0]):
        raise ValueError(f"discriminator weights {d_path} do not look like a csinva DCGAN discriminator "
                         f"(expected Conv weights main.0 [ndf, nc, 4, 4] ... [1, C, 2, 2])")
    nz, ngf, nc = g_conv[0].shape[0], g_conv[-1].shape[0], g_conv[-1].shape[1]
    size = 4 * 2 ** (len(g_conv) - 2)
    ndf, d_nc, d_size = d_conv[0].shape[0], d_conv[0].shape[1], 2 ** (len(d_conv))
    if size not in SIZES or d_size not in SIZES:
        raise ValueError(f"unsupported DCGAN depth: generator gives {size} px, discriminator takes "
                         f"{d_size} px; supported sizes {SIZES}")
    if (d_nc, d_size) != (nc, size):
        raise ValueError(f"generator ({nc} channels, {size} px) and discriminator ({d_nc} channels, "
                         f"{d_size} px) do not fit together")
    G = DCGANGenerator(nz=nz, ngf=ngf, nc=nc, image_size=size)
    D = DCGANDiscriminator(ndf=ndf, nc=nc, image_size=size)
    _load_checked(G, g_sd, g_path, "generator")
    _load_checked(D, d_sd, d_path, "discriminator")
    device = g_conv[0].device
    return G.to(device).eval(), D.to(device).eval()
