"""Starting or joining Ray, the same way for every step."""

from __future__ import annotations

import os

import numpy as np

from pipelines.config import PipelineConfig


def init_ray(cfg: PipelineConfig | None = None) -> None:
    """Connect to RAY_ADDRESS when set (``ray job submit`` sets it), else start Ray in-process.

    In-process, Ray gets one logical CPU more than the training workers reserve: Ray
    Data's read tasks need a CPU of their own, and with none left the feed would wait
    forever (a laptop has fewer cores than a cluster node, not fewer pipeline stages).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # A busy laptop can take longer than Ray's 60 s default to start a worker group.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    cpus = os.cpu_count() or 1
    if cfg is not None:
        cpus = max(cpus, int(np.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)) + 1)
    # With the dashboard (on 127.0.0.1): Ray Train's placement-group cleaner asks the
    # State API, which the dashboard serves, whether a trial's controller is gone; without
    # it the workers of a trial that Tune stopped keep their CPUs and later trials starve.
    ray.init(address="local", num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1")
