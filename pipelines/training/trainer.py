"""Distributed DCGAN training on Ray Train: the driver side.

:func:`fit` builds the ``TorchTrainer`` that runs :func:`pipelines.training.loop.train_loop_per_worker`
on every worker: Algorithm 1 from ``gan.adversarial`` with both networks under DDP, its
own shard of the Parquet dataset, and per-rank noise. Checkpoints (G, D, both
optimizers, counters, fixed noise, data position, config and the metrics not yet
committed to MLflow) go to ``<storage>/checkpoints/<run name>``, local or S3; a dead
worker restarts the group from the last one (``FailureConfig``), and
``train.resume_from=<checkpoint>`` continues a previous run by hand, in the same MLflow
run. The driver's sequence around it (checks, Ray, the dataset, the MLflow run) is
:mod:`pipelines.driver.session`, which every step and sweep trial uses.
"""

from __future__ import annotations

from typing import Callable

from pipelines.cluster import storage
from pipelines.records import tracking
from pipelines.training.checkpoints import checkpoint_uri, load_state
from pipelines.cluster.connect import init_ray
from pipelines.config import PipelineConfig
from pipelines.dataset.streaming import train_dataset
from pipelines.dataset.format import read_manifest
from pipelines.training.loop import train_loop_per_worker

def fit(cfg: PipelineConfig, *, run_name: str, manifest: dict | None = None, tracking_uri: str | None = None,
        mlflow_run_id: str | None = None,
        evaluator: Callable | None = None, callbacks: list | None = None, keep_best_by: str | None = None,
        stop_signal=None):
    """Run the TorchTrainer; returns Ray Train's Result (result.checkpoint: the last one).

    ``evaluator(generator, iteration) -> {metric: value}`` runs on every rank every
    ``eval.fid_every`` iterations (it may use torch.distributed collectives); ``keep_best_by`` keeps the checkpoints with the lowest
    value of that metric instead of the latest ones (every checkpoint must report it).
    ``stop_signal``: the actor of :func:`pipelines.training.stopping.graceful_stop`, which
    the workers ask whether to stop early with a final checkpoint. ``manifest``: the
    dataset's, as the driver session has it (read here only when not given), handed to the
    workers so that nothing reads it again. A run of an existing ``run_name`` in the
    storage continues from its newest committed checkpoint (Ray Train V2).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg)
    manifest = manifest or read_manifest(cfg.dataset_uri)
    if manifest["resolution"] != cfg.model.resolution:
        raise ValueError(f"model.resolution is {cfg.model.resolution} but the dataset at {cfg.dataset_uri} holds "
                         f"{manifest['resolution']}px images: ingest it at {cfg.model.resolution}px or change model.resolution")
    fs, path = storage.filesystem(cfg.checkpoints_uri)
    resources = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.worker_resources}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"pipeline": cfg.model_dump(), "manifest": manifest, "tracking_uri": tracking_uri,
                           "mlflow_run_id": mlflow_run_id, "evaluator": evaluator, "stop_signal": stop_signal},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.scaling.placement_strategy),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=keep_best_by,
                                               checkpoint_score_order="min"),
            callbacks=callbacks or [],
        ),
        # For shards too big to hold in memory; a worker that holds its shard never reads it.
        datasets={"train": _quiet(train_dataset(cfg.dataset_uri, manifest))},
    )
    try:
        result = trainer.fit()  # Ray Train V2 raises the run's error here
    except Exception as e:
        _storage_down(cfg, run_name, e)
        raise
    return _finished(cfg, result, tracking_uri, stop_signal)


def _finished(cfg: PipelineConfig, result, tracking_uri: str | None, stop_signal=None):
    """The result of a run that trained every iteration, or that a job stop asked to end
    (pipelines.training.stopping); a run that stopped early otherwise stopped because
    MLflow stayed away (pipelines.training.outages): say so."""
    from pipelines.training.stopping import stop_requested

    done = (result.metrics or {}).get("iteration", cfg.train.iterations)
    if stop_requested(stop_signal):
        return result
    if result.error is None and done < cfg.train.iterations:
        where = checkpoint_uri(result) if result.checkpoint else "(none)"
        raise tracking.TrackingUnavailable(
            f"training stopped after the checkpoint of iteration {done} of {cfg.train.iterations}: the MLflow "
            f"tracking server {tracking_uri} did not answer for more than tracking.outage_timeout_s="
            f"{cfg.tracking.outage_timeout_s:g}s. The checkpoint {where} holds the metrics not yet logged; once the "
            f"server is back, continue with train.resume_from={where}")
    return result


def _storage_down(cfg: PipelineConfig, run_name: str, error: Exception) -> None:
    """A run that failed while its S3 storage does not answer (a checkpoint's upload, or
    Ray Train's own record of its checkpoints): say that, and how to resume, rather than
    Ray's traceback. A checkpoint folder holds one file, written by one atomic PUT, so
    ``train.resume_from=<the run's folder>`` picks its newest complete checkpoint."""
    if not storage.is_s3(cfg.checkpoints_uri):
        return
    try:
        storage.check_writable(cfg.checkpoints_uri)
        return
    except storage.StorageError as e:
        down = str(e)
    run_dir = storage.join(cfg.checkpoints_uri, run_name)
    raise storage.StorageError(
        f"training stopped: its checkpoint storage does not answer ({down}). Its checkpoints are under {run_dir}; "
        f"once the storage is back, continue from the newest complete one with train.resume_from={run_dir}") from error


def _quiet(dataset):
    """No Ray Data progress bars for the per-epoch feed: the training log says it all."""
    dataset.context.enable_progress_bars = False
    return dataset


def make_evaluator(cfg: PipelineConfig, manifest: dict) -> Callable | None:
    """The in-training FID/KID evaluator (every ``eval.fid_every`` iterations), or None when off."""
    if not cfg.eval.fid_every:
        return None
    from pipelines.evaluation.cache import reference_stats
    from pipelines.evaluation.metrics import has_heldout
    from pipelines.evaluation.in_training import TrainingEvaluator

    # Computed (or found in the cache) here, before training, not by rank 0 alone mid-run.
    reference_stats(cfg.dataset_uri, manifest, cfg)
    if has_heldout(manifest):
        reference_stats(cfg.dataset_uri, manifest, cfg, split="heldout")
    return TrainingEvaluator(cfg, manifest)
