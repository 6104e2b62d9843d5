"""Data readers and transforms: files of each format are written here and read back exactly."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from sdegen.data import (DATASETS, DataError, DataNotFoundError, ImageDataset, data_shape, get_dataset,
                         read_cifar_batch, read_idx)
from sdegen.data import transforms as T


# --------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file of uint8 ``arr``: magic 0x0000_08_DD, big-endian int32 dims, data."""
    return struct.pack(">i", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()


def write(path, data: bytes, gz: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_images(n: int) -> np.ndarray:
    r, c = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    return np.stack([(k * 50 + 7 * r + c) % 256 for k in range(n)]).astype(np.uint8)


def write_mnist(folder, prefix: str, images, labels, gz: bool = False):
    ext = ".gz" if gz else ""
    write(folder / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images), gz)
    write(folder / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels), gz)


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 8-bit strings, as cPickle did for the CIFAR-10 batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str8(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = save_str8
    dispatch[str] = save_str8


def py2_pickle(obj) -> bytes:
    import io
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # the files name numpy 1's module
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_batch(data: np.ndarray, labels, name: str, py2: bool = True) -> bytes:
    batch = {"batch_label": name, "labels": list(map(int, labels)), "data": data,
             "filenames": [f"img_{i}.png" for i in range(len(data))]}
    if py2:
        return py2_pickle(batch)  # keys come back as bytes with encoding="bytes"
    return pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=4)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A CIFAR-10 folder and archive with 2 images per training batch and 3 test images."""
    rng = np.random.default_rng(0)
    data = {f"data_batch_{i}": rng.integers(0, 256, (2, 3072), dtype=np.uint8) for i in range(1, 6)}
    test = np.zeros((3, 3, 32, 32), np.uint8)
    test[0, 0], test[0, 1], test[0, 2] = 10, 20, 30
    test[0, 0, 1, 2] = 255  # red, row 1, column 2
    test[1:] = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    data["test_batch"] = test.reshape(3, 3072)
    labels = {n: rng.integers(0, 10, len(d)) for n, d in data.items()}
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for n in data:
        (folder / n).write_bytes(cifar_batch(data[n], labels[n], n, py2=(n != "data_batch_3")))
    (folder / "batches.meta").write_bytes(b"unused")
    (root / "archive").mkdir()
    with tarfile.open(root / "archive" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    train = np.concatenate([data[f"data_batch_{i}"] for i in range(1, 6)])
    train_labels = np.concatenate([labels[f"data_batch_{i}"] for i in range(1, 6)])
    return dict(root=root, folder=folder, train=(train, train_labels),
                test=(data["test_batch"], labels["test_batch"]))


def assert_images(ds, codes: np.ndarray, levels: int = 256, whole: bool = True):
    """``ds[i]`` is exactly ``codes[i] / (levels - 1)``; ``whole``: and ``ds`` has no more items."""
    assert len(ds) == len(codes) or not whole
    for i in range(len(codes)):
        expected = torch.from_numpy(codes[i].astype(np.float32)) / (levels - 1)
        assert ds[i].dtype == torch.float32
        assert torch.equal(ds[i], expected), i


# --------------------------------------------------------------------------- digits

def test_digits_values_split_and_labels():
    from sklearn.datasets import load_digits
    ref = load_digits()
    train, test = get_dataset("digits"), get_dataset("digits", split="test")
    assert (len(train), len(test)) == (1500, 297)
    assert train.shape == (1, 8, 8) and train.levels == 17
    assert_images(train, ref.images[:3, None], levels=17, whole=False)  # 0..16 -> k / 16
    assert_images(torch.utils.data.Subset(test, [296]), ref.images[-1:, None], levels=17)
    assert torch.equal(torch.cat([train.labels, test.labels]), torch.from_numpy(ref.target))
    all_train = torch.stack([train[i] for i in range(len(train))])
    assert all_train.min() == 0 and all_train.max() == 1


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upsampled_bilinear(size):
    small, big = get_dataset("digits"), get_dataset("digits", image_size=size)
    assert big.shape == (1, size, size) and data_shape("digits", size) == (1, size)
    x = big[5]
    ref = F.interpolate(small[5][None], size=(size, size), mode="bilinear", align_corners=False)[0]
    assert x.shape == (1, size, size)
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)
    assert 0 <= x.min() and x.max() <= 1


def test_centered_is_affine_map_of_unit():
    unit, cen = get_dataset("digits"), get_dataset("digits", centered=True)
    for i in (0, 7, 1499):
        assert torch.equal(cen[i], 2 * unit[i] - 1)
    xs = torch.stack([cen[i] for i in range(200)])
    assert xs.min() == -1 and xs.max() == 1


# --------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_read_back(tmp_path, gz):
    write_mnist(tmp_path, "train", mnist_images(3), np.array([3, 1, 4], np.uint8), gz)
    write_mnist(tmp_path, "t10k", mnist_images(2)[::-1].copy(), np.array([9, 0], np.uint8), gz)
    train = get_dataset("mnist", str(tmp_path))
    assert train.shape == (1, 28, 28) and data_shape("mnist") == (1, 28)
    assert_images(train, mnist_images(3)[:, None])
    assert train.labels.tolist() == [3, 1, 4]
    test = get_dataset("mnist", str(tmp_path), split="test")
    assert_images(test, mnist_images(2)[::-1, None])
    assert test.labels.tolist() == [9, 0]
    assert float(train[0][0, 27, 27]) == pytest.approx((7 * 27 + 27) / 255)


def test_mnist_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", "train", mnist_images(2), np.array([5, 6], np.uint8), gz=True)
    ds = get_dataset("mnist", tmp_path, image_size=32, centered=True)
    assert ds.shape == (1, 32, 32) and ds[1].shape == (1, 32, 32)
    assert ds[1].min() >= -1 and ds[1].max() <= 1 and ds.labels.tolist() == [5, 6]


def test_mnist_missing_files_name_them_and_the_source(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        get_dataset("mnist", tmp_path)
    msg = str(e.value)
    for part in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "http://yann.lecun.com/exdb/mnist/",
                 "--download"):
        assert part in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    with pytest.raises(DataNotFoundError, match="yann.lecun.com"):
        get_dataset("mnist")  # no root at all
    # images present but labels missing
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(mnist_images(1)))
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte"):
        get_dataset("mnist", tmp_path)


def test_idx_bad_magic_truncated_and_mismatch(tmp_path):
    imgs, labels = mnist_images(2), np.array([1, 2], np.uint8)
    # a labels file where the images file should be: magic 2049 instead of 2051
    write(tmp_path / "a" / "train-images-idx3-ubyte", idx_bytes(labels))
    write(tmp_path / "a" / "train-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(DataError, match="bad magic number 2049, expected 2051"):
        get_dataset("mnist", tmp_path / "a")
    bad = write(tmp_path / "junk", b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(bad)
    # truncated data, raw and gzip
    trunc = write(tmp_path / "b" / "train-images-idx3-ubyte", idx_bytes(imgs)[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(trunc, 2051)
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(write(tmp_path / "long", idx_bytes(imgs) + b"\0"), 2051)
    cut_gz = write(tmp_path / "c.gz", gzip.compress(idx_bytes(imgs))[:-30])
    with pytest.raises(DataError, match="gzip"):
        read_idx(cut_gz)
    with pytest.raises(DataError, match="too short"):
        read_idx(write(tmp_path / "tiny", b"\0\0"))
    # image and label counts differ
    write(tmp_path / "d" / "train-images-idx3-ubyte", idx_bytes(imgs))
    write(tmp_path / "d" / "train-labels-idx1-ubyte", idx_bytes(labels[:1]))
    with pytest.raises(DataError, match="2 images but"):
        get_dataset("mnist", tmp_path / "d")


def test_read_idx_general_types(tmp_path):
    arr = (np.arange(6).reshape(2, 3) - 3).astype(">i4")
    raw = struct.pack(">i", 0x0C02) + struct.pack(">2i", 2, 3) + arr.tobytes()
    out = read_idx(write(tmp_path / "x", raw))
    assert out.dtype == np.int32 and out.tolist() == [[-3, -2, -1], [0, 1, 2]]


# --------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("where", ["parent", "folder", "archive_parent", "archive"])
def test_cifar10_read_back(cifar, where):
    root = {"parent": cifar["root"] / "extracted", "folder": cifar["folder"],
            "archive_parent": cifar["root"] / "archive",
            "archive": cifar["root"] / "archive" / "cifar-10-python.tar.gz"}[where]
    train = get_dataset("cifar10", str(root))
    assert train.shape == (3, 32, 32) and data_shape("cifar10") == (3, 32)
    assert_images(train, cifar["train"][0].reshape(-1, 3, 32, 32))
    assert train.labels.tolist() == cifar["train"][1].tolist()
    test = get_dataset("cifar10", root, split="test")
    assert_images(test, cifar["test"][0].reshape(-1, 3, 32, 32))
    assert test.labels.tolist() == cifar["test"][1].tolist()
    # plane layout: 1024 red, then green, then blue, each row-major
    x = test[0]
    assert float(x[0, 1, 2]) == 1.0 and float(x[0, 0, 0]) == pytest.approx(10 / 255)
    assert torch.all(x[1] == 20 / 255) and torch.all(x[2] == 30 / 255)


def test_cifar10_forbidden_global_is_refused_not_run(tmp_path):
    class Payload:
        def __init__(self, target):
            self.target = target

        def __reduce__(self):
            return os.mkdir, (self.target,)

    # the payload is live: a plain unpickler runs it
    pickle.loads(pickle.dumps({b"data": Payload(str(tmp_path / "proof"))}))
    assert (tmp_path / "proof").is_dir()

    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = pickle.dumps({b"data": Payload(str(marker)), b"labels": [0]}, protocol=4)
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(DataError, match=r"refus.*mkdir"):
        get_dataset("cifar10", tmp_path, split="test")
    assert not marker.exists()
    # _codecs.encode is allowed only as protocol-2 pickles of bytes use it: latin1 text to bytes
    import codecs

    class Rot13:
        def __reduce__(self):
            return codecs.encode, ("abc", "rot13")
    with pytest.raises(DataError, match=r"refus.*_codecs.encode .* 'rot13'"):
        read_cifar_batch(pickle.dumps({b"data": Rot13()}, protocol=2))


def test_cifar10_batch_pickled_by_python3_with_protocol_2_loads():
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"batch_label": b"testing batch 1 of 1", b"labels": [0, 9, 4], b"data": data,
                        b"filenames": [b"a.png", b"b.png", b"c.png"]}, protocol=2)
    assert b"_codecs" in raw                       # how Python 3 pickles bytes with protocol 2
    images, labels = read_cifar_batch(raw, "b")
    assert np.array_equal(images.reshape(3, 3072), data) and labels.tolist() == [0, 9, 4]


def test_cifar10_malformed_and_missing(cifar, tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        get_dataset("cifar10", tmp_path)
    for part in ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                 "https://www.cs.toronto.edu/~kriz/cifar.html", "--download"):
        assert part in str(e.value)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes((cifar["folder"] / "test_batch").read_bytes())
    with pytest.raises(DataNotFoundError, match="data_batch_1, data_batch_2"):
        get_dataset("cifar10", tmp_path)  # train batches missing
    assert len(get_dataset("cifar10", tmp_path, split="test")) == 3
    good = (cifar["folder"] / "test_batch").read_bytes()
    with pytest.raises(DataError, match="corrupt"):
        read_cifar_batch(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"uint8 array \[N, 3072\]"):
        read_cifar_batch(py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match="integers in 0..9"):
        read_cifar_batch(py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 11]}))
    with pytest.raises(DataError, match="is a dict"):
        read_cifar_batch(py2_pickle([1, 2]))
    bad_archive = tmp_path / "broken" / "cifar-10-python.tar.gz"
    bad_archive.parent.mkdir()
    bad_archive.write_bytes((cifar["root"] / "archive" / "cifar-10-python.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError, match="archive"):
        get_dataset("cifar10", bad_archive.parent)


# --------------------------------------------------------------------------- folder

@pytest.fixture
def image_folder(tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    gray = (np.arange(24, dtype=np.uint8).reshape(4, 6) * 10)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(rgb, "RGB").save(tmp_path / "a" / "img1.png")
    Image.fromarray(gray, "L").save(tmp_path / "a" / "b" / "img2.png")
    solid = np.full((4, 6, 3), (100, 150, 200), np.uint8)
    Image.fromarray(solid, "RGB").save(tmp_path / "c.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, rgb, gray


def test_folder_rgb_recursive_sorted(image_folder):
    root, rgb, gray = image_folder
    ds = get_dataset("folder", str(root))  # order: a/b/img2.png, a/img1.png, c.JPG
    assert len(ds) == 3 and ds.shape == (3, 4, 6) and ds.labels is None
    assert torch.equal(ds[0], torch.from_numpy(gray).float().div(255).expand(3, 4, 6))
    assert torch.equal(ds[1], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    jpeg = ds[2]  # lossy: close to the constant colour
    torch.testing.assert_close(jpeg, torch.tensor([100, 150, 200.]).div(255)[:, None, None].expand(3, 4, 6),
                               atol=3 / 255, rtol=0)


def test_folder_grayscale(image_folder):
    root, rgb, gray = image_folder
    ds = get_dataset("folder", root, grayscale=True, centered=True)
    assert ds.shape == (1, 4, 6) and data_shape("folder", 8, grayscale=True) == (1, 8)
    assert torch.equal(ds[0], 2 * torch.from_numpy(gray).float()[None] / 255 - 1)
    luma = np.array(Image.fromarray(rgb, "RGB").convert("L"))
    assert torch.equal(ds[1], 2 * torch.from_numpy(luma).float()[None] / 255 - 1)


def test_folder_resize_and_center_crop(tmp_path):
    wide = np.zeros((20, 40), np.uint8)
    wide[:, :10], wide[:, 10:30], wide[:, 30:] = 10, 200, 50
    Image.fromarray(wide, "L").save(tmp_path / "wide.png")
    Image.fromarray(np.full((7, 5, 3), 90, np.uint8), "RGB").save(tmp_path / "small.png")
    with pytest.raises(DataError, match="different sizes.*image_size"):
        get_dataset("folder", tmp_path)
    ds = get_dataset("folder", tmp_path, image_size=10, grayscale=True)
    assert ds.shape == (1, 10, 10)
    small, crop = ds[0], ds[1] * 255  # "small.png" < "wide.png"
    assert small.shape == (1, 10, 10)
    assert torch.allclose(small, torch.full_like(small, 90 / 255), atol=1 / 255)
    # the 40x20 image becomes 20x10; its central 10 columns are the 200-valued middle band
    assert torch.all((crop[..., 2:8] - 200).abs() <= 1)
    assert crop.min() > 150


def test_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="no images"):
        get_dataset("folder", tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataNotFoundError, match="no images"):
        get_dataset("folder", tmp_path)
    with pytest.raises(DataNotFoundError, match="not a folder"):
        get_dataset("folder", tmp_path / "missing")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png"):
        get_dataset("folder", tmp_path)


# --------------------------------------------------------------------------- transforms

def ramp_dataset(n: int = 8, **options) -> ImageDataset:
    codes = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(n, 3, 1, 1)
    return ImageDataset(codes, levels=256, **options)


def test_flip_is_deterministic_given_a_seed():
    def draws(seed):
        ds = ramp_dataset(generator=torch.Generator().manual_seed(seed), flip=True)
        return [ds[i % len(ds)] for i in range(64)]

    a, b, c = draws(0), draws(0), draws(1)
    plain = ramp_dataset()[0]
    flipped = [bool(torch.equal(x, plain.flip(-1))) for x in a]
    assert all(torch.equal(x, plain) or torch.equal(x, plain.flip(-1)) for x in a)
    assert 16 < sum(flipped) < 48  # about half
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [bool(torch.equal(x, plain.flip(-1))) for x in c] != flipped


def test_flip_in_dataloader_workers_is_reproducible():
    plain = ramp_dataset()[0]

    def pattern(seed):
        # a generator given to the data set must not make the two workers draw the same flips
        ds = ramp_dataset(n=32, flip=True, generator=torch.Generator().manual_seed(5))
        loader = DataLoader(ds, batch_size=8, num_workers=2, generator=torch.Generator().manual_seed(seed))
        return [[bool(torch.equal(x, plain.flip(-1))) for x in batch] for batch in loader]

    p = pattern(0)
    assert p == pattern(0)
    assert p[0] != p[1]  # batches 0 and 1 come from different workers
    assert p != pattern(1)


def test_dequantization_stays_in_the_bin():
    ds = ramp_dataset(n=4, dequantize=True, generator=torch.Generator().manual_seed(0))
    k = torch.arange(256.).reshape(1, 16, 16)
    xs = torch.stack([ds[i] for i in range(4)])
    assert torch.all(xs >= k / 256) and torch.all(xs < (k + 1) / 256)
    assert torch.equal(torch.floor(xs * 256), k.expand_as(xs))
    u = xs * 256 - k
    assert 0.45 < u.mean() < 0.55 and u.std() > 0.25  # uniform noise, not a constant offset
    again = ramp_dataset(n=4, dequantize=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], xs[0])
    # formula (255 x + u) / 256 on [0, 1] data, and in centered units
    cen = ramp_dataset(n=1, dequantize=True, centered=True, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(torch.floor((cen + 1) / 2 * 256), k.expand_as(cen))


def test_dequantization_of_digits_uses_17_levels():
    from sklearn.datasets import load_digits
    codes = torch.from_numpy(load_digits().images[:50]).float()[:, None]
    ds = get_dataset("digits", dequantize=True, generator=torch.Generator().manual_seed(0))
    xs = torch.stack([ds[i] for i in range(50)])
    assert torch.equal(torch.floor(xs * 17), codes)


def test_transform_functions():
    x = torch.tensor([[[0.0, 1.0]]])
    assert torch.equal(T.center(x), torch.tensor([[[-1.0, 1.0]]]))
    assert torch.equal(T.to_unit(torch.tensor([0, 255], dtype=torch.uint8), 256), torch.tensor([0.0, 1.0]))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert T.resize(img, 8) is img
    down = T.resize(img, 4)
    assert down.shape == (3, 4, 4) and img.min() <= down.min() and down.max() <= img.max()
    assert torch.equal(T.random_hflip(img, torch.Generator().manual_seed(0), p=1.0), img.flip(-1))
    assert torch.equal(T.random_hflip(img, torch.Generator().manual_seed(0), p=0.0), img)


# --------------------------------------------------------------------------- entry point

def test_registry_and_usage_errors():
    assert list(DATASETS) == ["digits", "mnist", "cifar10", "folder"]
    with pytest.raises(ValueError, match="digits, mnist, cifar10, folder"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match="train, test"):
        get_dataset("digits", split="val")
    with pytest.raises(ValueError, match="folder"):
        get_dataset("digits", grayscale=True)
    with pytest.raises(ValueError, match="image_size"):
        data_shape("folder")
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("digits", image_size=0)
    assert data_shape("folder", 64) == (3, 64)


def test_download_only_when_asked(tmp_path, monkeypatch, cifar):
    import torchvision.datasets.utils as tvu
    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None,
                      remove_finished=False):
        calls.append(url)
        if "cifar" in url:
            with tarfile.open(cifar["root"] / "archive" / "cifar-10-python.tar.gz") as tar:
                tar.extractall(download_root, filter="data")
            return
        stem = filename[: -len(".gz")]
        data = mnist_images(2) if "images" in stem else np.array([7, 8], np.uint8)
        write(tmp_path / "mnist" / "MNIST" / "raw" / stem, idx_bytes(data))

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    with pytest.raises(DataNotFoundError):
        get_dataset("mnist", tmp_path / "mnist", split="test")
    with pytest.raises(DataNotFoundError):
        get_dataset("cifar10", tmp_path / "cifar")
    assert calls == []
    ds = get_dataset("mnist", tmp_path / "mnist", split="test", download=True)
    assert len(calls) == 4 and ds.labels.tolist() == [7, 8]
    assert_images(ds, mnist_images(2)[:, None])
    get_dataset("mnist", tmp_path / "mnist", split="test", download=True)
    assert len(calls) == 4  # present now: nothing fetched
    ds = get_dataset("cifar10", tmp_path / "cifar", split="test", download=True)
    assert len(calls) == 5 and "cifar-10-python.tar.gz" in calls[-1]
    assert_images(ds, cifar["test"][0].reshape(-1, 3, 32, 32))
