"""Random access to the rows of an ingested dataset, in one fixed global order.

The order is the shard files sorted by name, rows in file order; a :class:`Chunk` is
a slice of one file, the unit of work that evaluation spreads over its workers.
Reads touch only the Parquet row groups a chunk overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines import storage
from pipelines.dataset.format import IMAGE, SHARD_SUFFIX, decode_images
from pipelines.errors import PipelineError

ROWS_PER_CHUNK = 4096  # one task's share of a dataset: small enough to spread, large enough to amortise


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one Parquet file; ``first`` is the global index of row ``start``."""

    file: str
    start: int
    stop: int
    first: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def dataset_chunks(dataset_uri: str, rows_per_chunk: int = ROWS_PER_CHUNK) -> list[Chunk]:
    """The dataset's rows in a fixed global order (files sorted, rows in file order), in chunks."""
    import pyarrow.parquet as pq

    files = storage.list_files(dataset_uri, SHARD_SUFFIX)
    if not files:
        raise PipelineError(f"no Parquet shards in {dataset_uri}: ingest the dataset first (dcgan ingest ... --out {dataset_uri})")
    chunks, first = [], 0
    for uri in files:
        fs, path = storage.filesystem(uri)
        rows = pq.read_metadata(path, filesystem=fs).num_rows
        for start in range(0, rows, rows_per_chunk):
            stop = min(rows, start + rows_per_chunk)
            chunks.append(Chunk(uri, start, stop, first + start))
        first += rows
    return chunks


def read_chunk(chunk: Chunk, resolution: int) -> np.ndarray:
    """uint8 (rows, R, R, 3) of one chunk, reading only the row groups it overlaps."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(chunk.file)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        groups, offset, first_row = [], 0, None
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset < chunk.stop and offset + n > chunk.start:
                groups.append(g)
                first_row = offset if first_row is None else first_row
            offset += n
        table = pf.read_row_groups(groups, columns=[IMAGE])
    return decode_images(table.column(IMAGE).slice(chunk.start - first_row, chunk.rows), resolution)


def read_rows(chunks: list[Chunk], indices: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 images at global ``indices`` (in that order), reading only the chunks that hold them."""
    indices = np.asarray(indices, np.int64)
    out = np.empty((len(indices), resolution, resolution, 3), np.uint8)
    for chunk in chunks:
        hit = np.flatnonzero((indices >= chunk.first) & (indices < chunk.first + chunk.rows))
        if len(hit):
            out[hit] = read_chunk(chunk, resolution)[indices[hit] - chunk.first]
    return out
