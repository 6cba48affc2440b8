"""System metrics of every training node, in the training run.

The training run samples the driver's machine itself (``tracking.run(system_metrics=...)``,
keys ``system/cpu_utilization_percentage``...). On a cluster the driver is the head, a CPU
machine on KubeRay: the work happens elsewhere. So on each Ray node one training worker
(its lowest rank; :func:`pipelines.training.loop.node_system_metrics`) runs MLflow's
``SystemMetricsMonitor`` into the same run, with the node's Ray node id as MLflow's ``node_id``: keys ``system/<Ray node id>/cpu_utilization_percentage``,
``.../system_memory_usage_megabytes``, disk, network and, where ``nvidia-ml-py`` (the ``gpu``
extra) can read the node's GPUs, ``.../gpu_<i>_utilization_percentage``, memory and power.
A run tag ``system_node.<Ray node id>`` names the node's host.

A training on GPUs whose GPU figures cannot be read says so once, in one line, with the
reason; it never drops them silently. MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
and ``MLFLOW_SYSTEM_METRICS_NODE_ID``, where set, win over the config (MLflow's rule).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any, Iterator

from pipelines.records.tracking import fail_fast

log = logging.getLogger("dcgan.train")
STOP_WAIT_S = 10.0  # at most this long for the monitor's last words (its thread may be retrying a server)
NODE_TAG = "system_node."  # + node id: the node's host, on the training run


@contextlib.contextmanager
def node_monitor(tracking_uri: str | None, run_id: str | None, node_id: str, interval_s: float, *,
                 gpus_expected: bool, resume: bool) -> Iterator[Any]:
    """Sample this node into run ``run_id`` every ``interval_s`` seconds while inside; yields
    the monitor, or None when off (no run, ``interval_s`` 0, or it could not start: a warning
    says why, and training goes on). ``resume``: continue the run's ``system/`` steps."""
    monitor = _start(tracking_uri, run_id, node_id, interval_s, gpus_expected, resume)
    try:
        yield monitor
    finally:
        if monitor is not None:
            _stop(monitor)


def _start(tracking_uri, run_id, node_id, interval_s, gpus_expected, resume):
    if not (tracking_uri and run_id) or interval_s <= 0:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import MlflowClient

    try:
        with fail_fast(tracking_uri):  # a tracking server that is away must not hold training up
            monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                           resume_logging=resume, node_id=node_id, tracking_uri=tracking_uri)
            node_id = monitor.node_id  # $MLFLOW_SYSTEM_METRICS_NODE_ID, where set
            MlflowClient(tracking_uri).set_tag(run_id, NODE_TAG + node_id, socket.gethostname())
    except Exception as e:  # noqa: BLE001 - system metrics are a view; training goes on without them
        log.warning(f"[train] no system metrics from node {node_id}: {type(e).__name__}: {str(e)[:300]}")
        return None
    if gpus_expected and not reads_gpus(monitor):
        log.warning(f"[train] GPU system metrics of node {node_id} cannot be read ({gpu_unreadable_reason()}): "
                    f"system/{node_id}/ holds CPU, memory, disk and network only")
    monitor.start()
    log.info(f"[train] system metrics of node {node_id} ({socket.gethostname()}) every {monitor.sampling_interval:g}s "
             f"as system/{node_id}/...")
    return monitor


def _stop(monitor) -> None:
    """MLflow's ``finish()`` joins the sampling thread without a limit; a thread retrying an
    absent tracking server would hold the worker's end for minutes. Wait a while, no more."""
    stopper = threading.Thread(target=monitor.finish, daemon=True, name="SystemMetricsMonitor-stop")
    stopper.start()
    stopper.join(STOP_WAIT_S)


def reads_gpus(monitor) -> bool:
    """Whether MLflow's monitor samples GPUs (it creates a GPU monitor only where NVML or ROCm answers)."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    return any(isinstance(m, (GPUMonitor, ROCMMonitor)) for m in monitor.monitors)


def gpu_unreadable_reason() -> str:
    """Why NVML gives no GPU figures here, in words that say what to do."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed: pip install -c constraints.txt '.[gpu]' (the image has it)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - pynvml.NVMLError and the ctypes errors of a missing driver library
        return f"NVML does not start: {e}"
    pynvml.nvmlShutdown()
    return "MLflow's GPU monitor did not start (the mlflow logger at DEBUG says why)"
