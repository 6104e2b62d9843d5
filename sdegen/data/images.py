"""Image data sets: one reader per format, all returning an :class:`ImageDataset`.

Formats: scikit-learn's 8x8 digits (built in), MNIST IDX files, CIFAR-10 python batches (read with
an unpickler that refuses code) and any folder of PNG/JPEG files. Nothing is downloaded unless a
reader is called with ``download=True``.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from sdegen.data import transforms as T

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SPLITS = ("train", "test")


class DataError(ValueError):
    """A data file or folder is malformed (wrong format, truncated, unsafe)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data a reader needs is not where it looked."""


class ImageDataset(Dataset):
    """Images as float32 tensors ``[C, H, W]``, in [0, 1] or, with ``centered``, in [-1, 1].

    Args:
        codes: integer pixel codes ``0 .. levels-1``, a tensor ``[N, C, H, W]`` or any object with
            ``len``, ``shape`` and ``[i] -> [C, H, W]`` (read lazily, e.g. from files).
        levels: number of quantization levels of the codes (256 for 8-bit images).
        labels: int64 ``[N]`` class labels, or None where the format has none.
        image_size: resize every image to ``image_size x image_size`` (bilinear), after dequantization.
        centered: map [0, 1] to [-1, 1].
        flip: mirror left-right with probability 1/2.
        dequantize: uniform dequantization, ``(k + u) / levels`` (see :func:`transforms.dequantize`).
        generator: source of the random draws (``flip``, ``dequantize``) in the main process; None
            means torch's global generator. Inside DataLoader workers the draws come from the worker's
            generator, which the DataLoader seeds from its own ``generator`` and the worker id, so
            loading is reproducible for a given seed and ``num_workers``.

    An item is just the image; ``labels[i]`` is its label.
    """

    def __init__(self, codes, *, levels: int = 256, labels: torch.Tensor | None = None,
                 image_size: int | None = None, centered: bool = False, flip: bool = False,
                 dequantize: bool = False, generator: torch.Generator | None = None):
        if labels is not None and len(labels) != len(codes):
            raise ValueError(f"{len(labels)} labels for {len(codes)} images")
        if image_size is not None and (int(image_size) != image_size or image_size < 1):
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.codes = codes
        self.levels = int(levels)
        self.labels = labels
        self.image_size = image_size
        self.centered = centered
        self.flip = flip
        self.dequantize = dequantize
        self.generator = generator

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one item."""
        _, c, h, w = self.codes.shape
        return (c, self.image_size, self.image_size) if self.image_size else (c, h, w)

    def _generator(self) -> torch.Generator | None:
        # A generator copied into several workers would repeat its draws in each; use the worker's.
        return None if get_worker_info() is not None else self.generator

    def __getitem__(self, i: int) -> torch.Tensor:
        x = T.to_unit(self.codes[i], self.levels)
        g = self._generator()
        if self.dequantize:
            x = T.dequantize(x, self.levels, g)
        if self.image_size:
            x = T.resize(x, self.image_size)
        if self.flip:
            x = T.random_hflip(x, g)
        return T.center(x) if self.centered else x


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")


def _need_root(root, what: str) -> Path:
    if root is None:
        raise DataNotFoundError(f"no data folder given (root is None); {what}")
    return Path(root).expanduser()


# --------------------------------------------------------------------------- digits

def load_digits(root=None, split: str = "train", *, download: bool = False, **options) -> ImageDataset:
    """scikit-learn's handwritten digits: 1797 grayscale 8x8 images, labels 0-9.

    Built in (``root`` and ``download`` are ignored). Pixel values 0..16 (17 levels) map to [0, 1].
    Split: the first 1500 images are ``train``, the last 297 ``test``. ``options`` go to
    :class:`ImageDataset` (e.g. ``image_size=32`` upsamples bilinearly).
    """
    _check_split(split)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    codes = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # [1797, 1, 8, 8], 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    part = slice(0, len(codes) - 297) if split == "train" else slice(len(codes) - 297, None)
    return ImageDataset(codes[part], levels=17, labels=labels[part], **options)


# --------------------------------------------------------------------------- MNIST (IDX)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_MAX_DIMS = 32        # numpy's smallest limit on the number of array dimensions
DEFLATE_MAX_RATIO = 1032  # deflate's largest compression factor (zlib.net/zlib_tech.html)


def _read_at_most(f, n: int) -> bytes:
    """Up to ``n`` bytes of the stream ``f`` (fewer only at its end); never decompresses more."""
    parts, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_idx(path: Path, f, size: int, gz: bool, magic: int | None) -> np.ndarray:
    head = _read_at_most(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: {len(head)} bytes, too short for an IDX file")
    (got,) = struct.unpack(">i", head)
    if magic is not None and got != magic:
        raise DataError(f"{path}: bad magic number {got}, expected {magic} "
                        "(not an IDX file of the right kind)")
    code, ndim = head[2], head[3]
    if head[:2] != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: bad magic number {got} (not an IDX file)")
    if ndim > IDX_MAX_DIMS:
        raise DataError(f"{path}: the IDX header gives {ndim} dimensions; at most {IDX_MAX_DIMS} are accepted")
    raw_dims = _read_at_most(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}i", raw_dims)
    if min(dims) < 0:
        raise DataError(f"{path}: the IDX header gives negative dimensions {list(dims)}")
    dtype = np.dtype(_IDX_DTYPES[code])
    start = 4 + 4 * ndim
    expected = start + math.prod(dims) * dtype.itemsize
    # A file can hold at most its size (raw) or DEFLATE_MAX_RATIO times it (gzip): refuse before reading.
    if expected > size * (DEFLATE_MAX_RATIO if gz else 1):
        raise DataError(f"{path}: truncated: dims {list(dims)} need {expected} bytes, file has "
                        + (f"{size} compressed (at most {size * DEFLATE_MAX_RATIO} unpacked)" if gz else f"{size}"))
    body = _read_at_most(f, expected - start + 1)  # one byte more than promised tells a longer file
    if start + len(body) != expected:
        what = "truncated" if start + len(body) < expected else "longer than its header says"
        has = "more" if start + len(body) > expected else str(start + len(body))
        raise DataError(f"{path}: {what}: dims {list(dims)} need {expected} bytes, file has {has}")
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed, as a numpy array.

    The header is a big-endian int32 magic number ``0x0000TTDD`` (TT: element type, DD: number of
    dimensions), then DD big-endian int32 sizes, then the elements. ``magic``, if given, is the
    required magic number (2051: uint8 images [N, H, W]; 2049: uint8 labels [N]). Gzip is told by the
    first bytes, not the name; decompression stops at the size the header promises (a gzip bomb
    costs no more memory than a true file of that header).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            return _read_idx(path, gzip.GzipFile(fileobj=raw) if gz else raw, size, gz, magic)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None


def _find_mnist_file(root: Path, stem: str, kind: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):  # the second is torchvision's layout
        for name in (f"{stem}-{kind}", f"{stem}.{kind}"):
            for ext in ("", ".gz"):
                if (folder / (name + ext)).is_file():
                    return folder / (name + ext)
    return None


def _download_mnist(root: Path) -> None:
    from urllib.error import URLError

    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_and_extract_archive

    raw = root / "MNIST" / "raw"
    for filename, md5 in MNIST.resources:
        errors = []
        for mirror in MNIST.mirrors:
            try:
                download_and_extract_archive(mirror + filename, raw, filename=filename, md5=md5)
                break
            except (URLError, OSError, RuntimeError) as e:
                errors.append(f"{mirror}: {e}")
        else:
            raise DataNotFoundError(f"could not download {filename}: " + "; ".join(errors))


def load_mnist(root, split: str = "train", *, download: bool = False, **options) -> ImageDataset:
    """MNIST from its IDX files: grayscale 28x28 images, 8-bit, labels 0-9 (60000 train, 10000 test).

    Looks in ``root`` and ``root/MNIST/raw`` for ``{train,t10k}-images-idx3-ubyte`` and
    ``{train,t10k}-labels-idx1-ubyte``, raw or ``.gz``. ``download=True`` fetches missing files into
    ``root/MNIST/raw``. ``options`` go to :class:`ImageDataset`.
    """
    _check_split(split)
    prefix = "train" if split == "train" else "t10k"
    expected = f"{prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte (raw or .gz)"
    hint = f"MNIST is published at {MNIST_URL}; sdegen train --download (download=True in Python) fetches it"
    root = _need_root(root, f"mnist needs {expected}; {hint}")

    def find():
        return (_find_mnist_file(root, f"{prefix}-images", "idx3-ubyte"),
                _find_mnist_file(root, f"{prefix}-labels", "idx1-ubyte"))

    images_path, labels_path = find()
    if (images_path is None or labels_path is None) and download:
        _download_mnist(root)
        images_path, labels_path = find()
    if images_path is None or labels_path is None:
        raise DataNotFoundError(f"MNIST not found: expected {expected} in {root} or "
                                f"{root / 'MNIST' / 'raw'}. {hint} into {root}")
    images = read_idx(images_path, magic=2051)
    labels = read_idx(labels_path, magic=2049)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    return ImageDataset(torch.from_numpy(images).unsqueeze(1), levels=256,
                        labels=torch.from_numpy(labels.astype(np.int64)), **options)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
class _Refused(pickle.UnpicklingError):
    pass


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles call it to rebuild bytes: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"refusing _codecs.encode of a {type(text).__name__} with encoding {encoding!r} "
                       "(only latin1 text, as Python 3 protocol-2 pickles of bytes use)")
    return text.encode("latin1")


# The only globals a CIFAR-10 batch refers to: numpy's array reconstructor, ndarray and dtype, and, in
# batches pickled with protocol 2 by Python 3, _codecs.encode(text, "latin1") to rebuild bytes.
# numpy >= 2 names the reconstructor's module numpy._core; the files name numpy.core.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_SAFE_GLOBALS = {
    ("_codecs", "encode"): _latin1,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds dicts, lists, bytes and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refusing global {module}.{name}") from None


def read_cifar_batch(raw: bytes, name: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 python batch (a pickled dict) without running code from it.

    Returns ``(images, labels)``: uint8 ``[N, 3, 32, 32]`` (the file's rows are 1024 red, 1024 green,
    1024 blue values, each plane row-major) and int64 ``[N]`` in 0..9.
    """
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{name}: not a CIFAR-10 batch, refused to unpickle it ({e}); "
                        "a batch holds only a dict of bytes, lists and numpy arrays") from None
    except Exception as e:  # truncated or garbled pickles fail in many ways
        raise DataError(f"{name}: corrupt CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: a CIFAR-10 batch is a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: b'data' must be a uint8 array [N, 3072], got {got}")
    labels = np.asarray(labels) if labels is not None else None
    if labels is None or labels.shape != (len(data),) or labels.dtype.kind not in "iu" \
            or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{name}: b'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _find_cifar10(root: Path) -> Path | None:
    """The extracted batch folder or the archive under ``root`` (or ``root`` itself)."""
    if root.is_dir() and ((root / "data_batch_1").is_file() or (root / "test_batch").is_file()):
        return root
    if (root / CIFAR10_FOLDER).is_dir():
        return root / CIFAR10_FOLDER
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        return root
    if (root / CIFAR10_ARCHIVE).is_file():
        return root / CIFAR10_ARCHIVE
    return None


def _read_cifar10_files(source: Path, names: Sequence[str], not_found: str) -> list[bytes]:
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataNotFoundError(f"{source} lacks {', '.join(missing)}. {not_found}")
        return [(source / n).read_bytes() for n in names]
    try:
        with tarfile.open(source, "r:gz") as tar:  # members are read in memory; nothing is extracted
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            found = {n: tar.extractfile(members[n]).read() for n in names if n in members}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{source}: corrupt or truncated archive ({e})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataNotFoundError(f"{source} lacks {', '.join(missing)}. {not_found}")
    return [found[n] for n in names]


def load_cifar10(root, split: str = "train", *, download: bool = False, **options) -> ImageDataset:
    """CIFAR-10 from its python batches: RGB 32x32 images, 8-bit, labels 0-9 (50000 train, 10000 test).

    ``root`` is the extracted ``cifar-10-batches-py`` folder, a folder holding it or the archive
    ``cifar-10-python.tar.gz``, or the archive itself. ``download=True`` fetches and extracts the
    archive into ``root`` if nothing is found. ``options`` go to :class:`ImageDataset`.
    """
    _check_split(split)
    names = _CIFAR10_BATCHES[split]
    expected = f"{CIFAR10_FOLDER}/ ({', '.join(names)}) or {CIFAR10_ARCHIVE}"
    hint = f"CIFAR-10 is published at {CIFAR10_URL}; sdegen train --download (download=True in Python) fetches it"
    root = _need_root(root, f"cifar10 needs {expected}; {hint}")
    source = _find_cifar10(root)
    if source is None and download:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10.url, root, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except (OSError, RuntimeError) as e:
            raise DataNotFoundError(f"could not download {CIFAR10.url}: {e}") from None
        source = _find_cifar10(root)
    not_found = f"Expected {expected} in {root}. {hint} into {root}"
    if source is None:
        raise DataNotFoundError(f"CIFAR-10 not found. {not_found}")
    parts = [read_cifar_batch(raw, f"{source}:{n}")
             for n, raw in zip(names, _read_cifar10_files(source, names, not_found))]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(torch.from_numpy(images), levels=256, labels=torch.from_numpy(labels), **options)


# --------------------------------------------------------------------------- folder of images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _resize_center_crop(im, size: int):
    """Scale a PIL image so its shorter side is ``size`` (bicubic), then cut the central square."""
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


class FolderCodes:
    """Lazily read 8-bit codes ``[C, H, W]`` of image files; ``shape`` is ``(N, C, H, W)``."""

    def __init__(self, paths: Sequence[Path], grayscale: bool, size: int | None, hw: tuple[int, int]):
        self.paths = list(paths)
        self.mode = "L" if grayscale else "RGB"
        self.size = size
        self.shape = (len(self.paths), 1 if grayscale else 3, *hw)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert(self.mode)
                if self.size:
                    im = _resize_center_crop(im, self.size)
                a = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{self.paths[i]}: unreadable image ({e})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # [C, H, W]
        return torch.from_numpy(a.copy())


def load_folder(root, split: str = "train", *, download: bool = False, grayscale: bool = False,
                image_size: int | None = None, **options) -> ImageDataset:
    """Every PNG/JPEG under ``root`` (recursively, sorted by path), 8-bit RGB or, with ``grayscale``, L.

    With ``image_size`` each image is scaled (bicubic) so its shorter side is ``image_size`` and
    center-cropped to a square; without it all images must have the same size. Images are read
    lazily. A folder has no splits: ``split`` is checked but the whole folder is returned (point
    ``root`` at another folder for test images); ``download`` is ignored. No labels.
    """
    from PIL import Image, UnidentifiedImageError

    _check_split(split)
    root = _need_root(root, "folder needs a folder of PNG/JPEG images")
    if not root.is_dir():
        raise DataNotFoundError(f"{root} is not a folder (folder expects a folder of PNG/JPEG images)")
    paths = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root} "
                                "(searched recursively)")
    sizes = {}
    for p in paths:  # headers only: catches non-images and mixed sizes up front
        try:
            with Image.open(p) as im:
                sizes.setdefault(im.size, p)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p}: unreadable image ({e})") from None
    if image_size is not None:
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        hw = (image_size, image_size)
    elif len(sizes) > 1:
        listed = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(sizes.items())[:4])
        raise DataError(f"images under {root} have different sizes ({listed}); "
                        "pass image_size to resize them")
    else:
        (w, h), = sizes
        hw = (h, w)
    return ImageDataset(FolderCodes(paths, grayscale, image_size, hw), levels=256, **options)
