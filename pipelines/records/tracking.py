"""MLflow tracking: where runs go, checking that the service answers, and logging that
survives failures.

Embedded default: a SQLite file and local artifacts under ``./runs`` (nothing to set
up). A team server: ``MLFLOW_TRACKING_URI=http://...`` (artifacts in S3 through the
server, or directly with ``MLFLOW_S3_ENDPOINT_URL``). Only rank 0 of a training run
logs. Metrics are buffered and committed together with checkpoints, so a run that
resumes after a failure has no gap and no duplicate in its metric history.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from pipelines.errors import PipelineError

# mlflow is imported where it is used: checking that tracking answers must not wait
# seconds for mlflow's import (a wrong URI fails a command in about a second).

PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one parameter value
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")  # model locations MLflow resolves
CHECKPOINT_TAG = "checkpoint"  # on a training run: where its last checkpoint lives


class TrackingUnavailable(PipelineError):
    """The tracking service does not answer; the message says how to start it."""


def _how_to_start(uri: str) -> str:
    return (
        f"Start it (for the local mini cluster: infra/local/start.sh, or "
        f"`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///runs/mlflow.db`), "
        f"or unset MLFLOW_TRACKING_URI to track to the embedded SQLite store under ./runs."
    )


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the URI and how to start the service, if tracking is unusable."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingUnavailable(f"MLflow tracking server {uri} answered {resp.status} on /health. " + _how_to_start(uri))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnavailable(f"MLflow tracking server {uri} does not answer ({reason}). " + _how_to_start(uri)) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingUnavailable(f"cannot create the MLflow SQLite store {db}: {e}") from None


def configure(tracking_uri: str, experiment: str | None = None, check: bool = True) -> str | None:
    """Point MLflow at tracking_uri (after checking it answers); returns the experiment id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if check:
        check_tracking(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    if experiment is None:
        return None
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=_artifact_location(tracking_uri, experiment))
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(experiment).experiment_id


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """With the embedded SQLite store, keep artifacts beside it (not in the current folder)."""
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts" / experiment
        return root.resolve().as_uri()
    return None  # the server decides (--default-artifact-root / --artifacts-destination)


def params_from_config(flat: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:PARAM_VALUE_LIMIT] for k, v in flat.items()}


@contextlib.contextmanager
def run(tracking_uri: str, experiment: str, run_name: str | None = None, run_id: str | None = None,
        parent_run_id: str | None = None, tags: dict[str, str] | None = None,
        system_metrics: bool = False, system_metrics_interval_s: float | None = None) -> Iterator[Any]:
    """An MLflow run that always ends FINISHED or FAILED (KILLED when stopped from outside), never RUNNING.

    ``run_id`` continues an existing run (a resumed training); ``parent_run_id`` nests a
    new one. ``system_metrics`` samples this process's machine (CPU, memory, disk,
    network; GPUs when ``nvidia-ml-py`` is installed) into the run's ``system/`` metrics,
    every ``system_metrics_interval_s`` seconds (unset: MLflow's 10 s; a set
    $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins, as in MLflow). The training
    nodes' own are :mod:`pipelines.records.system_metrics`.
    """
    import mlflow
    from mlflow.entities import RunStatus

    exp_id = configure(tracking_uri, experiment)
    interval = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"  # MLflow's monitor reads it when the run starts
    every = {interval: str(system_metrics_interval_s)} if system_metrics_interval_s and interval not in os.environ else {}
    with temporary_environ(every):
        active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=run_name,
                                  parent_run_id=None if run_id else parent_run_id, tags=tags or None,
                                  nested=mlflow.active_run() is not None, log_system_metrics=system_metrics)
    try:
        yield active
    except (KeyboardInterrupt, SystemExit):  # stopped from outside (Ctrl-C, a scheduler ending the actor)
        _end_failed_run(tracking_uri, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        _end_failed_run(tracking_uri, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _end_failed_run(tracking_uri: str, status: str) -> None:
    """End a failing run; if the tracking server is what failed, the run's own error
    matters more than a second one from MLflow (and minutes of MLflow's retries)."""
    import mlflow

    try:
        with fail_fast(tracking_uri):
            mlflow.end_run(status)
    except Exception:  # noqa: BLE001 - see the docstring: the error being raised wins
        if tracking_uri.startswith(("http://", "https://")):
            return
        raise


class MetricBuffer:
    """Per-iteration metrics held until they can be committed (with a checkpoint).

    ``pending`` is saved inside each checkpoint; :meth:`flush` logs only steps above the
    highest step MLflow already has for ``marker``, so replaying a buffer after a crash
    between "checkpoint persisted" and "metrics flushed" never duplicates a point.

    A tracking server that stops answering does not stop training: a flush that cannot
    reach it keeps everything it could not send (the timestamps are the original ones,
    so a point sent twice, e.g. when the answer to a sent batch was lost, is stored once)
    and the next flush delivers it, in step order. :meth:`outage_seconds` says how long
    the server has been away; past ``outage_timeout_s`` the caller stops the run.
    """

    marker = "loss_d"

    def __init__(self, tracking_uri: str | None, run_id: str | None, pending: list | None = None,
                 outage_timeout_s: float | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri) if tracking_uri and run_id else None
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.pending: list[tuple[str, float, int, int]] = [tuple(m) for m in pending or []]
        self.outage_timeout_s = outage_timeout_s
        self.down_since: float | None = None  # monotonic time of the first failed flush of this outage
        self.last_error = ""

    def add(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending.extend((k, float(v), now, step) for k, v in metrics.items())

    def logged_up_to(self) -> int:
        if self.client is None:
            return -1
        history = self.client.get_metric_history(self.run_id, self.marker)
        return max((m.step for m in history), default=-1)

    def flush(self) -> int:
        """Send what is pending; returns how many points were sent (0 while the server is away)."""
        if self.client is None or not self.pending:
            self.pending.clear()
            return 0
        try:
            with fail_fast(self.tracking_uri):
                sent = self._send()
        except Exception as e:  # noqa: BLE001 - decided below: an outage is waited out, anything else raised
            if not self._unreachable():
                raise
            self.down_since = self.down_since or time.monotonic()
            self.last_error = f"{type(e).__name__}: {str(e)[:300]}"
            return 0
        self.down_since = None
        return sent

    def _send(self) -> int:
        from mlflow.entities import Metric

        done = self.logged_up_to()
        # The marker goes last within each step: once it is logged, its step is complete.
        ordered = sorted(self.pending, key=lambda m: (m[3], m[0] == self.marker))
        todo = [m for m in ordered if m[3] > done]
        for i in range(0, len(todo), 1000):
            chunk = todo[i : i + 1000]
            self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in chunk], synchronous=True)
            self.pending = todo[i + 1000 :]  # what a failure of the next chunk leaves to send later
        self.pending = []
        return len(todo)

    def _unreachable(self) -> bool:
        if not (self.tracking_uri or "").startswith(("http://", "https://")):
            return False
        try:
            check_tracking(self.tracking_uri, timeout=5.0)
            return False
        except TrackingUnavailable:
            return True

    def outage_seconds(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def outage_exceeded(self) -> bool:
        return self.outage_timeout_s is not None and self.outage_seconds() > self.outage_timeout_s

    def outage_message(self) -> str:
        return (f"MLflow tracking server {self.tracking_uri} has not answered for {self.outage_seconds():.0f}s "
                f"(more than tracking.outage_timeout_s={self.outage_timeout_s:g}; last error: {self.last_error}); "
                f"{len(self.pending)} metric points are kept in the last checkpoint and reach MLflow when the run "
                "resumes (train.resume_from=<that checkpoint>). " + _how_to_start(self.tracking_uri or ""))


@contextlib.contextmanager
def fail_fast(tracking_uri: str | None) -> Iterator[None]:
    """MLflow's HTTP client retries a dead server for minutes by default; while training,
    one quick try a flush is enough (the next checkpoint tries again)."""
    if not (tracking_uri or "").startswith(("http://", "https://")):
        yield
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    with temporary_environ(quick):
        yield


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ inside (MLflow and boto read their settings there);
    afterwards each variable is back as it was, or unset."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
