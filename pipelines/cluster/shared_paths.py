"""On a Ray cluster of several nodes, every local folder the run writes must be one every node sees.

Training workers write checkpoints under ``storage``, read the dataset from
``data.dataset``, and rank 0 writes metrics and sample grids to the tracking store. A
local path that only the driver's machine has puts those writes on the disk of
whichever node a worker lands on: Ray Train fails at the first checkpoint (hours in,
on a real run), and rank 0's metrics go to a SQLite file on a worker's disk that
nobody reads. This check takes seconds, before anything is ingested or trained: it
leaves a marker file in each local folder and asks every node with CPUs or GPUs
whether it sees that very file (a folder of the same name on another disk does not
count). S3 URIs and tracking servers (http://) need no check; nor does a one-node
cluster, which is what a laptop runs. Nodes that join later (an autoscaler adding GPU
workers) are not asked.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pipelines.cluster import storage
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError

PROBE_TIMEOUT_S = 60
MARKER_PREFIX = ".dcgan-shared-check-"


def local_folders(cfg: PipelineConfig, tracking_uri: str) -> list[tuple[str, str, str]]:
    """(config key, folder, what goes wrong on a node without it) for each local folder the workers use."""
    wanted = [("storage", cfg.storage, "training workers there would write checkpoints to their own disk"),
              ("data.dataset", cfg.dataset_uri, "training workers there would not find the dataset")]
    if tracking_uri.startswith("sqlite:///"):
        wanted.append(("tracking.uri", str(Path(tracking_uri[len("sqlite:///"):]).parent),
                       "rank 0 there would log metrics to its own copy of the SQLite database"))
    elif tracking_uri.startswith(("file:", "/")):
        wanted.append(("tracking.uri", tracking_uri.removeprefix("file://").removeprefix("file:"),
                       "rank 0 there would log metrics to its own disk"))
    folders: list[tuple[str, str, str]] = []
    for key, folder, what in wanted:
        if storage.is_s3(folder) or "://" in str(folder):
            continue
        folder = os.path.abspath(folder)
        if not any(folder == f or folder.startswith(f + os.sep) for _, f, _ in folders):
            folders.append((key, folder, what))
    return folders


def _sees(paths: list[str]) -> list[bool]:
    return [os.path.exists(p) for p in paths]


def _name(node: dict) -> str:
    """How `ray status` and the dashboard tell nodes apart: address and ID."""
    return f"{node.get('NodeManagerAddress')} (node {node['NodeID'][:8]})"


def _training_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)]


def check_shared(cfg: PipelineConfig, tracking_uri: str) -> None:
    """Raise a :class:`PipelineError` naming each local folder that some node of the cluster does not see."""
    nodes = _training_nodes()
    folders = local_folders(cfg, tracking_uri)
    if len(nodes) < 2 or not folders:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    markers = []
    for _, folder, _ in folders:
        os.makedirs(folder, exist_ok=True)
        marker = os.path.join(folder, MARKER_PREFIX + uuid.uuid4().hex)
        Path(marker).touch()
        markers.append(marker)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(markers) for n in nodes]
        answers = []
        for node, ref in zip(nodes, refs):
            try:
                answers.append((_name(node), ray.get(ref, timeout=PROBE_TIMEOUT_S)))
            except Exception:  # noqa: BLE001 - a node that dies or hangs now is not one to judge by
                print(f"[cluster] node {_name(node)} did not answer the shared-folder check "
                      f"within {PROBE_TIMEOUT_S}s; not checked", flush=True)
    finally:
        for marker in markers:
            Path(marker).unlink(missing_ok=True)
    problems = []
    for i, (key, folder, what) in enumerate(folders):
        blind = sorted(name for name, seen in answers if not seen[i])
        if blind:
            problems.append(f"{key}={folder} is not seen by the node(s) at {', '.join(blind)} (of {len(nodes)} "
                            f"nodes): {what}")
    if problems:
        raise PipelineError(
            "local folders on a Ray cluster of several nodes: " + "; ".join(problems) + ". Give storage and "
            "data.dataset s3:// URIs and set MLFLOW_TRACKING_URI to a tracking server (http://...), or use folders "
            "mounted at the same path on every node (NFS, EFS)")
