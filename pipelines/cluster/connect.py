"""Starting or joining Ray, the same way for every step."""

from __future__ import annotations

import os

import numpy as np

from pipelines.config import PipelineConfig
from pipelines.cluster.shared_paths import check_shared


def init_ray(cfg: PipelineConfig | None = None) -> None:
    """Connect to RAY_ADDRESS when set (``ray job submit`` sets it), else start Ray in-process.

    Joining a cluster, the config's local folders are checked to be seen by every node
    (:func:`pipelines.cluster.shared_paths.check_shared`); a one-node cluster passes at once.

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
        print(f"[ray] joined the cluster at {address}", flush=True)
        if cfg is not None:  # a cluster may have several nodes: local folders must be shared by all
            check_shared(cfg, cfg.tracking_uri())
        return
    # A busy laptop can take longer than Ray's 60 s default to start a worker group.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    cpus = os.cpu_count() or 1
    if cfg is not None:
        cpus = max(cpus, int(np.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)) + 1)
    # With the dashboard (on 127.0.0.1): Ray Train's placement-group cleaner asks the
    # State API, which the dashboard serves, whether a trial's controller is gone; without
    # it the workers of a trial that Tune stopped keep their CPUs and later trials starve.
    start_local_ray(num_cpus=cpus)
    print(f"[ray] started Ray in this process ({cpus} CPUs); set RAY_ADDRESS to use a cluster", flush=True)


def start_local_ray(**init_kwargs) -> None:
    """Start Ray in-process (dashboard on 127.0.0.1), its workers told where it is.

    Ray Train's placement-group cleaner, an actor, finds the cluster for the State API
    by looking for running Ray instances; with a second one on the machine (another
    user's, another job's local Ray) it fails with "Found multiple active Ray
    instances", and the workers of a stopped trial keep their CPUs. So the GCS gets a
    port chosen here and every worker of this job gets ``RAY_ADDRESS`` pointing at it.
    """
    import socket

    import ray

    port = os.environ.get("RAY_GCS_SERVER_PORT")
    if not port:
        with socket.socket() as s:
            s.bind(("", 0))
            port = str(s.getsockname()[1])
    address = f"{ray.util.get_node_ip_address()}:{port}"
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = port  # read by ray.init when it starts the head
    try:
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": {"RAY_ADDRESS": address}}, **init_kwargs)
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    if ray.get_runtime_context().gcs_address != address:
        raise RuntimeError(f"Ray started at {ray.get_runtime_context().gcs_address}, not at {address}")
