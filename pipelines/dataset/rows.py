"""Random access to the rows of an ingested dataset, in one fixed global order.

The order is the shard files sorted by name, rows in file order; a :class:`Chunk` is
a slice of one file, the unit of work that evaluation spreads over its workers.
Reads touch only the Parquet row groups a chunk overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.cluster import storage
from gan.splits import Holdout
from pipelines.dataset.format import IMAGE, KEY, PIXEL_SHA256, SHARD_SUFFIX, decode_images, iter_strings, read_manifest
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


def files_of(chunks: list[Chunk]) -> list[Chunk]:
    """One chunk a file, spanning that file's chunks (they are in file and row order)."""
    merged: list[Chunk] = []
    for chunk in chunks:
        if merged and merged[-1].file == chunk.file and merged[-1].stop == chunk.start:
            last = merged[-1]
            merged[-1] = Chunk(last.file, last.start, chunk.stop, last.first)
        else:
            merged.append(chunk)
    return merged


def read_chunk(chunk: Chunk, resolution: int) -> np.ndarray:
    """uint8 (rows, R, R, 3) of one chunk, reading only the row groups it overlaps."""
    return decode_images(_chunk_table(chunk, [IMAGE]).column(IMAGE), resolution)


def _chunk_table(chunk: Chunk, columns: list[str]):
    """The chunk's rows of ``columns`` (an Arrow table), reading only the row groups it overlaps."""
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
        table = pf.read_row_groups(groups, columns=columns)
    return table.slice(chunk.start - first_row, chunk.rows)


def read_rows(chunks: list[Chunk], indices: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 images at global ``indices`` (in that order), reading only the chunks that hold them."""
    indices = np.asarray(indices, np.int64)
    out = np.empty((len(indices), resolution, resolution, 3), np.uint8)
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    for chunk in chunks:  # a binary search a chunk: O(chunks log n), not O(chunks n)
        lo, hi = np.searchsorted(ordered, [chunk.first, chunk.first + chunk.rows])
        if hi > lo:
            out[order[lo:hi]] = read_chunk(chunk, resolution)[ordered[lo:hi] - chunk.first]
    return out


def rank_rows(total: int, rank: int, world: int) -> range:
    """The global rows of a training worker: a contiguous, equal share of the dataset's
    fixed order, a function of (rank, world) alone. The ``total % world`` rows at the end
    belong to no rank, so that every DDP rank runs the same number of steps."""
    share = total // world
    return range(rank * share, (rank + 1) * share)


def holdout_rule(manifest: dict) -> Holdout:
    """The dataset's held-out split as ingest recorded it (none for a dataset without one)."""
    return Holdout.from_manifest(manifest["holdout"]) if manifest.get("holdout") else Holdout(0, 0)


def split_rows(dataset_uri: str, manifest: dict | None = None,
               rows_per_chunk: int = ROWS_PER_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Global indices of the training rows and of the held-out rows (the manifest's rule
    applied to each row's pixel hash: disjoint, and together every row once)."""
    manifest = manifest or read_manifest(dataset_uri)
    rule = holdout_rule(manifest)
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    if rule.cutoff == 0:
        return np.arange(chunks[-1].first + chunks[-1].rows), np.zeros(0, np.int64)
    held = np.concatenate([rule.mask(h for piece in iter_strings(_chunk_table(c, [PIXEL_SHA256]).column(PIXEL_SHA256))
                                     for h in piece) for c in chunks])
    return np.flatnonzero(~held), np.flatnonzero(held)


def read_shard(dataset_uri: str, resolution: int, rank: int, world: int, manifest: dict | None = None,
               rows_per_chunk: int = ROWS_PER_CHUNK) -> tuple[np.ndarray, list[str]]:
    """This worker's training images (uint8 NHWC) and their keys: its equal share
    (:func:`rank_rows`) of the training rows, never a held-out one (``manifest``: the
    dataset's, read here when not given)."""
    train, _ = split_rows(dataset_uri, manifest, rows_per_chunk=rows_per_chunk)
    share = rank_rows(len(train), rank, world)
    mine = train[share.start:share.stop]
    # A file at a time (its chunks merged): a row group larger than a chunk is read once,
    # not once for every chunk it holds.
    chunks = files_of(dataset_chunks(dataset_uri, rows_per_chunk))
    images = np.empty((len(mine), resolution, resolution, 3), np.uint8)
    keys = np.empty(len(mine), object)
    for chunk in chunks:  # ``mine`` is ascending: a binary search a file, O(files log n)
        lo, hi = np.searchsorted(mine, [chunk.first, chunk.first + chunk.rows])
        if hi > lo:
            table = _chunk_table(chunk, [KEY, IMAGE])
            local = mine[lo:hi] - chunk.first
            images[lo:hi] = decode_images(table.column(IMAGE), resolution)[local]
            keys[lo:hi] = np.asarray(table.column(KEY).to_pylist(), object)[local]
    return images, keys.tolist()
