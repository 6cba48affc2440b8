"""One training worker's state (:class:`Worker`) and its share of the data, fed to the
step (seam (3) of :mod:`pipelines.training.loop`).

A shard that fits in memory is read once from this rank's rows of the dataset and fed
from the device, or from pinned host memory, in an order that is a function of
(seed, epoch, rank, world size) alone; bigger shards stream through Ray Data.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from gan.adversarial import AdversarialStep, DataPosition, unwrap
from gan.ema import GeneratorEMA
from pipelines.config import PipelineConfig
from pipelines.dataset.streaming import epoch_batches
from pipelines.records import tracking

log = logging.getLogger("dcgan.train")


@dataclass
class Worker:
    """One training worker's state: the networks, the step, where it is, and what it owes MLflow."""

    cfg: PipelineConfig
    manifest: dict  # the dataset's, as the driver read it
    rank: int
    world: int
    g: torch.nn.Module
    d: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: AdversarialStep
    noise: torch.Generator
    fixed_noise: torch.Tensor
    metrics: tracking.MetricBuffer | None = None
    tracking_uri: str | None = None
    run_id: str | None = None
    evaluator: Callable | None = None
    ema: GeneratorEMA | None = None  # the running average of G (train.ema_decay > 0)
    stop_signal: Any = None  # the driver's StopSignal actor (pipelines.training.stopping), or None
    stopping: bool = False  # the job was stopped: write a final checkpoint and return
    position: DataPosition = field(default_factory=DataPosition)
    start: int = 0  # the last iteration already done (0, or a checkpoint's)
    restored: dict | None = None  # the checkpoint this worker resumed from
    t_enter: float = field(default_factory=time.perf_counter)
    t_start: float = 0.0
    eval_seconds: float = 0.0

    @property
    def g_bare(self) -> torch.nn.Module:
        return unwrap(self.g)

    @property
    def g_eval(self) -> torch.nn.Module:
        """The generator evaluation, grids and registration use: the running average when on."""
        return self.ema.module if self.ema is not None else self.g_bare

    @property
    def d_bare(self) -> torch.nn.Module:
        return unwrap(self.d)


def build_feed(worker: Worker, shard) -> Iterator[torch.Tensor]:
    """Endless uint8 batches of this worker's shard, from the restored data position.

    A shard that fits in memory is read once, from this rank's rows of the dataset
    (:func:`pipelines.dataset.rows.read_shard`), and fed from the device (or pinned host
    memory) in an order that depends on (seed, epoch, rank, world size) alone
    (:mod:`gan.feed`): a resume sees exactly the batches the lost run would have seen.
    Bigger shards stream through Ray Data (``shard``)."""
    from gan.feed import make_feed
    from pipelines.dataset.rows import read_shard

    cfg, manifest = worker.cfg, worker.manifest
    images = manifest.get("holdout", {}).get("train_images", manifest["count"])  # held-out images are never read
    shard_bytes = images // worker.world * 3 * cfg.model.resolution ** 2
    if _every_rank_can_hold(shard_bytes, worker):
        images, keys = read_shard(cfg.dataset_uri, cfg.model.resolution, worker.rank, worker.world, manifest)
        feed, decision = make_feed(images, keys, cfg.train.batch_size, cfg.train.seed, worker.rank,
                                   worker.fixed_noise.device, cfg.data.device_cache, shuffle=cfg.data.shuffle)
        if worker.rank == 0:
            log.info(f"[train] feed: {len(keys)} images a worker, "
                     f"{'on the device' if decision.on_device else 'host memory, prefetched'} ({decision.reason})")
        warm_up(worker, next(feed.epoch_batches(0)))
        return worker.position.batches(feed.epoch_batches)
    seed = cfg.train.seed + worker.rank
    shuffle_buffer = 4 * cfg.train.batch_size if cfg.data.shuffle else None
    if worker.rank == 0:
        log.warning(f"[train] feed: {shard_bytes / 2**30:.1f} GiB a worker does not fit in memory: streaming through "
                    "Ray Data (a resume repeats no iteration, but batches may hold other images)")
    return worker.position.batches(lambda epoch, start: itertools.islice(
        epoch_batches(shard, cfg.train.batch_size, cfg.model.resolution, epoch, seed, shuffle_buffer), start, None))


def warm_up(worker: Worker, real: torch.Tensor) -> None:
    """Compile (and record CUDA graphs) before the clock starts, restoring every state
    after, so a short run's throughput counts training only and the run is unchanged."""
    if worker.step.compiled:
        seconds = worker.step.warm_up(real)
        if worker.rank == 0:
            log.info(f"[train] compiled G and D in {seconds:.1f}s (not counted in img/s)")


def _every_rank_can_hold(shard_bytes: int, worker: Worker) -> bool:
    """Whether every rank can hold its shard in host memory (half of what its node has
    free, shared by the workers on that node); one answer for all, or the ranks would
    feed differently and DDP would wait forever."""
    import ray.train
    import torch.distributed as dist

    from gan.feed import free_memory

    free = free_memory("cpu") or 0
    fits = torch.tensor([int(shard_bytes <= free * 0.5 / ray.train.get_context().get_local_world_size())])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(fits, op=dist.ReduceOp.MIN)
    return bool(fits.item())
