"""``sdegen fid-stats``: reference statistics (mean, covariance of features) for ``sdegen fid``.

The source is a data set name, a samples ``.npz`` or an image folder (see :mod:`sdegen.cli.fid`).
The file records the feature extractor and the sha256 of its weights, so that ``sdegen fid``
refuses to compare it with features of another network.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError
from .fid import add_source_arguments, make_extractor, source_features, warn_if_few

HELP = "reference statistics for `sdegen fid` from a data set, samples .npz or image folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="data set name (e.g. cifar10), samples .npz or a folder of images")
    parser.add_argument("--out", required=True, help="statistics file to write (.npz)")
    add_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sdegen.metrics.frechet import FeatureStats, save_stats

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UsageError(f"--out {args.out}: the statistics file name must end in .npz")
    if not out.parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {out.parent} does not exist")
    extractor = make_extractor(args)
    feats = source_features(args.source, extractor, args)
    if len(feats) < 2:
        raise UsageError(f"{args.source}: statistics need at least 2 images, got {len(feats)}")
    stats = FeatureStats.from_features(feats, extractor.name, extractor.weights_sha256)
    save_stats(out, stats)
    warn_if_few(args.metric, stats.count)
    print(f"wrote {out}: statistics of {stats.count} images of {args.source} ({extractor.name}, "
          f"weights sha256 {extractor.weights_sha256[:12]})")
    return 0
