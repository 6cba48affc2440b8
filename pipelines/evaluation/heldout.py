"""Quality and memorization against the images training never saw.

Beside FID against the training set, a held-out split (``data.holdout``, chosen by
content hash at ingest) answers the two questions users ask of a run:

- is it good? FID and KID against the held-out images, the gap to the training-set
  FID, and improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage
  (Naeem et al. 2020) on the same Inception features, k=3;
- is it copying? each sample's distance to its nearest training image against the
  distances of held-out photos to theirs (:mod:`gan.copying`): a model whose samples
  sit closer to the training set than unseen photos do is copying, and the registry
  never makes it champion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan import fid
from gan.copying import CopyingThresholds, copying_audit, pairs_grid
from gan.quality_metrics import manifold_metrics
from pipelines.config import PipelineConfig
from pipelines.dataset.rows import ROWS_PER_CHUNK, dataset_chunks, read_rows
from pipelines.evaluation.cache import ReferenceStats, reference_stats
from pipelines.evaluation.metrics import fid_kid, metric_key, sample_tag
from pipelines.evaluation.pool import WorkerPool

COPYING_GRID_PAIRS = 16


def heldout_evaluation(reference: ReferenceStats, stats: fid.FeatureStats, features: np.ndarray, images: np.ndarray,
                       dataset_uri: str, manifest: dict, cfg: PipelineConfig, *, train_fid: float, pool: WorkerPool,
                       out_dir: Path, seed: int = 0, progress: bool = True,
                       rows_per_chunk: int = ROWS_PER_CHUNK) -> tuple[dict[str, float], dict, Path | None]:
    """(metrics, the copying report, a grid of the closest sample/training pairs) of generated
    samples: their statistics and features, and the uint8 images of the first of them."""
    heldout = reference_stats(dataset_uri, manifest, pool=pool, batch_size=cfg.eval.batch_size, split="heldout",
                              rows_per_chunk=rows_per_chunk, progress=progress, images=cfg.eval.reference_images)
    n = stats.count
    metrics = fid_kid(heldout, stats, features, cfg, seed, against="_heldout")
    metrics[metric_key("fid_gap", n)] = metrics[metric_key("fid_heldout", n)] - train_fid
    device = "cuda" if torch.cuda.is_available() else "cpu"
    manifold = manifold_metrics(heldout.features, features, device=device)
    metrics |= {metric_key(name, manifold.fake_count): value for name, value in manifold.as_metrics().items()}
    thresholds = CopyingThresholds(max_fraction_below=cfg.eval.copying_max_fraction,
                                   min_median_ratio=cfg.eval.copying_min_median_ratio)
    audited = features[:len(images)]  # the samples whose pixels are at hand, for the grid
    result = copying_audit(audited, reference.features, heldout.features, thresholds, device=device)
    m = len(audited)
    coverage = reference_coverage(len(reference.features), manifest)
    metrics |= {metric_key("copying_fraction_below_p1", m): result.report["fraction_below_heldout_p1"],
                metric_key("copying_median_ratio", m): result.report["median_ratio"],
                metric_key("copying", m): float(result.copying), "copying_reference_coverage": coverage["fraction"]}
    if coverage["fraction"] < 1 and progress:
        print(f"[evaluate] {coverage['note']}", flush=True)
    report = result.report | {"manifold": manifold.to_dict(), "heldout_images": heldout.stats.count,
                              "training_features": len(reference.features), "reference_coverage": coverage}
    pairs = result.pairs[:COPYING_GRID_PAIRS]
    if not pairs or len(reference.feature_rows) != len(reference.features):
        return metrics, report, None
    resolution = manifest["resolution"]
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    neighbours = read_rows(chunks, reference.feature_rows[[t for _, t in pairs]], resolution)
    grid = pairs_grid(images[[s for s, _ in pairs]], neighbours)
    path = out_dir / f"copying-{sample_tag(m)}.png"
    Image.fromarray(grid).save(path)
    return metrics, report, path


def reference_coverage(compared: int, manifest: dict) -> dict:
    """How much of the training set the copying audit compares samples with: a sample
    copied from a training image outside those ``compared`` (eval.reference_images, then
    KID's cap) has only unrelated images to be near, and is seen as a new image. The
    paper's hash audit (:mod:`gan.memorization`) compares against every training image."""
    training = int(manifest.get("holdout", {}).get("train_images", manifest["count"]))
    fraction = min(1.0, compared / training) if training else 1.0
    note = (f"copying audit: nearest neighbours among {compared:,} of {training:,} training images "
            f"({fraction:.2%}): it sees about that fraction of a copier's copies (raise eval.reference_images "
            "to widen it); the hash audit compares with all of them")
    return {"compared": compared, "training_images": training, "fraction": round(fraction, 6), "note": note}

