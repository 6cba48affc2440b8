"""Training input streamed through Ray Data, for shards too big to hold in memory.

Most runs never use it: a worker whose shard fits in memory reads it once
(:func:`pipelines.dataset.rows.read_shard`) and feeds it from the device or pinned host
memory in an exact, resumable order (:mod:`gan.feed`). For bigger shards,
``TorchTrainer(datasets={"train": train_dataset(uri, manifest)})`` splits the dataset across the
workers and :func:`epoch_batches` turns this worker's shard
(``ray.train.get_dataset_shard("train")``) into uint8 NCHW batches. This order is *not*
a function of (seed, epoch, rank) alone (below), so a resume is exact in iterations and
noise but not in which images each batch holds.

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

import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from pipelines.cluster import storage
from pipelines.dataset.format import IMAGE, PIXEL_SHA256, SHARD_SUFFIX, decode_images


def train_dataset(uri: str, manifest: dict, shuffle_files: bool = True, seed: int = 0):
    """The Ray Dataset of an ingested dataset's training images (local folder or s3://):
    the image column of every row that is not held out (``manifest``: the dataset's)."""
    import ray.data
    from ray.data import FileShuffleConfig

    from pipelines.dataset.rows import holdout_rule

    rule = holdout_rule(manifest)
    fs, path = storage.filesystem(uri)
    ds = ray.data.read_parquet(
        path, filesystem=fs, columns=[IMAGE, PIXEL_SHA256] if rule.cutoff else [IMAGE],
        file_extensions=[SHARD_SUFFIX[1:]],
        shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle_files else None,
    )
    return ds.map_batches(_training_rows, fn_kwargs={"rule": rule}, batch_format="pyarrow") if rule.cutoff else ds


def _training_rows(batch, rule):
    """The batch's rows that are not held out (gan/splits.py), image column only."""
    import pyarrow as pa

    keep = ~rule.mask(batch.column(PIXEL_SHA256).to_pylist())
    return batch.filter(pa.array(keep)).select([IMAGE])


class _ImageBatch(ArrowBatchCollateFn):
    """Arrow batch -> uint8 NCHW tensor (a view of NHWC pixels, so channels_last in memory);
    the step turns it into floats on its device, moving a quarter of float32's bytes."""

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution

    def __call__(self, batch) -> torch.Tensor:
        pixels = decode_images(batch.column(IMAGE), self.resolution)
        return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()).permute(0, 3, 1, 2)


def epoch_batches(shard, batch_size: int, resolution: int, epoch: int, seed: int = 0,
                  shuffle_buffer: int | None = None) -> Iterator[torch.Tensor]:
    """One epoch of this worker's Ray Data shard as uint8 NCHW batches (drop_last).

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
