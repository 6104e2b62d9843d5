"""GAN networks' files: sdegen's self-describing net files, and the pretrained DCGAN of csinva.

- :func:`save_net` / :func:`load_net`: ``{"arch", "kwargs", "state_dict"}`` written atomically by
  :mod:`sdegen.checkpoint` (``generator.pt`` and ``discriminator.pt`` of a GAN run folder);
- :func:`load_csinva_dcgan`: the two state dicts of github.com/csinva/gan-vae-pretrained-pytorch
  (``netG_epoch_199.pth``, ``netD_epoch_199.pth``), sizes read from the weight shapes.
Both load with ``weights_only=True``: no file executes code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import checkpoint
from ..nets.dcgan import SIZES, DCGANDiscriminator, DCGANGenerator
from ..nets.gan_mlp import MLPDiscriminator, MLPGenerator

GAN_NETS: dict[str, type[nn.Module]] = {
    "mlp_generator": MLPGenerator,
    "mlp_discriminator": MLPDiscriminator,
    "dcgan_generator": DCGANGenerator,
    "dcgan_discriminator": DCGANDiscriminator,
}


def arch_name(net: nn.Module) -> str:
    """The :data:`GAN_NETS` name of ``net``'s class."""
    for name, cls in GAN_NETS.items():
        if type(net) is cls:
            return name
    raise ValueError(f"{type(net).__name__} is not one of the GAN nets {sorted(GAN_NETS)}")


def net_record(net: nn.Module) -> dict:
    """``{"arch", "kwargs", "state_dict"}``: a self-describing file content for :func:`load_net`."""
    return {"arch": arch_name(net), "kwargs": dict(net.config), "state_dict": net.state_dict()}


def save_net(net: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``net`` to ``path`` atomically, for :func:`load_net`."""
    return checkpoint.atomic_save(net_record(net), path)


def load_net(path: str | os.PathLike, role: Optional[str] = None, map_location="cpu") -> nn.Module:
    """Rebuild a net saved by :func:`save_net` (``role``: ``"generator"`` or ``"discriminator"`` to check
    which it is). Returned in eval mode. Raises FileNotFoundError or ValueError saying what is wrong."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        rec = checkpoint.load(path, map_location)
    except checkpoint.CheckpointError as e:
        raise ValueError(str(e)) from e
    if not isinstance(rec, dict) or not {"arch", "kwargs", "state_dict"} <= set(rec):
        raise ValueError(f"{path} is not an sdegen GAN net file (a dict with arch, kwargs, state_dict); "
                         "for the csinva pretrained DCGAN use the csinva-dcgan format")
    if rec["arch"] not in GAN_NETS:
        raise ValueError(f"{path}: unknown arch {rec['arch']!r}; accepted: {sorted(GAN_NETS)}")
    if role is not None and not rec["arch"].endswith(role):
        raise ValueError(f"{path} holds a {rec['arch']}, not a {role}")
    net = GAN_NETS[rec["arch"]](**rec["kwargs"])
    try:
        net.load_state_dict(rec["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {rec['arch']}({rec['kwargs']}): "
                         f"{str(e).splitlines()[0]}") from e
    return net.eval()


# --- the pretrained CIFAR-10 DCGAN of csinva/gan-vae-pretrained-pytorch --------------------------
def _read_state_dict(path: str | os.PathLike, map_location, what: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights: no file at {path}")
    sd: Any = checkpoint.safe_load(path, map_location, what=f"{what} weights")
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
