"""The driver side of every run, written once.

    checks (preflight) -> which run this is (named_runs) -> Ray, joined once -> the dataset,
    ensured once -> [the MLflow run: new, nested or continued -> fit -> the result]

:func:`open_session` does the part before training and hands its result down (the
manifest is never read again by the driver); :func:`train` does the training part.
``dcgan train``, ``dcgan run``, ``dcgan ingest`` and the sweep open a session; each
sweep trial trains inside the sweep's (:meth:`Session.for_trial`); ``dcgan evaluate``
opens one without training. Differences are parameters, not copies of the sequence.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Iterator

from pipelines.config import PipelineConfig
from pipelines.driver.named_runs import RunIdentity, identify, remember
from pipelines.driver.preflight import preflight
from pipelines.records import tracking


@dataclass
class Session:
    """What the steps after the checks share: the config, the tracking URI, the dataset's
    manifest and, for a training, which run it is."""

    cfg: PipelineConfig
    tracking_uri: str | None
    manifest: dict
    identity: RunIdentity | None = None

    def for_trial(self, cfg: PipelineConfig, identity: RunIdentity) -> "Session":
        """The session of one sweep trial: the sweep's tracking and dataset, its own config and run."""
        return replace(self, cfg=cfg, identity=identity)


@dataclass
class Trained:
    """A finished (or stopped) training: its MLflow run, Ray Train's result, its last checkpoint."""

    run_id: str
    result: Any
    checkpoint: str


@contextlib.contextmanager
def open_session(cfg: PipelineConfig, *, training: bool = True, ingest: bool = True, track: bool = True,
                 ray_config: PipelineConfig | None = None, progress: bool = True) -> Iterator[Session]:
    """Checks, the run's identity (``training``), Ray and the dataset, each once.

    ``track=False``: no MLflow (``dcgan ingest``). ``ingest=False`` takes the dataset as it is (a missing one is an error, not an ingest).
    ``ray_config`` sizes a local Ray differently (a sweep runs several trainings at once).
    Ray is shut down on leaving when this session started it.
    """
    uri = preflight(cfg, track=track, training=training, ingest=ingest)
    identity = identify(cfg) if training else None
    # Ray (and torch) load only now: a wrong input is reported before they take seconds to import.
    import ray

    from pipelines.cluster.connect import init_ray
    from pipelines.dataset.format import read_manifest
    from pipelines.dataset.ingestion import ensure_dataset

    started = not ray.is_initialized()
    init_ray(ray_config or cfg)
    try:
        manifest = ensure_dataset(cfg, progress=progress) if ingest else read_manifest(cfg.dataset_uri)
        yield Session(cfg, uri, manifest, identity)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def train(session: Session, *, parent_run_id: str | None = None, tags: dict[str, str] | None = None,
          params: dict[str, Any] | None = None, callbacks: list | None = None, keep_best_by: str | None = None,
          graceful: bool = True) -> Trained:
    """The training part: its MLflow run (new, nested under ``parent_run_id``, or the one a
    named or hand-resumed run continues), fit, and the result.

    ``params``: extra MLflow parameters of a new run. ``graceful``: SIGTERM (``ray job stop``)
    stops at the next log window with a final checkpoint and raises
    :class:`pipelines.training.stopping.TrainingStopped`, which ends the run KILLED.
    """
    import mlflow

    from pipelines.driver.provenance import git_commit
    from pipelines.records.lineage import log_dataset
    from pipelines.training.checkpoints import checkpoint_uri
    from pipelines.training.stopping import TrainingStopped, graceful_stop
    from pipelines.training.trainer import fit, make_evaluator

    cfg, identity = session.cfg, session.identity
    evaluator = make_evaluator(cfg, session.manifest)
    run_tags = {"dataset_hash": session.manifest["content_hash"], "dataset_uri": cfg.dataset_uri,
                "git_commit": git_commit(), "ray_run_name": identity.name, "pipeline_step": "train", **(tags or {})}
    with tracking.run(session.tracking_uri, cfg.tracking.experiment, run_name=identity.name,
                      run_id=identity.mlflow_run_id, parent_run_id=parent_run_id, tags=run_tags,
                      system_metrics=cfg.tracking.system_metrics_interval_s > 0,
                      system_metrics_interval_s=cfg.tracking.system_metrics_interval_s) as active, (graceful_stop() if graceful else contextlib.nullcontext()) as stop:
        if not identity.continued:
            mlflow.log_params(tracking.params_from_config(cfg.flat()) | tracking.params_from_config(params or {}))
            log_dataset(session.manifest, cfg.dataset_uri, "training")
            remember(cfg, identity, active.info.run_id, parent_run_id)
        result = fit(cfg, run_name=identity.name, manifest=session.manifest, tracking_uri=session.tracking_uri,
                     mlflow_run_id=active.info.run_id, evaluator=evaluator, callbacks=callbacks,
                     keep_best_by=keep_best_by, stop_signal=stop.actor if stop else None)
        if result.error:
            raise result.error
        last = checkpoint_uri(result) if result.checkpoint else ""
        mlflow.set_tag(tracking.CHECKPOINT_TAG, last)
        if stop is not None and stop.requested:
            print(f"[train] stopped at iteration {result.metrics.get('iteration')}; final checkpoint: {last}; "
                  f"submit it again{' (same train.run_name)' if identity.named else f' with train.resume_from={last}'}"
                  " to continue", flush=True)
            raise TrainingStopped(last)
        return Trained(active.info.run_id, result, last)
