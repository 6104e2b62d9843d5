"""``sdegen fid``: FID (or FD-digits) of samples against reference statistics or a data set.

Samples and sources (shared with ``sdegen fid-stats``):
- ``FILE.npz`` holding an array ``samples``: uint8 (values 0..255) or float (``--value-range``:
  ``unit`` [0, 1] or ``signed`` [-1, 1]),
  shaped ``[N, H, W, C]`` (as EDM and score_sde write them), ``[N, C, H, W]`` or ``[N, H, W]``, C = 1 or 3;
- a folder of PNG / JPEG images, all of one size;
- a data set name given to ``sdegen.data.get_dataset`` (floats in [0, 1]), with ``--data-root``, ``--split``.
A reference may also be a statistics ``.npz`` written by ``sdegen fid-stats``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import UsageError, pick_device, positive_int

HELP = "FID (Inception-v3) or FD-digits of samples against reference statistics or a data set"

METRICS = ("fid", "fd-digits")
LABELS = {"fid": "FID", "fd-digits": "FD-digits"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VALUE_RANGES = {"unit": (0.0, 1.0), "signed": (-1.0, 1.0)}


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``fid`` and ``fid-stats``."""
    parser.add_argument("--metric", default="fid", choices=METRICS,
                        help="fid: Inception-v3 pool features; fd-digits: the 8x8 digits CNN shipped with sdegen")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="weights-inception-2015-12-05-6726825d.pth (else $SDEGEN_INCEPTION_WEIGHTS, "
                             "else torch hub's cache or a download)")
    parser.add_argument("--value-range", default="unit", choices=tuple(VALUE_RANGES),
                        help="range of float samples in .npz files: unit [0, 1] or signed [-1, 1] "
                             "(uint8 is always 0..255)")
    parser.add_argument("--data-root", default="data", help="folder of the data sets")
    parser.add_argument("--split", default="train", help="data set split")
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", help="samples .npz (array 'samples') or a folder of PNG/JPEG images")
    parser.add_argument("--ref", required=True,
                        help="statistics .npz from `sdegen fid-stats`, samples .npz, image folder or data set name")
    parser.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                        help="split the samples into K disjoint blocks and report min and mean ± std")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    add_source_arguments(parser)


# --- sources --------------------------------------------------------------------------------

class _ImageFolder:
    """PNG / JPEG files of a folder as uint8 ``[C, H, W]`` tensors, in sorted name order."""

    def __init__(self, folder: Path):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UsageError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        self.shape = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as im:
            a = np.asarray(im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB"))
        t = torch.from_numpy(a.copy())
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
        if self.shape is None:
            self.shape = t.shape
        elif t.shape != self.shape:
            raise UsageError(f"{self.files[i]} is {list(t.shape)} but {self.files[0].name} is {list(self.shape)}; "
                             "all images must have one size")
        return t


def _npz_keys(path: Path) -> list[str]:
    """Names of the arrays in an .npz file (no pickles are loaded)."""
    import numpy as np

    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError or zipfile errors on junk
        raise UsageError(f"{path}: not a readable .npz file ({e})")
    if not hasattr(z, "files"):
        raise UsageError(f"{path}: a single .npy array, not an .npz file")
    with z:
        return list(z.files)


def _npz_images(path: Path, value_range: tuple[float, float]):
    """``(images [N, C, H, W], value_range)`` from the array ``samples`` of an .npz file."""
    import numpy as np

    keys = _npz_keys(path)
    if "samples" not in keys:
        raise UsageError(f"{path}: no array 'samples' (has {', '.join(keys) or 'nothing'})")
    with np.load(path, allow_pickle=False) as z:
        a = z["samples"]
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif not (a.ndim == 4 and a.shape[1] in (1, 3)):
        raise UsageError(f"{path}: 'samples' has shape {list(a.shape)}; accepted: [N, H, W, C], [N, C, H, W] "
                         "or [N, H, W] with C = 1 or 3")
    if a.dtype == np.uint8:
        return a, None
    if a.dtype.kind != "f":
        raise UsageError(f"{path}: 'samples' has dtype {a.dtype}; accepted: uint8 or float")
    return np.ascontiguousarray(a), value_range


def load_source(source: str, args: argparse.Namespace):
    """``(images, value_range)`` for a samples .npz, an image folder or a data set name."""
    value_range = VALUE_RANGES[args.value_range]
    path = Path(source)
    if path.is_dir():
        return _ImageFolder(path), None
    if path.is_file():
        return _npz_images(path, value_range)
    if path.suffix or "/" in source or "\\" in source:
        raise UsageError(f"{source}: no such file or folder")
    from sdegen.data import get_dataset  # a data set name

    try:
        return get_dataset(source, args.data_root, split=args.split), (0.0, 1.0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(f"data set {source!r}: {e}")


def make_extractor(args: argparse.Namespace):
    if args.metric == "fd-digits":
        from sdegen.metrics.fd_digits import DigitsFeatures
        return DigitsFeatures()
    from sdegen.metrics.inception import InceptionV3
    try:
        return InceptionV3(args.inception_weights, device=pick_device(args.device))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e))


def source_features(source: str, extractor, args: argparse.Namespace):
    """Features ``[N, D]`` of all images of ``source``."""
    from sdegen.metrics.frechet import extract_features

    images, value_range = load_source(source, args)
    try:
        return extract_features(extractor, images, value_range=value_range, batch_size=args.batch_size,
                                progress=sys.stderr.isatty())
    except ValueError as e:
        raise UsageError(f"{source}: {e}")


def warn_if_few(metric: str, count: int) -> None:
    from sdegen.metrics.inception import FID_UNBIASED_COUNT

    if metric == "fid" and count < FID_UNBIASED_COUNT:
        print(f"warning: FID from {count} < {FID_UNBIASED_COUNT} samples is biased upwards; compare only FIDs "
              "made with the same sample count", file=sys.stderr)


def _reference(ref: str, extractor, args: argparse.Namespace):
    """Reference statistics: a statistics file, or computed from a source."""
    from sdegen.metrics.frechet import FeatureStats, load_stats

    path = Path(ref)
    if path.is_file() and path.suffix == ".npz":
        if "mu" in _npz_keys(path):
            try:
                stats = load_stats(path)
            except ValueError as e:
                raise UsageError(str(e))
            if (stats.extractor, stats.weights_sha256) != (extractor.name, extractor.weights_sha256):
                raise UsageError(
                    f"{ref} was made with {stats.extractor} (weights sha256 {stats.weights_sha256[:12]}), but "
                    f"--metric {args.metric} uses {extractor.name} (weights sha256 "
                    f"{extractor.weights_sha256[:12]}); make the reference with the same --metric and weights")
            return stats
    feats = source_features(ref, extractor, args)
    return FeatureStats.from_features(feats, extractor.name, extractor.weights_sha256)


def run(args: argparse.Namespace) -> int:
    from sdegen.metrics.frechet import fid_from_stats, split_stats, summarize

    extractor = make_extractor(args)
    ref = _reference(args.ref, extractor, args)
    feats = source_features(args.samples, extractor, args)
    if len(feats) < 2 * args.seeds:
        raise UsageError(f"{len(feats)} samples cannot make {args.seeds} blocks of at least 2")
    blocks = split_stats(feats, args.seeds, extractor.name, extractor.weights_sha256)
    try:
        result = summarize([fid_from_stats(b, ref) for b in blocks])
    except ValueError as e:
        raise UsageError(f"{args.samples} vs {args.ref}: {e}")
    warn_if_few(args.metric, min(b.count for b in blocks))

    label = LABELS[args.metric]
    where = f"{len(feats)} samples of {args.samples} vs {args.ref} ({ref.count} images), {extractor.name}"
    if args.seeds == 1:
        print(f"{label} {result['min']:.4f}  ({where})")
    else:
        print(f"{label} min {result['min']:.4f}  mean {result['mean']:.4f} ± {result['std']:.4f}  over "
              f"{args.seeds} blocks of {blocks[-1].count}+ samples ({where})")
    if args.json:
        record = {"metric": args.metric, "samples": args.samples, "ref": args.ref, "count": len(feats),
                  "ref_count": ref.count, "blocks": args.seeds, "extractor": extractor.name,
                  "weights_sha256": extractor.weights_sha256, **result}
        try:
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        except OSError as e:
            raise UsageError(f"cannot write {args.json}: {e}")
    return 0
