"""VGG-16 features for improved precision and recall (Kynkaanniemi et al. 2019, Sec. 3: the second
fully-connected layer of an ImageNet VGG-16), computed as torch-fidelity's ``vgg16`` extractor (its default
for ``prc``) computes them: uint8 images ``[N, 3, H, W]`` resized to 224x224 as TensorFlow 1.x did,
ImageNet normalisation, ``fc2`` after its ReLU (4096 features). Images are quantised to uint8 as for
Inception (:func:`sdegen.metrics.inception.quantize_uint8`).

Weights: torchvision's ImageNet state dict ``vgg16-397923af.pth``, from an explicit path, the
``SDEGEN_VGG16_WEIGHTS`` environment variable, or torch hub's cache (where torchvision keeps its
download). It is read with ``weights_only`` loading; nothing is downloaded here.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ..checkpoint import safe_load
from .frechet import ValueRange, sha256_file
from .inception import quantize_uint8

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILENAME
VGG16_ENV = "SDEGEN_VGG16_WEIGHTS"
EXTRACTOR_NAME = "vgg16"   # torch-fidelity's registry name
INPUT_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resolve_vgg16_weights(path: str | os.PathLike | None = None) -> Path:
    """Path of the VGG-16 weights (see the module doc); FileNotFoundError naming where they are published."""
    where = None
    if path is None:
        path = os.environ.get(VGG16_ENV) or None
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        where = f"at {p}"
    else:
        p = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
        if p.is_file():
            return p
        where = f"in {p.parent}"
    raise FileNotFoundError(
        f"VGG-16 weights not found {where}. Precision/recall (Kynkaanniemi et al. 2019, torch-fidelity's prc) "
        f"uses torchvision's ImageNet {VGG16_FILENAME}, published at {VGG16_URL}; download it and pass "
        f"--vgg16-weights PATH or set {VGG16_ENV}=PATH (or use --prc-features inception)")


@functools.lru_cache(maxsize=1)
def _load_network(path: str, mtime_ns: int, size: int, device: str):
    """torchvision's VGG-16 with the weights of ``path``, cut after ``fc2``, on ``device``; and the sha256."""
    import torchvision

    state = safe_load(path, what="VGG-16 weights")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    net = torchvision.models.vgg16()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not hold torchvision VGG-16 weights: {str(e).splitlines()[0]}") from e
    del net.classifier[4:]   # keep fc1, ReLU, dropout, fc2 (torch-fidelity drops classifier[6], [5], [4])
    return net.eval().requires_grad_(False).to(device), sha256_file(path)


class VGG16:
    """Feature extractor (see :mod:`sdegen.metrics.frechet`): ``[B, 4096]`` ``fc2`` features after the ReLU."""

    def __init__(self, weights_path: str | os.PathLike | None = None, *, device=None):
        path = resolve_vgg16_weights(weights_path)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        st = path.stat()
        self.net, self.weights_sha256 = _load_network(str(path.resolve()), st.st_mtime_ns, st.st_size,
                                                      str(self.device))
        self.name = EXTRACTOR_NAME

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = quantize_uint8(batch, value_range).to(self.device).float()
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
        return torch.relu(self.net((x - mean) / std)).double().cpu()
