"""How evaluation names its metrics, and FID/KID from statistics already computed.

A metric's name carries its sample count (``fid_10k``, ``kid_200``): FIDs of different
sample counts are not comparable, so they never share a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gan import fid

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from pipelines.evaluation.cache import ReferenceStats


def sample_tag(n: int) -> str:
    """How a sample count appears in metric names: 10000 -> '10k', 200 -> '200'."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def metric_key(metric: str, samples: int) -> str:
    """A metric's name with its sample count: ('fid', 10000) -> 'fid_10k'."""
    return f"{metric}_{sample_tag(samples)}"


def fid_kid(reference: ReferenceStats, stats: fid.FeatureStats, features: np.ndarray, cfg: PipelineConfig,
            seed: int = 0, against: str = "") -> dict[str, float]:
    """fid<against>_<n>, kid<against>_<n> and kid<against>_<n>_std of generated samples'
    statistics and (some of) their features; ``against="_heldout"`` names the held-out ones."""
    kid, kid_std = fid.kernel_inception_distance(reference.features, features, cfg.eval.kid_subsets,
                                                 cfg.eval.kid_subset_size, seed)
    return {metric_key("fid" + against, stats.count): reference.frechet.distance(stats.mean, stats.covariance),
            metric_key("kid" + against, stats.count): kid, metric_key("kid" + against, stats.count) + "_std": kid_std}


def has_heldout(manifest: dict) -> bool:
    """Whether the dataset holds images out of training (see gan/splits.py)."""
    return manifest.get("holdout", {}).get("images", 0) >= 2


def ranking_metric(manifest: dict, samples: int) -> str:
    """What the champion rule and the sweep's scheduler compare: FID against the held-out
    images when the dataset has them (a model that copies its training set cannot win
    there), else against the training images."""
    return metric_key("fid_heldout" if has_heldout(manifest) else "fid", samples)
