"""The evaluation suite papers report, on features already extracted: Frechet distance (FID / FD-digits)
with its small-sample bias scale, KID, Inception Score and precision/recall, each over disjoint blocks of
the samples (seeds) and summarised as mean and standard deviation. The metrics themselves are
torch-fidelity's (``kid_features_to_metric``, ``isc_features_to_metric``, ``prc_features_to_metric``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .frechet import FeatureStats, fid_from_stats

# name -> what it needs: "pool" (Inception pool features), "logits" (Inception logits), "digits" (digits CNN),
# "prc" (the precision/recall features: VGG-16 fc2 as in Kynkaanniemi et al. 2019 and torch-fidelity, or Inception's)
SUITE = {"fid": "pool", "fd-digits": "digits", "kid": "pool", "is": "logits", "prc": "prc"}
NEEDS_REFERENCE_FEATURES = ("kid", "prc")   # a statistics file (mean, covariance) is not enough for these
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000    # torch-fidelity's defaults
IS_SPLITS = 10                              # Salimans et al. 2016 / torch-fidelity
PRC_NEIGHBORHOOD = 3                        # k of Kynkaanniemi et al. 2019 / torch-fidelity


def parse_metrics(text: str) -> list[str]:
    """``"fid,kid,is,prc"`` -> the list, each name checked against :data:`SUITE` (ValueError otherwise)."""
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in SUITE]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or [text]}; accepted: {', '.join(SUITE)}")
    return list(dict.fromkeys(names))


def frechet_bias_scale(a: FeatureStats, b: FeatureStats) -> float:
    """Upward bias of the squared-mean term of the plug-in Frechet distance: ``E|m_a - m_b|^2 - |mu_a -
    mu_b|^2 = tr(S_a) / n_a + tr(S_b) / n_b`` (exact for independent samples). The covariance term adds a
    bias of the same order, linear in ``1/n`` (Chong & Forsyth 2020), so distances from different counts
    are not comparable."""
    return float(np.trace(a.sigma) / a.count + np.trace(b.sigma) / b.count)


def summary(values: Sequence[float]) -> dict:
    """``mean``, population ``std`` (over blocks), ``min``, ``max`` and the ``values``."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "values": v.tolist()}


def kid(features1, features2, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of the unbiased MMD^2 with a cubic
    polynomial kernel over random subsets, by torch-fidelity's ``kid_features_to_metric``.

    ``features*``: ``[N, D]`` (e.g. from :func:`inception_features`); needs N >= subset_size."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = (torch.as_tensor(np.asarray(f, dtype=np.float64)) for f in (features1, features2))
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {list(f1.shape)} and {list(f2.shape)}")
    if min(len(f1), len(f2)) < subset_size:
        raise ValueError(f"KID subset_size={subset_size} exceeds the sample counts {len(f1)} and {len(f2)}")
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed,
                                 verbose=False)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


def kid_value(samples: np.ndarray, reference: np.ndarray, seed: int = 2020) -> tuple[float, float, int]:
    """KID (Binkowski et al. 2018) by torch-fidelity: ``(mean, std over subsets, subset size)``; the subset
    size is torch-fidelity's 1000, or the smaller sample count."""
    size = min(KID_SUBSET_SIZE, len(samples), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples and 2 reference images, got {len(samples)} and "
                         f"{len(reference)}")
    mean, std = kid(samples, reference, subsets=KID_SUBSETS, subset_size=size, seed=seed)
    return float(mean), float(std), size


def inception_score_from_logits(logits, splits: int = IS_SPLITS, seed: int = 2020) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) of unbiased logits ``[N, 1008]``: mean and std over ``splits``,
    by torch-fidelity's ``isc_features_to_metric`` (samples shuffled with ``seed``)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.as_tensor(np.asarray(logits)).float()
    if logits.dim() != 2 or len(logits) < splits:
        raise ValueError(f"the Inception Score needs logits [N, C] with N >= splits={splits}, got {list(logits.shape)}")
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def precision_recall(samples: np.ndarray, reference: np.ndarray, k: int = PRC_NEIGHBORHOOD) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with ``k``-NN balls, by torch-fidelity's
    ``prc_features_to_metric`` (samples are its "generated" input)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(samples), len(reference)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples and reference images, got "
                         f"{len(samples)} and {len(reference)}")
    out = prc_features_to_metric(torch.as_tensor(np.asarray(samples)).float(),
                                 torch.as_tensor(np.asarray(reference)).float(), prc_neighborhood=k,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return float(out["precision"]), float(out["recall"])


def frechet_blocks(features: np.ndarray, blocks: Sequence[np.ndarray], reference: FeatureStats, name: str,
                   sha: str) -> tuple[list[float], list[float]]:
    """Frechet distance of each block of rows of ``features`` against ``reference``, and its bias scale."""
    values, biases = [], []
    for rows in blocks:
        stats = FeatureStats.from_features(features[rows], name, sha)
        values.append(fid_from_stats(stats, reference))
        biases.append(frechet_bias_scale(stats, reference))
    return values, biases


def evaluate(metrics: Sequence[str], features: Mapping[str, np.ndarray], blocks: Sequence[np.ndarray],
             references: Mapping[str, Any], extractors: Mapping[str, Any]) -> list[dict]:
    """Every metric of ``metrics`` (:func:`parse_metrics`) on each block of rows of the samples' features.

    Args:
        features: kind (a value of :data:`SUITE`) -> the samples' features ``[n, D]``.
        blocks: disjoint row indices of the samples (``np.array_split(np.arange(n), seeds)``).
        references: kind -> the reference's features ``[M, D]``, or its :class:`FeatureStats` (enough for
            the Frechet metrics only); not needed for ``"logits"`` (the Inception Score has no reference).
        extractors: kind -> the extractor (its ``name`` and ``weights_sha256``).

    Returns one record per metric (``prc``: ``precision`` and ``recall``): ``metric``, :func:`summary` of the
    per-block values, ``blocks``, ``block_count`` (the smallest block), ``extractor``, and per metric:
    ``bias_scale`` (Frechet: the largest over blocks), ``ref_count``, ``subset_std``/``subset_size``/
    ``subsets`` (KID), ``split_std``/``splits`` (IS), ``k`` (precision/recall). ValueError for a reference
    that cannot give the metric or too few samples."""
    block_count = min(len(b) for b in blocks)
    records = []

    def record(metric: str, values, kind: str, **extra) -> None:
        records.append({"metric": metric, **summary(values), "blocks": len(blocks), "block_count": block_count,
                        "extractor": extractors[kind].name, **extra})

    for metric in metrics:
        kind = SUITE[metric]
        feats, ref, ex = features[kind], references.get(kind), extractors[kind]
        if metric in NEEDS_REFERENCE_FEATURES and not isinstance(ref, np.ndarray):
            raise ValueError(f"{metric} needs the reference's features (images), not "
                             f"{'statistics' if isinstance(ref, FeatureStats) else 'nothing'}")
        if metric in ("fid", "fd-digits"):
            if not isinstance(ref, FeatureStats):
                ref = FeatureStats.from_features(ref, ex.name, ex.weights_sha256)
            values, biases = frechet_blocks(feats, blocks, ref, ex.name, ex.weights_sha256)
            record(metric, values, kind, bias_scale=max(biases), ref_count=ref.count)
        elif metric == "kid":
            out = [kid_value(feats[b], ref) for b in blocks]
            record("kid", [o[0] for o in out], kind, subset_std=[o[1] for o in out], subset_size=out[0][2],
                   subsets=KID_SUBSETS, ref_count=len(ref))
        elif metric == "is":
            splits = min(IS_SPLITS, block_count)
            out = [inception_score_from_logits(feats[b], splits=splits) for b in blocks]
            record("is", [o[0] for o in out], kind, split_std=[o[1] for o in out], splits=splits)
        else:  # prc: torch-fidelity's improved precision / recall, here on Inception pool features
            out = [precision_recall(feats[b], ref) for b in blocks]
            for i, name in enumerate(("precision", "recall")):
                record(name, [o[i] for o in out], kind, k=PRC_NEIGHBORHOOD, ref_count=len(ref))
    return records


@dataclass(frozen=True)
class Suite:
    """The metrics to compute on each set of samples (e.g. each cell of ``sdegen table``): ``metrics``
    (:func:`parse_metrics`), their ``extractors`` and ``references`` by kind (see :func:`evaluate`), and
    ``seeds``: the number of disjoint blocks the samples are split into."""

    metrics: tuple
    extractors: Mapping[str, Any]
    references: Mapping[str, Any]
    seeds: int = 1

    def check(self, n: int) -> None:
        """ValueError, before any sampling, if ``n`` samples (or the references) are too few for a metric."""
        if n < 2 * self.seeds:
            raise ValueError(f"{n} samples cannot make {self.seeds} blocks of at least 2")
        block = n // self.seeds
        for metric in self.metrics:
            ref = self.references.get(SUITE[metric])
            if metric in NEEDS_REFERENCE_FEATURES and not isinstance(ref, np.ndarray):
                raise ValueError(f"{metric} needs the reference's features (images), not "
                                 f"{'statistics' if isinstance(ref, FeatureStats) else 'nothing'}")
            if metric == "prc" and min(block, len(ref)) <= PRC_NEIGHBORHOOD:
                raise ValueError(f"precision/recall with k={PRC_NEIGHBORHOOD} needs more than {PRC_NEIGHBORHOOD} "
                                 f"samples per block and reference images, got {block} and {len(ref)}")
            if metric == "kid" and len(ref) < 2:
                raise ValueError(f"KID needs at least 2 reference images, got {len(ref)}")

    def evaluate(self, features: Mapping[str, np.ndarray]) -> list[dict]:
        """:func:`evaluate` on the samples' ``features`` (kind -> ``[n, D]``) split into ``seeds`` blocks."""
        n = len(next(iter(features.values())))
        self.check(n)
        return evaluate(self.metrics, features, np.array_split(np.arange(n), self.seeds), self.references,
                        self.extractors)
