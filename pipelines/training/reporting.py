"""What rank 0 reports beside the losses: every worker's GPU use, and plots of the run.

MLflow's system metrics sample the driver's machine (``system/...``) and each training
node (``system/<Ray node id>/...``, :mod:`pipelines.records.system_metrics`); beside them,
each log window rank 0 gathers every worker's peak GPU memory and utilisation, per rank,
and logs them as ``worker<r>/gpu_*`` metrics. A utilisation that cannot be read (no
``nvidia-ml-py``, NVML not starting) is left out, and rank 0 says so once.
The plots (:mod:`pipelines.records.plots`) are redrawn from the run's metric history at each
checkpoint and logged under ``plots/``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("dcgan.train")
PLOTS_DIR = "plots"


_unreadable: list[str] = []  # why this process could not read GPU utilisation (the first reason)
_said = False  # rank 0 has said which workers' utilisation is left out


def _utilization(device: torch.device) -> float:
    try:
        return float(torch.cuda.utilization(device))  # needs pynvml (nvidia-ml-py)
    except Exception as e:  # noqa: BLE001 - no NVML: report memory only, and say so (device_metrics)
        if not _unreadable:
            _unreadable.append(f"{type(e).__name__}: {str(e)[:200]}")
        return float("nan")


def _say_unreadable(ranks: list[int]) -> None:
    """One line, once a run, on rank 0: whose GPU utilisation is left out, and why."""
    global _said
    if _said or not ranks:
        return
    _said = True
    why = _unreadable[0] if _unreadable else "NVML did not answer there"
    log.warning(f"[train] GPU utilisation of worker(s) {', '.join(map(str, ranks))} cannot be read ({why}): "
                "worker<r>/gpu_utilization_percent is left out (it needs nvidia-ml-py: pip install -c constraints.txt "
                "'.[gpu]', as the image has it; and the NVIDIA driver's NVML library)")


def device_metrics(device: torch.device, rank: int, world: int) -> dict[str, float]:
    """Every worker's peak GPU memory (GiB, since the last window) and utilisation (%), on
    rank 0; {} on CPUs. A collective: every rank calls it at the same iteration."""
    if device.type != "cuda":
        return {}
    mine = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30, _utilization(device)],
                        dtype=torch.float64, device=device)
    torch.cuda.reset_peak_memory_stats(device)
    gathered = [mine]
    if world > 1:
        import torch.distributed as dist

        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
    out, unreadable = {}, []
    for r, values in enumerate(t.tolist() for t in gathered):
        out[f"worker{r}/gpu_memory_peak_gb"] = values[0]
        if values[1] == values[1]:  # not NaN
            out[f"worker{r}/gpu_utilization_percent"] = values[1]
        else:
            unreadable.append(r)
    if rank == 0:
        _say_unreadable(unreadable)
    return out


def log_training_plots(client, run_id: str | None) -> None:
    """Redraw the run's plots from its metric history and log them under ``plots/``.
    A failure to draw never stops training: it is logged and skipped."""
    if client is None or not run_id:
        return
    from pipelines.records.plots import run_histories, training_plots

    try:
        with tempfile.TemporaryDirectory() as tmp:
            for path in training_plots(run_histories(client, run_id), Path(tmp)):
                client.log_artifact(run_id, str(path), PLOTS_DIR)
    except Exception as e:  # noqa: BLE001 - plots are a view; the checkpoint is what matters
        log.warning(f"[train] could not draw the training plots: {e}")
