"""Evaluation: Frechet distances (FID with torch-fidelity's Inception-v3, FD-digits), KID and Inception
Score, and distances for low-dimensional samples. torch-fidelity is imported only when used."""
from .fd_digits import DigitsCNN, DigitsFeatures, digits_stats, fd_digits, load_digits_split
from .frechet import (FeatureStats, extract_features, feature_stats, fid_from_stats, frechet_distance, load_stats,
                      save_stats, split_stats, summarize)
from .inception import InceptionV3, compute_stats, fid, inception_features, inception_score, resolve_inception_weights
from .lowdim import mmd_rbf, mode_stats, sliced_wasserstein
from .suite import SUITE, frechet_bias_scale, inception_score_from_logits, kid, precision_recall

__all__ = [
    "DigitsCNN", "DigitsFeatures", "digits_stats", "fd_digits", "load_digits_split",
    "FeatureStats", "extract_features", "feature_stats", "fid_from_stats", "frechet_distance", "load_stats",
    "save_stats", "split_stats", "summarize",
    "InceptionV3", "compute_stats", "fid", "inception_features", "inception_score", "kid",
    "resolve_inception_weights",
    "mmd_rbf", "mode_stats", "sliced_wasserstein",
    "SUITE", "frechet_bias_scale", "inception_score_from_logits", "precision_recall",
]
