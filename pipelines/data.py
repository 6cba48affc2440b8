"""Training input: the canonical Parquet dataset as per-worker batches for Ray Train.

``TorchTrainer(datasets={"train": train_dataset(uri)})`` splits the dataset across the
workers; inside ``train_loop_per_worker`` :func:`epoch_batches` turns this worker's
shard (``ray.train.get_dataset_shard("train")``) into float NCHW tensors in [-1, 1],
reshuffled every epoch.

DDP constraint: every rank must see the same number of batches per epoch, or one
rank waits in an all-reduce that the others never join. Ray Train's default split is
``equal=True`` and batches are ``drop_last``, which guarantees it.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import torch

from pipelines import storage
from pipelines.dataset_format import IMAGE, MANIFEST, decode_images, to_model_input


def read_manifest(uri: str) -> dict:
    try:
        return json.loads(storage.read_bytes(storage.join(uri, MANIFEST)))
    except storage.StorageError:
        raise storage.StorageError(
            f"no dataset at {uri}: {MANIFEST} is missing. Ingest one first: dcgan ingest --source ... --out {uri}"
        ) from None


def train_dataset(uri: str):
    """The Ray Dataset of an ingested dataset (local folder or s3://)."""
    import ray.data

    fs, path = storage.filesystem(uri)
    return ray.data.read_parquet(path, filesystem=fs, columns=[IMAGE], file_extensions=["parquet"])


def epoch_batches(shard, batch_size: int, resolution: int, epoch: int, seed: int = 0,
                  shuffle_buffer: int | None = None) -> Iterator[torch.Tensor]:
    """One epoch of this worker's shard as float NCHW batches in [-1, 1] (drop_last)."""

    def collate(batch: dict[str, np.ndarray]) -> torch.Tensor:
        return to_model_input(decode_images(batch[IMAGE], resolution))

    kwargs = {}
    if shuffle_buffer:
        kwargs = {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": seed * 1_000_003 + epoch}
    yield from shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=collate, drop_last=True, prefetch_batches=2, **kwargs
    )
