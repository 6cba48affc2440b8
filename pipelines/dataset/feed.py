"""Training input: the canonical Parquet dataset as per-worker batches for Ray Train.

``TorchTrainer(datasets={"train": train_dataset(uri)})`` splits the dataset across the
workers; inside ``train_loop_per_worker`` :func:`epoch_batches` turns this worker's
shard (``ray.train.get_dataset_shard("train")``) into float NCHW tensors in [-1, 1].

Shards are disjoint and cover the dataset once per epoch: Ray Train's default
DataConfig gives each worker one output of ``streaming_split(num_workers, equal=True)``.
Which rows a worker gets can change from epoch to epoch (the file order is reshuffled
and Ray hands out blocks as workers ask for them), so nothing pins an image to a rank.

DDP constraint: every rank must see the same number of batches per epoch, or one
rank waits in an all-reduce that the others never join. ``equal=True`` gives every
worker exactly floor(N / num_workers) rows (it drops the < num_workers leftover rows)
and batches are ``drop_last``, so each rank runs floor(floor(N / W) / B) steps. With a
dataset of N = W * B * k images nothing is dropped; otherwise the dropped rows change
from epoch to epoch because the order is reshuffled.

Per-epoch shuffling, in two layers: the shard files are read in a new order every
epoch (``FileShuffleConfig`` reseeded per execution), and a local shuffle buffer,
seeded by (seed, epoch), mixes rows within each worker.

Leave CPUs for Ray Data: reading and shuffling run as Ray tasks beside the training
workers, so ``cpus_per_worker * num_workers`` must stay below the cluster's CPUs.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from pipelines import storage
from gan.images import to_model_input
from pipelines.dataset.format import IMAGE, SHARD_SUFFIX, decode_images, read_manifest


def train_dataset(uri: str, shuffle_files: bool = True, seed: int = 0):
    """The Ray Dataset of an ingested dataset (local folder or s3://): its image column only."""
    import ray.data
    from ray.data import FileShuffleConfig

    read_manifest(uri)  # fail here, with what to do, rather than deep inside a worker
    fs, path = storage.filesystem(uri)
    return ray.data.read_parquet(
        path, filesystem=fs, columns=[IMAGE], file_extensions=[SHARD_SUFFIX[1:]],
        shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle_files else None,
    )


class _ImageBatch(ArrowBatchCollateFn):
    """Arrow batch -> float NCHW tensor, reading the pixel column without a copy."""

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution

    def __call__(self, batch) -> torch.Tensor:
        return to_model_input(decode_images(batch.column(IMAGE), self.resolution))


def epoch_batches(shard, batch_size: int, resolution: int, epoch: int, seed: int = 0,
                  shuffle_buffer: int | None = None) -> Iterator[torch.Tensor]:
    """One epoch of this worker's shard as float NCHW batches in [-1, 1] (drop_last).

    ``shuffle_buffer``: rows held for the local shuffle (None or 0: keep the read order).
    A buffer of 1024 rows (12 MiB at 64 px) feeds far more than a CPU training step
    consumes (benchmarks/ingest.py prints the feed's rate against the step's).
    """
    kwargs = {}
    if shuffle_buffer:
        kwargs = {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": seed * 1_000_003 + epoch}
    yield from shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=_ImageBatch(resolution), drop_last=True, prefetch_batches=2, **kwargs
    )


class ShardInMemory:
    """This worker's shard read once and held as uint8 pixels, for a dataset that fits.

    Each pass of the streaming feed restarts Ray Data's pipeline for the new epoch, a
    pause every DDP rank waits through (seconds per epoch on small CPUs; see
    benchmarks/scaling.py). Held in memory, the next epoch starts at once, as a fresh
    permutation seeded by (seed, epoch), so a resumed run sees the same order. Ray
    Train's equal split gives every rank the same number of rows, hence of batches.
    """

    def __init__(self, shard, resolution: int, read_batch: int = 1024):
        parts = [decode_images(batch.column(IMAGE), resolution).copy()
                 for batch in shard.iter_batches(batch_size=read_batch, batch_format="pyarrow")]
        self.images = torch.from_numpy(np.concatenate(parts)) if parts else torch.empty(0, resolution, resolution, 3,
                                                                                         dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def epoch_batches(self, batch_size: int, epoch: int, seed: int = 0, shuffle: bool = True) -> Iterator[torch.Tensor]:
        n = len(self.images)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)) if shuffle \
            else torch.arange(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield to_model_input(self.images[order[i:i + batch_size]])
