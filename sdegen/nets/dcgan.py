"""DCGAN generator and discriminator (Radford et al. 2016) for square images of 8 to 64 pixels.

One family of layouts, whose 32x32 RGB member with ``nz=100, ngf=ndf=64`` is exactly the layout of the
pretrained CIFAR-10 DCGAN of github.com/csinva/gan-vae-pretrained-pytorch
(``cifar10_dcgan/weights/netG_epoch_199.pth``, ``netD_epoch_199.pth``), so those state dicts load as they
are (keys ``main.0.weight``, ``main.1.running_mean``, ...; :func:`sdegen.gan.io.load_csinva_dcgan`):

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
