"""What a training worker does when a service it needs stops answering mid-run.

- MLflow away: rank 0 keeps training; its :class:`pipelines.records.tracking.MetricBuffer`
  keeps what it could not send (inside every checkpoint too) and delivers it, in step
  order, at the first checkpoint after the server is back. A sample grid that cannot be
  uploaded is skipped with a warning. Past ``tracking.outage_timeout_s`` every rank
  stops right after a checkpoint (:func:`after_checkpoint`); the driver sees a run that
  ended before its last iteration and fails naming the tracking URI
  (:func:`pipelines.training.trainer.fit`).
- Storage away at a checkpoint: rank 0 (the rank that uploads it) waits for the
  storage with backoff for up to ``train.storage_timeout_s``, then fails with a message
  naming the location. Ray Train registers a checkpoint only after its upload
  succeeded, and ours is one file (an S3 PUT is atomic), so a failed upload never
  becomes a checkpoint that a resume would pick up: it resumes from the one before.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from pipelines.cluster import storage
from pipelines.records import tracking
from pipelines.training.worker import Worker

log = logging.getLogger("dcgan.train")


def wait_for_storage(worker: Worker, iteration: int) -> None:
    """Rank 0, before it uploads a checkpoint to S3: retry with backoff, then fail clearly."""
    cfg = worker.cfg
    if worker.rank != 0 or not storage.is_s3(cfg.checkpoints_uri):
        return
    failures = storage.wait_writable(cfg.checkpoints_uri, cfg.train.storage_timeout_s,
                                     f"the checkpoint of iteration {iteration} (train.storage_timeout_s="
                                     f"{cfg.train.storage_timeout_s:g}); the last complete checkpoint is unchanged "
                                     "and a resume starts from it")
    if failures:
        log.warning(f"[train] storage answered again after {failures} failed attempts; checkpointing iteration "
                    f"{iteration}")


def after_checkpoint(worker: Worker, iteration: int) -> bool:
    """Whether every rank stops now: MLflow has been away longer than
    ``tracking.outage_timeout_s`` (rank 0 knows; a broadcast tells every rank, so all
    stop after the same checkpoint). After the last checkpoint, rank 0 first waits for
    the server to take what it still holds (up to the same deadline)."""
    import torch.distributed as dist

    metrics = worker.metrics
    if worker.rank == 0 and metrics.down_since is not None:
        log.warning(f"[train] MLflow tracking server {worker.tracking_uri} away for {metrics.outage_seconds():.0f}s: "
                    f"{len(metrics.pending)} metric points kept (in the checkpoint too), training goes on")
        if iteration == worker.cfg.train.iterations:
            _drain(metrics)
    lost = torch.tensor([int(worker.rank == 0 and metrics.outage_exceeded())])
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(lost, src=0)
    if lost.item() and worker.rank == 0:
        log.error("[train] stopping after this checkpoint: " + metrics.outage_message())
    return bool(lost.item())


def _drain(metrics: tracking.MetricBuffer, every_s: float = 2.0) -> None:
    """The run's last metrics: retry until the server takes them or the deadline passes."""
    while metrics.pending and not metrics.outage_exceeded():
        time.sleep(every_s)
        metrics.flush()
    if not metrics.pending:
        log.info(f"[train] MLflow tracking server {metrics.tracking_uri} is back: every metric delivered")


def best_effort(worker: Worker, fn: Callable, *args: Any) -> None:
    """An MLflow upload that may be skipped (a sample grid): when the server is away,
    warn and go on training rather than fail the run."""
    try:
        with tracking.fail_fast(worker.tracking_uri):
            fn(*args)
    except Exception as e:  # noqa: BLE001 - only an unreachable server is forgiven, see below
        if not _server_away(worker.tracking_uri):
            raise
        log.warning(f"[train] MLflow tracking server {worker.tracking_uri} is away: skipped {fn.__name__} "
                    f"({type(e).__name__})")


def _server_away(uri: str | None) -> bool:
    if not (uri or "").startswith(("http://", "https://")):
        return False
    try:
        tracking.check_tracking(uri, timeout=5.0)
        return False
    except tracking.TrackingUnavailable:
        return True
