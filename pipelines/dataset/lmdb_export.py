"""The official LSUN LMDB export (``bedroom_train_lmdb``) as an ingest source.

Key = 40-hex image id, value = the encoded image (WebP or JPEG). LMDB needs a local
file: an export on S3 is first copied to this machine ($DCGAN_CACHE or
~/.cache/dcgan-ray) and reused while complete. Read tasks each walk one key range.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.cluster import storage
from pipelines.dataset.decode import decode_square
from pipelines.dataset.reading import BLOCK_ROWS, SourceError, decode_each, read_parts

LMDB_DATA = "data.mdb"


def _lmdb_env(path: str):
    import lmdb

    # LSUN's own reader opens it this way: read-only, no lock file, no readahead.
    return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)


def _read_lmdb_range(path: str, first_key: bytes, count: int, block_rows: int = BLOCK_ROWS):
    """Blocks of (key, bytes) for ``count`` entries from ``first_key`` on, in key order."""
    env = _lmdb_env(path)
    try:
        with env.begin(write=False) as txn:
            cursor = txn.cursor()
            cursor.set_key(first_key)
            keys, values = [], []
            for key, value in cursor:
                keys.append(key.decode("utf-8", "replace"))
                values.append(value)
                if len(keys) == block_rows or count == len(keys):
                    yield pa.table({"key": pa.array(keys, pa.string()), "bytes": pa.array(values, pa.binary())})
                    count -= len(keys)
                    keys, values = [], []
                if count == 0:
                    break
    finally:
        env.close()


def _lmdb_ranges(path: str, count: int, tasks: int) -> list[tuple[bytes, int]]:
    """(first key, entries) for each read task: one pass over the keys, values untouched."""
    per_task = math.ceil(count / tasks)
    starts: list[tuple[bytes, int]] = []
    env = _lmdb_env(path)
    try:
        with env.begin(write=False) as txn:
            for i, key in enumerate(txn.cursor().iternext(keys=True, values=False)):
                if i == count:
                    break
                if i % per_task == 0:
                    starts.append((bytes(key), min(per_task, count - i)))
    finally:
        env.close()
    return starts


def _decode_lmdb(batch: pa.Table, resolution: int) -> pa.Table:
    return decode_each(batch.column("key").to_pylist(), batch.column("bytes").to_pylist(),
                        partial(decode_square, resolution=resolution))


@dataclass
class LmdbExport:
    """An LSUN LMDB export folder (data.mdb) on this machine's disk."""

    path: str  # the local folder holding data.mdb
    count: int  # entries to read (the first ones in key order when limited)
    origin: str  # what the user named (an s3:// URI when the export was downloaded)
    kind: str = "lmdb"

    @property
    def description(self) -> str:
        return self.origin

    spec = description

    def pixels(self, resolution: int, tasks: int):
        import ray

        from pipelines.dataset.placement import on_nodes_that_see

        ranges = _lmdb_ranges(self.path, self.count, tasks)
        parts = [(partial(_read_lmdb_range, self.path, first, n), n) for first, n in ranges]
        # The export is a file on the disks of some nodes (all, with a shared file system):
        # read it there, spread over them. On one node, decode and write fuse with the read
        # (no copies); with more nodes, the encoded images are shipped out so that every
        # node decodes.
        several_nodes = sum(1 for node in ray.nodes() if node["Alive"]) > 1
        return read_parts(parts, on_nodes_that_see(os.path.join(self.path, LMDB_DATA))).map_batches(
            partial(_decode_lmdb, resolution=resolution), batch_format="pyarrow", batch_size=None,
            **({"scheduling_strategy": "SPREAD"} if several_nodes else {}),
        )


def open_lmdb(folder: str, origin: str, limit: int | None) -> LmdbExport:
    try:
        env = _lmdb_env(folder)
    except Exception as e:  # noqa: BLE001 - lmdb raises its own error family
        raise SourceError(f"cannot open the LMDB export at {folder} ({type(e).__name__}: {e})") from None
    try:
        total = env.stat()["entries"]
    finally:
        env.close()
    if total == 0:
        raise SourceError(f"the LMDB export at {origin} is empty (0 entries in {LMDB_DATA})")
    return LmdbExport(folder, total if limit is None else min(total, limit), origin)


def _lmdb_cache_dir(uri: str) -> Path:
    base = Path(os.environ.get("DCGAN_CACHE", Path.home() / ".cache" / "dcgan-ray"))
    return base / "lmdb" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def download_lmdb(uri: str) -> str:
    """Copy an LMDB export from S3 to this machine (LMDB needs a local file); reused if complete."""
    fs, path = storage.filesystem(uri)
    remote = fs.get_file_info(f"{path}/{LMDB_DATA}")
    local = _lmdb_cache_dir(uri)
    target = local / LMDB_DATA
    if target.exists() and target.stat().st_size == remote.size:
        return str(local)
    local.mkdir(parents=True, exist_ok=True)
    partial_file = local / (LMDB_DATA + ".partial")
    print(f"downloading {uri}/{LMDB_DATA} ({remote.size / 2**30:.2f} GiB) to {local}", flush=True)
    pafs.copy_files(f"{path}/{LMDB_DATA}", str(partial_file), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
    os.replace(partial_file, target)
    return str(local)


# --- an already-ingested dataset ---------------------------------------------------
