"""What every source shares: its error, the decoded rows' table, and Ray Data read tasks.

A source is read by one Ray Data read task per part (:func:`read_parts`); each part's
items are decoded where they are read, and an item that cannot be used becomes a row
with its ``reason`` rather than an error that stops the run.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import pyarrow as pa

from pipelines.dataset.format import SCHEMA, pixel_sha256
from pipelines.dataset.decode import UnreadableImage
from pipelines.errors import PipelineError

REASON = "reason"
DECODED_SCHEMA = pa.schema(list(zip(SCHEMA.names, SCHEMA.types)) + [(REASON, pa.string())])
BLOCK_ROWS = 1024  # encoded images per block a read task yields (~20 MB of JPEGs)
TASKS_PER_CPU = 4  # more tasks than cores: a slow task at the end leaves little idle time (benchmarks/ingest.py)


class SourceError(PipelineError):
    """A source that cannot be read; the message says what is missing, where, and what to do."""


def decoded_table(keys: list[str], images: list[bytes], reasons: list[str | None]) -> pa.Table:
    """The decoded rows, hashed here, where the pixel bytes are already at hand."""
    hashes = [None if reason else pixel_sha256(image) for image, reason in zip(images, reasons)]
    return pa.Table.from_arrays(
        [pa.array(keys, pa.string()), pa.array(images, pa.binary()), pa.array(hashes, pa.string()),
         pa.array(reasons, pa.string())],
        schema=DECODED_SCHEMA,
    )


def decode_each(keys: list[str], payloads, to_pixels) -> pa.Table:
    """to_pixels(payload) for every item; an UnreadableImage becomes the item's reason."""
    images, reasons = [], []
    for payload in payloads:
        try:
            images.append(to_pixels(payload).tobytes())
            reasons.append(None)
        except UnreadableImage as e:
            images.append(b"")
            reasons.append(str(e))
    return decoded_table(keys, images, reasons)


def read_tasks(count: int, rows_per_shard: int) -> int:
    """How many read tasks, each decoding its items and writing one shard.

    Every task writes its own shard (read, decode and write fuse into one Ray task, so
    pixels never pass through the object store): never more than ``rows_per_shard``
    rows a shard, and at least TASKS_PER_CPU tasks a CPU so that every core decodes
    and a slow task at the end leaves little idle time.
    """
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, min(count, max(TASKS_PER_CPU * cpus, math.ceil(count / rows_per_shard))))


def read_parts(parts: list[tuple[Callable[[], Iterable[pa.Table]], int]], ray_remote_args: dict | None = None):
    """A Ray Dataset read by one Ray Data read task per (read function, rows it yields)."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PartsDatasource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(read, BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None, input_files=None))
                for read, rows in parts
            ]

    # override_num_blocks = the parts: otherwise Ray splits their blocks to reach its default
    # parallelism (200), and a split read no longer fuses with the decode and write after it.
    return ray.data.read_datasource(PartsDatasource(), ray_remote_args=ray_remote_args or {},
                                    override_num_blocks=len(parts))
