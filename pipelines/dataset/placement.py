"""Which nodes of the cluster can read a local path, and read tasks placed on them.

On a cluster a "local" folder or LMDB export is seen by the nodes that mount it: maybe
all of them (a shared file system), maybe only some. Ingest's read tasks go to exactly
those nodes, spread over them, so that no read lands on a node without the files (which
would turn every image into a "cannot read" skip) and no read needs the driver's disk.
A read task whose node dies is retried by Ray on another node that sees the files.
"""

from __future__ import annotations

import os

from pipelines.dataset.reading import SourceError

PROBE_TIMEOUT_S = 60


def _sees(path: str) -> tuple[bool, int]:
    return os.path.exists(path), (os.path.getsize(path) if os.path.isfile(path) else -1)


def nodes_that_see(path: str) -> list[str]:
    """IDs of the alive nodes with CPUs where ``path`` exists (the same size where it is a file)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(path) for n in nodes}
    answers = {}
    for node_id, ref in refs.items():
        try:
            answers[node_id] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a node that dies or hangs while asked does not see it
            continue
    sizes = {size for seen, size in answers.values() if seen}
    if len(sizes) > 1:
        raise SourceError(f"{path} differs between the nodes of the cluster (sizes {sorted(sizes)}): "
                          "every node that mounts it must see the same files")
    seeing = [node_id for node_id, (seen, _) in answers.items() if seen]
    if not seeing:
        raise SourceError(f"no node of the Ray cluster with CPUs sees {path}: mount it on the worker nodes "
                          "(or put the source in S3 and give its s3:// URI)")
    return seeing


def on_nodes_that_see(path: str) -> dict:
    """Ray remote args for read tasks: on the nodes that see ``path``, spread over them."""
    from ray.util.scheduling_strategies import In, NodeLabelSchedulingStrategy
    from ray.util.placement_group import NODE_ID_LABEL_KEY

    return {"scheduling_strategy": NodeLabelSchedulingStrategy(hard={NODE_ID_LABEL_KEY: In(*nodes_that_see(path))})}
