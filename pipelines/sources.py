"""Where ingest's images come from, each read by Ray Data.

- an LSUN LMDB export (``bedroom_train_lmdb``: key = 40-hex image id, value = the
  encoded image, WebP or JPEG), read with ``lmdb`` by a Ray Data datasource whose
  read tasks each walk one key range;
- a folder of images, recursively (jpg, jpeg, png, webp), local or ``s3://``, read
  by a Ray Data datasource whose read tasks each read a slice of the listed files;
- an already-ingested dataset (a folder or prefix with manifest.json), re-read with
  ``ray.data.read_parquet`` (and resized when the resolution differs);
- ``synthetic``: the embedded bedrooms of gan/synthetic.py, rendered in Ray tasks.

:func:`open_source` finds which one a spec names, lists it (applying ``limit``) and
fails at once, naming what was missing and where, when there is nothing to read.
``Source.pixels(resolution, tasks)`` is a Ray Dataset, read by ``tasks`` tasks, with
one row per source item: the dataset's columns (``key``, ``image`` = raw RGB pixels at
the target resolution, ``pixel_sha256``; empty when unusable) and ``reason`` (why the
item is unusable, null when it is fine).
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines import storage
from pipelines.dataset_format import FORMAT, IMAGE, KEY, MANIFEST, SCHEMA, SHARD_SUFFIX, decode_images, pixel_sha256
from pipelines.image_decode import IMAGE_SUFFIXES, UnreadableImage, decode_square, is_image_name, square_resize

SYNTHETIC = "synthetic"
REASON = "reason"
LMDB_DATA = "data.mdb"
DECODED_SCHEMA = pa.schema(list(zip(SCHEMA.names, SCHEMA.types)) + [(REASON, pa.string())])
BLOCK_ROWS = 1024  # encoded images per block a read task yields (~20 MB of JPEGs)
S3_READ_THREADS = 16
TASKS_PER_CPU = 4  # measured with benchmarks/ingest.py: 2 left a core idle at the end of runs


class SourceError(RuntimeError):
    """A source that cannot be read; the message says what is missing, where, and what to do."""


def decoded_table(keys: list[str], images: list[bytes], reasons: list[str | None]) -> pa.Table:
    """The decoded rows, hashed here, where the pixel bytes are already at hand."""
    hashes = [None if reason else pixel_sha256(image) for image, reason in zip(images, reasons)]
    return pa.Table.from_arrays(
        [pa.array(keys, pa.string()), pa.array(images, pa.binary()), pa.array(hashes, pa.string()),
         pa.array(reasons, pa.string())],
        schema=DECODED_SCHEMA,
    )


def _decode_each(keys: list[str], payloads, to_pixels) -> pa.Table:
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


# --- image files (local folder or s3:// prefix) -------------------------------------


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


def _read_files(fs: pafs.FileSystem, paths: list[str], threads: int, block_rows: int = BLOCK_ROWS):
    """Blocks of (path, bytes, error): a file that cannot be read becomes an error, not a crash."""

    def read(path: str) -> tuple[bytes | None, str | None]:
        try:
            with fs.open_input_stream(path) as f:
                return f.read(), None
        except OSError as e:
            return None, f"cannot read ({e})"

    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        for i in range(0, len(paths), block_rows):
            chunk = paths[i : i + block_rows]
            results = list(pool.map(read, chunk)) if pool else [read(p) for p in chunk]
            yield pa.table({
                "path": pa.array(chunk, pa.string()),
                "bytes": pa.array([r[0] for r in results], pa.binary()),
                "error": pa.array([r[1] for r in results], pa.string()),
            })
    finally:
        if pool:
            pool.shutdown()


def _decode_files(batch: pa.Table, root: str, resolution: int) -> pa.Table:
    keys = [path[len(root) :].lstrip("/") for path in batch.column("path").to_pylist()]
    errors = batch.column("error").to_pylist()

    def to_pixels(item):
        data, error = item
        if error:
            raise UnreadableImage(error)
        return decode_square(data, resolution)

    return _decode_each(keys, zip(batch.column("bytes").to_pylist(), errors), to_pixels)


@dataclass
class ImageFiles:
    """Image files below a local folder or an s3:// prefix."""

    uri: str
    paths: list[str]  # paths inside the filesystem (no s3:// scheme)
    root: str  # the folder's path inside the filesystem; keys are relative to it
    kind: str = "images"

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def description(self) -> str:
        return self.uri

    spec = description

    def pixels(self, resolution: int, tasks: int):
        # Our own reader rather than read_binary_files: that one spent ~0.1 ms of CPU a file
        # on bookkeeping (measured with benchmarks/ingest.py), a sixth of a 64 px decode.
        # Object stores answer each GET after a round trip, so S3 reads overlap in threads.
        fs, _ = storage.filesystem(self.uri)
        threads = S3_READ_THREADS if storage.is_s3(self.uri) else 1
        per_task = math.ceil(self.count / tasks)
        parts = [
            (partial(_read_files, fs, self.paths[i : i + per_task], threads), len(self.paths[i : i + per_task]))
            for i in range(0, self.count, per_task)
        ]
        return read_parts(parts).map_batches(
            partial(_decode_files, root=self.root, resolution=resolution), batch_format="pyarrow", batch_size=None
        )


# --- LSUN LMDB export ----------------------------------------------------------------


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
    return _decode_each(batch.column("key").to_pylist(), batch.column("bytes").to_pylist(),
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
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ranges = _lmdb_ranges(self.path, self.count, tasks)
        parts = [(partial(_read_lmdb_range, self.path, first, n), n) for first, n in ranges]
        # The export is a file on this node's disk: read it here. On one node, decode and
        # write fuse with the read (no copies); with more nodes, the encoded images are
        # shipped out so that every node decodes.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        several_nodes = sum(1 for node in ray.nodes() if node["Alive"]) > 1
        return read_parts(parts, {"scheduling_strategy": here}).map_batches(
            partial(_decode_lmdb, resolution=resolution), batch_format="pyarrow", batch_size=None,
            **({"scheduling_strategy": "SPREAD"} if several_nodes else {}),
        )


def _open_lmdb(folder: str, origin: str, limit: int | None) -> LmdbExport:
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


def _download_lmdb(uri: str) -> str:
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


def _resize_dataset_rows(batch: pa.Table, source_resolution: int, resolution: int) -> pa.Table:
    from PIL import Image

    pixels = decode_images(batch.column(IMAGE), source_resolution)
    return _decode_each(batch.column(KEY).to_pylist(), pixels,
                        lambda arr: square_resize(Image.fromarray(arr, "RGB"), resolution))


def _rename_dataset_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return decoded_table(batch.column(KEY).to_pylist(), batch.column(IMAGE).to_pylist(), [None] * n)


@dataclass
class IngestedDataset:
    uri: str
    manifest: dict
    limit: int | None = None
    kind: str = "dataset"

    @property
    def count(self) -> int:
        return self.manifest["count"] if self.limit is None else min(self.limit, self.manifest["count"])

    @property
    def description(self) -> str:
        return self.uri

    spec = description

    def pixels(self, resolution: int, tasks: int):
        import ray.data

        fs, path = storage.filesystem(self.uri)
        ds = ray.data.read_parquet(path, filesystem=fs, columns=[KEY, IMAGE], file_extensions=[SHARD_SUFFIX[1:]],
                                   override_num_blocks=tasks)
        if self.limit is not None:
            ds = ds.limit(self.limit)
        source_resolution = self.manifest["resolution"]
        if source_resolution == resolution:
            return ds.map_batches(_rename_dataset_rows, batch_format="pyarrow", batch_size=None)
        return ds.map_batches(
            partial(_resize_dataset_rows, source_resolution=source_resolution, resolution=resolution),
            batch_format="pyarrow", batch_size=None,
        )


# --- the embedded synthetic bedrooms -------------------------------------------------


def _render_synthetic(batch: dict, seed: int, resolution: int) -> pa.Table:
    from gan.synthetic import render_bedroom

    ids = [int(i) for i in batch["id"]]
    images = [render_bedroom(seed, resolution, i).tobytes() for i in ids]
    return decoded_table([f"{i:08d}" for i in ids], images, [None] * len(ids))


@dataclass
class SyntheticBedrooms:
    """gan.synthetic's bedrooms: row i is ``synthetic_bedrooms(n, resolution, seed)[i]``."""

    count: int
    seed: int
    kind: str = "synthetic"
    spec: str = SYNTHETIC

    @property
    def description(self) -> str:
        from gan.synthetic import DATASET_NAME

        return f"{DATASET_NAME}(seed={self.seed})"

    def pixels(self, resolution: int, tasks: int):
        import ray.data

        ds = ray.data.range(self.count, override_num_blocks=tasks)
        return ds.map_batches(
            partial(_render_synthetic, seed=self.seed, resolution=resolution), batch_format="numpy", batch_size=None
        )


Source = ImageFiles | LmdbExport | IngestedDataset | SyntheticBedrooms


# --- finding out what a spec names ---------------------------------------------------


def _unreachable(uri: str, error: Exception) -> SourceError:
    endpoint = storage.s3_endpoint() or "AWS S3 (no AWS_ENDPOINT_URL set)"
    return SourceError(
        f"cannot read the source {uri}: the S3 endpoint {endpoint} did not answer ({error}). Check that the "
        "service runs and AWS_ENDPOINT_URL points at it (for the local mini cluster: infra/local/start.sh), "
        "and that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY grant read access."
    )


def _list(uri: str) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    """All files below uri, failing at once when the location is missing or unreachable."""
    fs, path = storage.filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            where = f"through {storage.s3_endpoint() or 'AWS S3'}" if storage.is_s3(uri) else f"({path})"
            raise SourceError(f"source {uri} not found {where}: no such folder, prefix or file")
        if info.type == pafs.FileType.File:
            parent = path.rsplit("/", 1)[0]
            return fs, parent, [info]
        return fs, path, fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except SourceError:
        raise
    except OSError as e:
        if storage.is_s3(uri):
            if "NoSuchBucket" in str(e) or "bucket does not exist" in str(e).lower():
                raise SourceError(
                    f"source {uri} not found: bucket '{path.split('/')[0]}' does not exist at "
                    f"{storage.s3_endpoint() or 'AWS S3'}"
                ) from None
            raise _unreachable(uri, e) from None
        raise SourceError(f"cannot read the source {uri}: {e}") from None


def open_source(spec: str, *, limit: int | None = None, synthetic_images: int = 4096, synthetic_seed: int = 0) -> Source:
    """The source a spec names, listed and checked (fails at once when there is nothing to read)."""
    spec = str(spec)
    if spec == SYNTHETIC:
        count = synthetic_images if limit is None else min(limit, synthetic_images)
        return SyntheticBedrooms(count, synthetic_seed)
    fs, root, infos = _list(spec)
    files = [i for i in infos if i.type == pafs.FileType.File]
    names = {i.path[len(root) :].lstrip("/"): i for i in files}
    if MANIFEST in names:
        import json

        manifest = json.loads(storage.read_bytes(storage.join(spec, MANIFEST)))
        if manifest.get("format") != FORMAT:
            raise SourceError(f"{spec}/{MANIFEST} is not a {FORMAT} manifest (format={manifest.get('format')!r})")
        return IngestedDataset(spec, manifest, limit)
    if LMDB_DATA in names:
        folder = spec.rstrip("/").removesuffix(LMDB_DATA).rstrip("/") if spec.rstrip("/").endswith(LMDB_DATA) else spec
        return _open_lmdb(_download_lmdb(folder) if storage.is_s3(spec) else root, spec, limit)
    images = sorted(i.path for i in files if is_image_name(i.path))
    if not images:
        where = f"through {storage.s3_endpoint() or 'AWS S3'}" if storage.is_s3(spec) else f"({root})"
        nested = sorted(n.removesuffix(LMDB_DATA).rstrip("/") for n in names if n.endswith("/" + LMDB_DATA))
        hint = f"; it holds LMDB exports in {', '.join(nested[:3])}: pass one of those folders" if nested else ""
        raise SourceError(
            f"source {spec} holds no images {where}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files below it "
            f"({len(files)} other files), no LSUN LMDB export ({LMDB_DATA}) and no ingested dataset ({MANIFEST})"
            f"{hint}"
        )
    if limit is not None:
        images = images[:limit]
    return ImageFiles(spec, images, root)
