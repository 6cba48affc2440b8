"""Evaluation of a generator: FID and KID against the training data, the memorization
audit, sample grids, and their logging into MLflow.

The pipeline calls :func:`evaluate_generator` after training (``pipelines/steps/run.py``)
and ``dcgan evaluate`` on any checkpoint or registered model
(``pipelines/steps/evaluate.py``); the training loop uses the lighter
:class:`pipelines.evaluation.in_training.TrainingEvaluator`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan import fid
from gan import memorization as mem
from gan.images import grid, to_model_input
from pipelines.config import ConfigError, PipelineConfig
from pipelines.dataset.format import read_manifest
from pipelines.dataset.rows import ROWS_PER_CHUNK, dataset_chunks, read_rows, split_rows
from pipelines.errors import EvaluationError
from pipelines.evaluation.cache import AuditIndex, audit_index, reference_stats
from pipelines.evaluation.heldout import heldout_evaluation
from pipelines.evaluation.metrics import fid_kid, has_heldout, metric_key, sample_tag
from pipelines.evaluation.pool import WorkerPool, put_generator, using_pool

SAMPLES_PER_TASK = 500  # one task's share of generated samples
GRID_SAMPLES = 64
AUDIT_GRID_ROWS = 8


@dataclass
class EvaluationResult:
    metrics: dict[str, float]  # fid_<n>, kid_<n>, kid_<n>_std, audit_* (named with their sample counts)
    audit: dict | None  # the audit report (JSON-able)
    grids: dict[str, Path]  # name -> PNG
    samples: int
    audit_samples: int
    seconds: float
    copying: dict | None = None  # the nearest-neighbour copying audit against held-out images (JSON-able)

    @property
    def images(self) -> list[Path]:
        return list(self.grids.values())


def evaluate_generator(generator: torch.nn.Module, dataset_uri: str, cfg: PipelineConfig, *,
                       samples: int | None = None, audit_samples: int | None = None, out_dir: str | Path | None = None,
                       seed: int = 0, progress: bool = True,
                       manifest: dict | None = None, rows_per_chunk: int = ROWS_PER_CHUNK,
                       autoencoder_steps: int | None = None, samples_per_task: int = SAMPLES_PER_TASK,
                       pool: WorkerPool | None = None) -> EvaluationResult:
    """FID/KID of ``samples`` generated images against the training images and, when the
    dataset holds some out, against the held-out ones (with precision/recall,
    density/coverage and the nearest-neighbour copying audit); the paper's hash audit of
    ``audit_samples`` of them; grids are written under ``out_dir`` (default: a temporary folder).

    Without a ``pool`` it runs here (on this process's GPU if it has one); a
    :class:`WorkerPool` of Ray actors spreads it over them, and keeps the actors (and
    their loaded networks) from one evaluation to the next.
    """
    started = time.time()
    manifest = manifest or read_manifest(dataset_uri)
    n = samples or cfg.eval.fid_samples
    m = min(n, audit_samples or cfg.eval.audit_samples) if cfg.eval.audit else 0
    _check(generator, n, manifest, dataset_uri)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="dcgan-eval-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    grids, copying, report = {}, None, None
    with using_pool(pool, progress=progress) as pool:
        ref = reference_stats(dataset_uri, manifest, pool=pool, batch_size=cfg.eval.batch_size,
                              rows_per_chunk=rows_per_chunk, progress=progress, images=cfg.eval.reference_images)
        stats, features, images = _generate(pool, generator, n, max(m, GRID_SAMPLES), seed, cfg, samples_per_task)
        metrics = fid_kid(ref, stats, features, cfg, seed)
        if has_heldout(manifest):
            held, copying, copying_grid = heldout_evaluation(
                ref, stats, features, images, dataset_uri, manifest, cfg, train_fid=metrics[metric_key("fid", n)],
                pool=pool, out_dir=out_dir, seed=seed, progress=progress, rows_per_chunk=rows_per_chunk)
            metrics |= held
            grids |= {"copying": copying_grid} if copying_grid else {}
        index = audit_index(dataset_uri, manifest, pool=pool, rows_per_chunk=rows_per_chunk,
                            steps=autoencoder_steps or cfg.eval.audit_autoencoder_steps,
                            progress=progress) if m else None
    grids["samples"] = _save_png(grid_of(images[:GRID_SAMPLES]), out_dir / f"samples-{sample_tag(n)}.png")
    if index is not None:
        report, audit_metrics, audit_grid = _audit_samples(images[:m], index, dataset_uri, manifest,
                                                           rows_per_chunk, out_dir)
        metrics |= audit_metrics
        grids |= {"audit": audit_grid} if audit_grid else {}
    return EvaluationResult(metrics, report, grids, n, m, time.time() - started, copying)


def _check(generator: torch.nn.Module, n: int, manifest: dict, dataset_uri: str) -> None:
    if n < 2:
        raise ConfigError(f"eval.fid_samples must be at least 2 (got {n})")
    made = getattr(generator, "resolution", None)
    if made and made != manifest["resolution"]:
        raise EvaluationError(f"the generator makes {made}x{made} images but the dataset at {dataset_uri} holds "
                              f"{manifest['resolution']}x{manifest['resolution']}: evaluate against its training dataset")


def _generate(pool: WorkerPool, generator: torch.nn.Module, n: int, keep_images: int, seed: int, cfg: PipelineConfig,
              samples_per_task: int) -> tuple[fid.FeatureStats, np.ndarray, np.ndarray]:
    """Statistics of ``n`` samples, features of (up to KID's count of) them, and the uint8
    images of the first ``keep_images``, generated and embedded on the pool's workers."""
    gen_ref = put_generator(generator, pool.workers)
    slices = [(s, min(samples_per_task, n - s)) for s in range(0, n, samples_per_task)]
    parts = pool.map("generated", [(gen_ref, s, c, seed, cfg.eval.batch_size, keep_images) for s, c in slices],
                     [c for _, c in slices], f"generated samples ({sample_tag(n)})")
    return (sum((p[0] for p in parts), fid.FeatureStats.empty()), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def _audit_samples(images: np.ndarray, index: AuditIndex, dataset_uri: str, manifest: dict, rows_per_chunk: int,
                   out_dir: Path) -> tuple[dict, dict[str, float], Path | None]:
    """The paper's hash audit of generated uint8 images against the training images (never
    the held-out ones): (report, metrics, grid of the closest pairs)."""
    resolution = manifest["resolution"]
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    train, _ = split_rows(dataset_uri, manifest, rows_per_chunk)
    views = mem.audit_views(images)
    result = mem.audit(views, index.autoencoder.hash_bits(views), index.bits[train],
                       lambda idx: read_rows(chunks, train[idx], resolution),
                       device="cuda" if torch.cuda.is_available() else "cpu")  # M x N Hamming distances
    report = result.report | {"autoencoder_final_loss": index.losses[-1] if index.losses else None}
    metrics = {metric_key("audit_exact_collisions", len(images)): report["exact_collision_fraction"],
               metric_key("audit_flagged", len(images)): report["flagged_fraction"],
               metric_key("audit_median_hamming", len(images)): report["hamming_to_nearest"]["quantiles"]["p50"]}
    pairs = result.pairs[:AUDIT_GRID_ROWS]
    if not pairs:
        return report, metrics, None
    neighbours = read_rows(chunks, train[np.array([nb for _, nb in pairs]).ravel()], resolution)
    rows = mem.audit_grid_images(images[[s for s, _ in pairs]], neighbours.reshape(len(pairs), -1, resolution, resolution, 3))
    return report, metrics, _save_png(grid_of(rows, nrow=rows.shape[0] // len(pairs)), out_dir / f"audit-{sample_tag(len(images))}.png")


def grid_of(images_uint8: np.ndarray, nrow: int | None = None) -> np.ndarray:
    return grid(to_model_input(np.ascontiguousarray(images_uint8)), nrow=nrow)


def _save_png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image).save(path)
    return path




def log_evaluation(result: EvaluationResult, tracking_uri: str, run_id: str | None = None, step: int = 0,
                  experiment: str = "dcgan-lsun-bedroom", run_name: str = "evaluate", tags: dict | None = None,
                  manifest: dict | None = None, dataset_uri: str | None = None, model_id: str | None = None) -> str:
    """Metrics, the audit report and the grids of one evaluation into an MLflow run
    (a new, finished run in ``experiment`` when ``run_id`` is None); returns the run id.

    With the dataset's ``manifest`` and ``dataset_uri`` the run gets it as an input and the
    metrics are linked to it; with a logged model's ``model_id`` they are linked to it too."""
    import mlflow

    from pipelines.records import lineage, tracking

    client = mlflow.MlflowClient(tracking_uri)
    new_run = run_id is None
    if new_run:
        experiment_id = tracking.configure(tracking_uri, experiment)  # artifacts beside an embedded SQLite store
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
    link = {"model_id": model_id}
    if manifest is not None and dataset_uri:
        lineage.log_dataset(manifest, dataset_uri, "evaluation", run_id=run_id, tracking_uri=tracking_uri)
        link |= {"dataset_name": lineage.dataset_name(dataset_uri), "dataset_digest": lineage.digest(manifest)}
    for name, value in result.metrics.items():
        client.log_metric(run_id, name, float(value), step=step, **link)
    if result.audit is not None:
        client.log_dict(run_id, result.audit, f"evaluation/audit-{sample_tag(result.audit_samples)}-step{step:07d}.json")
    if result.copying is not None:
        client.log_dict(run_id, result.copying, f"evaluation/copying-{result.copying['samples']}-step{step:07d}.json")
    for path in result.grids.values():
        client.log_artifact(run_id, str(path), f"evaluation/step{step:07d}")
    if new_run:
        client.set_terminated(run_id)
    return run_id
