"""``sdegen fid``: FID (or FD-digits) of samples against reference statistics or a data set.

Samples and sources (shared with ``sdegen fid-stats``):
- ``FILE.npz`` holding an array ``samples``: uint8 (values 0..255) or float (``--value-range``:
  ``unit`` [0, 1] or ``signed`` [-1, 1]),
  shaped ``[N, H, W, C]`` (as EDM and score_sde write them), ``[N, C, H, W]`` or ``[N, H, W]``, C = 1 or 3;
- a folder of PNG / JPEG images, all of one size;
- a data set name given to ``sdegen.data.get_dataset`` (floats in [0, 1]), with ``--data-root``, ``--split``.
A reference may also be a statistics ``.npz`` written by ``sdegen fid-stats``.

``--metrics fid,kid,is,prc`` computes the evaluation suite in one run (:mod:`sdegen.metrics.suite`): each
metric on every block of ``--seeds``, printed as one JSON line with its mean and standard deviation over the
blocks. Every Frechet distance reports its small-sample bias scale. Files are checked before any network is
loaded, so a missing or unreadable file is the error reported.
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
    parser.add_argument("--metrics", default=None, metavar="LIST",
                        help="comma-separated suite, e.g. fid,kid,is,prc (also fd-digits): one JSON line per "
                             "metric (precision and recall: one each) with mean and std over the --seeds blocks; "
                             "kid and prc need --ref as images (a data set, samples .npz or folder)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    add_source_arguments(parser)
    add_prc_arguments(parser)


def add_prc_arguments(parser: argparse.ArgumentParser) -> None:
    """The features of precision/recall (``--metrics ...,prc``), for ``fid`` and ``table``."""
    parser.add_argument("--prc-features", default="vgg16", choices=("vgg16", "inception"),
                        help="precision/recall on VGG-16 fc2 features (Kynkaanniemi et al. 2019, torch-fidelity's "
                             "default) or on the Inception pool features")
    parser.add_argument("--vgg16-weights", default=None, metavar="PATH",
                        help="torchvision's vgg16-397923af.pth (else $SDEGEN_VGG16_WEIGHTS or torch hub's cache)")


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

        try:
            with Image.open(self.files[i]) as im:
                a = np.asarray(im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB"))
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise UsageError(f"{self.files[i]}: not a readable image ({e})")
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
    try:
        with np.load(path, allow_pickle=False) as z:
            a = z["samples"]
    except ValueError:  # numpy refuses object arrays without allow_pickle
        raise UsageError(f"{path}: 'samples' holds Python objects (an object array), which this tool does not "
                         "unpickle; save a uint8 or float array")
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
        if path.suffix.lower() != ".npz":
            raise UsageError(f"{source}: not an .npz file nor a folder of images (accepted: a samples .npz with an "
                             f"array 'samples', a folder of {'/'.join(IMAGE_SUFFIXES)} images, a data set name)")
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


def source_features(source: str, extractor, args: argparse.Namespace, opened=None):
    """Features ``[N, D]`` of all images of ``source`` (``opened``: its :func:`load_source` result, if done)."""
    from sdegen.metrics.frechet import extract_features

    images, value_range = opened if opened is not None else load_source(source, args)
    try:
        return extract_features(extractor, images, value_range=value_range, batch_size=args.batch_size,
                                progress=sys.stderr.isatty())
    except ValueError as e:
        raise UsageError(f"{source}: {e}")


def warn_if_few(metric: str, count: int, bias: float | None = None) -> None:
    """Warn that a Frechet distance from ``count`` samples is biased upwards, below the metric's customary
    count (FID: 50,000; FD-digits: the 360 held-out digits); ``bias``: the bias scale to report
    (:func:`sdegen.metrics.suite.frechet_bias_scale`)."""
    from sdegen.metrics.fd_digits import N_HELD_OUT
    from sdegen.metrics.inception import FID_UNBIASED_COUNT

    customary = {"fid": FID_UNBIASED_COUNT, "fd-digits": N_HELD_OUT}.get(metric)
    if customary is not None and count < customary:
        scale = "" if bias is None else f" (the squared-mean term alone by {bias:.4g}: tr(S)/n of both sets)"
        print(f"warning: {LABELS[metric]} from {count} < {customary} samples is biased upwards{scale}; compare only "
              "values made with the same sample count", file=sys.stderr)


def open_reference(ref: str, args: argparse.Namespace):
    """A reference, read before any network runs: statistics of a ``sdegen fid-stats`` file, or
    ``(images, value_range)`` of a source."""
    from sdegen.metrics.frechet import load_stats

    path = Path(ref)
    if path.is_file() and path.suffix == ".npz" and "mu" in _npz_keys(path):
        try:
            return load_stats(path)
        except ValueError as e:
            raise UsageError(str(e))
    return load_source(ref, args)


def reference_stats(ref: str, extractor, args: argparse.Namespace, opened=None):
    """Reference statistics: those of a statistics file (made with ``extractor``), or computed from a source."""
    from sdegen.metrics.frechet import FeatureStats

    opened = opened if opened is not None else open_reference(ref, args)
    if isinstance(opened, FeatureStats):
        if (opened.extractor, opened.weights_sha256) != (extractor.name, extractor.weights_sha256):
            raise UsageError(
                f"{ref} was made with {opened.extractor} (weights sha256 {opened.weights_sha256[:12]}), but "
                f"--metric {args.metric} uses {extractor.name} (weights sha256 "
                f"{extractor.weights_sha256[:12]}); make the reference with the same --metric and weights")
        return opened
    feats = source_features(ref, extractor, args, opened)
    return FeatureStats.from_features(feats, extractor.name, extractor.weights_sha256)


def run(args: argparse.Namespace) -> int:
    from sdegen.metrics.frechet import fid_from_stats, split_stats, summarize

    from sdegen.metrics.suite import frechet_bias_scale

    if args.metrics is not None:
        return run_suite(args)
    samples = load_source(args.samples, args)       # files first: their errors before any network loads
    opened_ref = open_reference(args.ref, args)
    extractor = make_extractor(args)
    ref = reference_stats(args.ref, extractor, args, opened_ref)
    feats = source_features(args.samples, extractor, args, samples)
    if len(feats) < 2 * args.seeds:
        raise UsageError(f"{len(feats)} samples cannot make {args.seeds} blocks of at least 2")
    blocks = split_stats(feats, args.seeds, extractor.name, extractor.weights_sha256)
    try:
        result = summarize([fid_from_stats(b, ref) for b in blocks])
    except ValueError as e:
        raise UsageError(f"{args.samples} vs {args.ref}: {e}")
    result["bias_scale"] = max(frechet_bias_scale(b, ref) for b in blocks)
    warn_if_few(args.metric, min(b.count for b in blocks), result["bias_scale"])

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


def make_extractors(metrics: list[str], args: argparse.Namespace) -> dict:
    """The feature extractors the metrics need, by kind (see :data:`sdegen.metrics.suite.SUITE`)."""
    from sdegen.metrics.suite import SUITE

    kinds = {SUITE[m] for m in metrics}
    out = {}
    if "digits" in kinds:
        out["digits"] = make_extractor(argparse.Namespace(**{**vars(args), "metric": "fd-digits"}))
    if "pool" in kinds:
        out["pool"] = make_extractor(argparse.Namespace(**{**vars(args), "metric": "fid"}))
    if "prc" in kinds:
        if getattr(args, "prc_features", "vgg16") == "inception":
            out["prc"] = out.get("pool") or make_extractor(argparse.Namespace(**{**vars(args), "metric": "fid"}))
        else:
            from sdegen.metrics.vgg import VGG16
            try:
                out["prc"] = VGG16(args.vgg16_weights, device=pick_device(args.device))
            except (FileNotFoundError, ValueError) as e:
                raise UsageError(str(e))
    if "logits" in kinds:
        from sdegen.metrics.inception import InceptionV3
        try:
            out["logits"] = InceptionV3(args.inception_weights, device=pick_device(args.device),
                                        layer="logits_unbiased")
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e))
    return out


def check_suite_reference(metrics: list[str], ref: str, opened) -> None:
    """A statistics file (``opened``: :func:`open_reference`'s result) cannot give KID nor precision/recall."""
    from sdegen.metrics import suite
    from sdegen.metrics.frechet import FeatureStats

    wants_features = [m for m in metrics if m in suite.NEEDS_REFERENCE_FEATURES]
    if wants_features and isinstance(opened, FeatureStats):
        raise UsageError(f"{', '.join(wants_features)} need the reference's features, but {ref} holds only "
                         "statistics (mean, covariance); give --ref as a data set, samples .npz or image folder")


def suite_references(extractors: dict, ref: str, args: argparse.Namespace, opened) -> dict:
    """The reference of each feature kind (:func:`sdegen.metrics.suite.evaluate`): the features of its
    images, or the statistics of a ``sdegen fid-stats`` file (checked against the extractor)."""
    from sdegen.metrics.frechet import FeatureStats

    if isinstance(opened, FeatureStats):
        return {kind: reference_stats(ref, ex, args, opened) for kind, ex in extractors.items() if kind != "logits"}
    return {kind: source_features(ref, ex, args, opened) for kind, ex in extractors.items() if kind != "logits"}


def run_suite(args: argparse.Namespace) -> int:
    """``--metrics``: every metric of the list on each block of ``--seeds``, one JSON line per metric."""
    from sdegen.metrics import suite

    try:
        metrics = suite.parse_metrics(args.metrics)
    except ValueError as e:
        raise UsageError(f"--metrics: {e}")
    samples = load_source(args.samples, args)        # files first: their errors before any network loads
    opened_ref = open_reference(args.ref, args) if any(m != "is" for m in metrics) else None
    check_suite_reference(metrics, args.ref, opened_ref)
    extractors = make_extractors(metrics, args)
    feats = {kind: source_features(args.samples, ex, args, samples) for kind, ex in extractors.items()}
    n = len(next(iter(feats.values())))
    if n < 2 * args.seeds:
        raise UsageError(f"{n} samples cannot make {args.seeds} blocks of at least 2")
    references = suite_references(extractors, args.ref, args, opened_ref) if opened_ref is not None else {}
    try:
        records = suite.Suite(tuple(metrics), extractors, references, args.seeds).evaluate(feats)
    except ValueError as e:
        raise UsageError(f"{args.samples} vs {args.ref}: {e}")
    lines = []
    for r in records:
        if "bias_scale" in r:
            warn_if_few(r["metric"], r["block_count"], r["bias_scale"])
        lines.append({**r, "count": n, "samples": args.samples, **({"ref": args.ref} if "ref_count" in r else {})})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    print(text, end="")
    if args.json:
        try:
            Path(args.json).write_text(text)
        except OSError as e:
            raise UsageError(f"cannot write {args.json}: {e}")
    return 0
