"""Which run a launch is: a new one with a unique name, or the named run it continues.

``train.run_name`` names a training run. The first launch under a name records the
run's config and MLflow runs in ``<storage>/checkpoints/<name>.json`` beside Ray Train's
folder of the same name. A later launch under that name (the same job submitted again
after the driver or the head node was lost) continues it: Ray Train V2 restores a run
from its storage path and name (its newest committed checkpoint), and the MLflow runs
are the recorded ones, so the metric history has no gap and no repeat. A launch whose
config would train something else under that name (another model, data, loss or
optimiser) is refused, naming the keys that differ; how long it trains, how it logs and
how it is evaluated may change. Without a name every launch is a new run.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from pipelines.cluster import storage
from pipelines.config import ConfigError, PipelineConfig

RECORD_SUFFIX = ".json"
# Keys a continued run may change: how far it trains and what it logs, evaluates and
# where. Every other key changes the weights it would produce, and a new key does too
# until it is listed here.
MAY_CHANGE = ("name", "storage", "tracking.", "eval.", "train.iterations", "train.log_every", "train.sample_every",
              "train.checkpoint_every", "train.keep_checkpoints", "train.storage_timeout_s", "train.resume_from",
              "train.fail_at_iteration", "train.run_name", "scaling.max_failures", "scaling.placement_strategy",
              "scaling.worker_resources", "scaling.cpus_per_worker", "scaling.torch_threads", "data.source",
              "data.dataset", "data.device_cache", "data.shard_mb")


@dataclass
class RunIdentity:
    """The Ray Train run name, and the MLflow runs to continue (None: new ones)."""

    name: str
    mlflow_run_id: str | None = None
    parent_run_id: str | None = None
    named: bool = False

    @property
    def continued(self) -> bool:
        return self.mlflow_run_id is not None


def unique_run_name(cfg) -> str:
    """``<cfg.name>-<timestamp>-<random>`` for a pipeline or sweep config: Ray resumes from an
    existing run of the same name, so an unnamed launch never reuses one."""
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def record_uri(cfg: PipelineConfig, name: str) -> str:
    return storage.join(cfg.checkpoints_uri, name + RECORD_SUFFIX)


def identify(cfg: PipelineConfig) -> RunIdentity:
    """This launch's identity; a named run that exists must have a compatible config."""
    name = cfg.train.run_name
    if not name:
        return RunIdentity(unique_run_name(cfg), mlflow_run_id=_hand_resumed_run(cfg))
    uri = record_uri(cfg, name)
    if not storage.exists(uri):
        return RunIdentity(name, named=True)
    record = json.loads(storage.read_bytes(uri))
    differing = result_changing_differences(record["config"], cfg)
    if differing:
        raise ConfigError(
            f"train.run_name={name} is a run with other {', '.join(differing)} ("
            + "; ".join(f"{k}: stored {record_flat(record)[k]!r}, now {cfg.flat().get(k)!r}" for k in differing)
            + f"): continue it with its config, or choose another train.run_name")
    print(f"[run] continuing run '{name}' (MLflow run {record.get('mlflow_run_id')})", flush=True)
    return RunIdentity(name, record.get("mlflow_run_id"), record.get("parent_run_id"), named=True)


def record_flat(record: dict) -> dict:
    return PipelineConfig.model_validate(record["config"]).flat()


def result_changing_differences(stored: dict, cfg: PipelineConfig) -> list[str]:
    """The dotted keys whose values differ between a stored config and ``cfg``, and change
    what the run would train."""
    before, now = PipelineConfig.model_validate(stored).flat(), cfg.flat()
    return sorted(k for k in before.keys() | now.keys()
                  if before.get(k) != now.get(k) and not k.startswith(MAY_CHANGE) and k not in MAY_CHANGE)


def remember(cfg: PipelineConfig, identity: RunIdentity, mlflow_run_id: str, parent_run_id: str | None) -> None:
    """Record a named run's config and MLflow runs, once, when its first launch starts."""
    if not identity.named or identity.continued:
        return
    record = {"config": cfg.model_dump(), "mlflow_run_id": mlflow_run_id, "parent_run_id": parent_run_id}
    storage.write_bytes(record_uri(cfg, identity.name), json.dumps(record, indent=1, default=str).encode())
    identity.mlflow_run_id, identity.parent_run_id = mlflow_run_id, parent_run_id


def _hand_resumed_run(cfg: PipelineConfig) -> str | None:
    """The MLflow run of a checkpoint named by hand (``train.resume_from``)."""
    if not cfg.train.resume_from:
        return None
    from pipelines.training.checkpoints import load_state

    return load_state(cfg.train.resume_from).get("mlflow_run_id")
