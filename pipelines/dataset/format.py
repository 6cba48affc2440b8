"""The canonical dataset every step after ingest reads: Parquet shards + manifest.json.

Columns (one row per image):
  key           string  the source's id (LSUN key, path relative to the source root,
                        synthetic index)
  image         binary  raw RGB pixels, uint8, HWC, resolution x resolution x 3
  pixel_sha256  string  SHA-256 (hex) of ``image``: equal pixels, equal hash

Raw pixels rather than PNG: a 64x64 image is 12 KiB either way within a factor of
two, and raw bytes decode at memory speed, so the feed never waits on a codec.
Shards are stored uncompressed: on LSUN's 64 px pixels snappy and zstd save only a
few percent of the bytes and cost much of the read speed, not worth a codec.

Exact duplicates are images whose stored pixels are equal (same ``pixel_sha256``).
Ingest keeps the first one it meets and counts the others, so ``pixel_sha256`` is
unique within a dataset. Decoding never uses codec shortcuts (JPEG draft mode), so
the same decoded source pixels give the same stored pixels whatever the file format.

manifest.json (written LAST: a folder without one is an unfinished ingest):
  format        FORMAT
  resolution    side of the square images
  count         rows in the shards
  content_hash  SHA-256 over the sorted pixel hashes (:func:`content_hash`): the same
                images give the same hash whatever their order, keys or sharding
  source        where the images came from (a path, an s3:// URI, synthetic-bedrooms...)
  source_images how many source items were looked at (after ``limit``)
  skipped       [{"source", "reason"}] for every unreadable or unusable source item
  duplicates    how many exact duplicates were dropped
  shards        [{"file", "rows", "bytes"}], file names relative to the dataset folder

Training splits (see pipelines/dataset/streaming.py): Ray Train gives each worker an equal share
of the rows per epoch (``streaming_split(equal=True)`` drops the at most
num_workers - 1 rows that do not divide) and batches are ``drop_last``, so every DDP
rank runs the same number of steps. With shuffling on, which rows fall into those
remainders changes every epoch, so no image is left out for good.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.cluster import storage

FORMAT = "dcgan-parquet-v1"
MANIFEST = "manifest.json"
KEY, IMAGE, PIXEL_SHA256 = "key", "image", "pixel_sha256"
SCHEMA = pa.schema([(KEY, pa.string()), (IMAGE, pa.binary()), (PIXEL_SHA256, pa.string())])
SHARD_SUFFIX = ".parquet"


def image_bytes(resolution: int) -> int:
    return resolution * resolution * 3


def rows_per_shard(shard_mb: int, resolution: int) -> int:
    """How many images make a shard of about ``shard_mb`` MiB (pixels + hash + key)."""
    return max(1, (shard_mb << 20) // (image_bytes(resolution) + 64 + 48))


def pixel_sha256(pixels: bytes | np.ndarray) -> str:
    return hashlib.sha256(pixels.tobytes() if isinstance(pixels, np.ndarray) else pixels).hexdigest()


def content_hash(pixel_hashes: Iterable[str] | pa.Array | pa.ChunkedArray) -> str:
    """SHA-256 over the sorted hex pixel hashes, one per line: order- and key-independent.

    An Arrow column is sorted by Arrow and read in slices, so no Python string per
    image is ever held (a dataset's millions of hashes stay in Arrow's buffers)."""
    digest = hashlib.sha256()
    if isinstance(pixel_hashes, (pa.Array, pa.ChunkedArray)):
        ordered = pixel_hashes.take(pc.sort_indices(pixel_hashes))
        for piece in iter_strings(ordered):
            digest.update(("\n".join(piece) + "\n").encode("ascii"))
        return digest.hexdigest()
    for h in sorted(pixel_hashes):
        digest.update(h.encode("ascii") + b"\n")
    return digest.hexdigest()


def iter_strings(column: pa.Array | pa.ChunkedArray, rows: int = 16_384):
    """Slices of an Arrow string column as lists of ``rows`` Python strings at most."""
    for start in range(0, len(column), rows):
        piece = column.slice(start, rows).to_pylist()
        if piece:
            yield piece


def read_manifest(uri: str) -> dict:
    try:
        return json.loads(storage.read_bytes(storage.join(uri, MANIFEST)))
    except storage.StorageError:
        raise storage.StorageError(
            f"no dataset at {uri}: {MANIFEST} is missing. Ingest one first: dcgan ingest --source ... --out {uri}"
        ) from None


def read_columns(uri: str, columns: list[str]) -> pa.Table:
    """Columns of a whole dataset into memory (e.g. the hashes; not for the pixels of a big one)."""
    import pyarrow.parquet as pq

    fs, _ = storage.filesystem(uri)
    paths = [storage.filesystem_path(u) for u in storage.list_files(uri, SHARD_SUFFIX)]
    if not paths:
        return SCHEMA.empty_table().select(columns)
    return pq.ParquetDataset(paths, filesystem=fs).read(columns=columns)


def decode_images(column, resolution: int) -> np.ndarray:
    """Raw-pixel bytes (an Arrow binary column, or a sequence of bytes) -> uint8 (N, R, R, 3).

    An Arrow column is read without a copy (every shard ingest writes qualifies).
    """
    n, size = len(column), image_bytes(resolution)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column, pa.Array) and n and column.null_count == 0:
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32 if pa.types.is_binary(column.type) else np.int64)
        offsets = offsets[column.offset : column.offset + n + 1]
        if bool(np.all(np.diff(offsets) == size)):
            data = np.frombuffer(column.buffers()[2], dtype=np.uint8, count=n * size, offset=int(offsets[0]))
            return data.reshape(n, resolution, resolution, 3)
    values = column.to_pylist() if isinstance(column, pa.Array) else column
    wrong = [i for i, v in enumerate(values) if v is None or len(v) != size]
    if wrong:
        raise ValueError(f"image {wrong[0]} of the batch is not {resolution}x{resolution}x3 bytes: "
                         f"is the dataset's resolution {resolution}? (see its manifest.json)")
    return np.frombuffer(b"".join(bytes(x) for x in values), dtype=np.uint8).reshape(n, resolution, resolution, 3)
