"""Where ingest's images come from, each read by Ray Data.

- an LSUN LMDB export (``bedroom_train_lmdb``), see :mod:`pipelines.dataset.lmdb_export`;
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

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.cluster import storage
from pipelines.dataset.decode import IMAGE_SUFFIXES, UnreadableImage, decode_square, is_image_name, square_resize
from pipelines.dataset.format import FORMAT, IMAGE, KEY, MANIFEST, SHARD_SUFFIX, decode_images
from pipelines.dataset.placement import on_nodes_that_see
from pipelines.dataset.lmdb_export import LMDB_DATA, LmdbExport, download_lmdb, open_lmdb
from pipelines.dataset.reading import BLOCK_ROWS, SourceError, decode_each, decoded_table, read_parts

SYNTHETIC = "synthetic"
S3_READ_THREADS = 16


# --- image files (local folder or s3:// prefix) -------------------------------------


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

    return decode_each(keys, zip(batch.column("bytes").to_pylist(), errors), to_pixels)


class _NamedByUri:
    """A source that is described by, and re-opened from, the URI the user gave."""

    uri: str

    @property
    def description(self) -> str:
        return self.uri

    @property
    def spec(self) -> str:
        return self.uri


@dataclass
class ImageFiles(_NamedByUri):
    """Image files below a local folder or an s3:// prefix."""

    uri: str
    paths: list[str]  # paths inside the filesystem (no s3:// scheme)
    root: str  # the folder's path inside the filesystem; keys are relative to it
    kind: str = "images"

    @property
    def count(self) -> int:
        return len(self.paths)

    def pixels(self, resolution: int, tasks: int):
        # Our own reader rather than read_binary_files: that one spends CPU on per-file
        # bookkeeping that is a noticeable share of a 64 px decode (benchmarks/ingest.py).
        # Object stores answer each GET after a round trip, so S3 reads overlap in threads.
        fs, _ = storage.filesystem(self.uri)
        threads = S3_READ_THREADS if storage.is_s3(self.uri) else 1
        per_task = math.ceil(self.count / tasks)
        parts = [
            (partial(_read_files, fs, self.paths[i : i + per_task], threads), len(self.paths[i : i + per_task]))
            for i in range(0, self.count, per_task)
        ]
        # A local folder is read on the nodes that see it (pipelines/dataset/placement.py);
        # an S3 prefix anywhere (Ray Data spreads its tasks).
        where = None if storage.is_s3(self.uri) else on_nodes_that_see(self.root)
        return read_parts(parts, where).map_batches(
            partial(_decode_files, root=self.root, resolution=resolution), batch_format="pyarrow", batch_size=None
        )


def _resize_dataset_rows(batch: pa.Table, source_resolution: int, resolution: int) -> pa.Table:
    from PIL import Image

    pixels = decode_images(batch.column(IMAGE), source_resolution)
    return decode_each(batch.column(KEY).to_pylist(), pixels,
                        lambda arr: square_resize(Image.fromarray(arr, "RGB"), resolution))


def _rename_dataset_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return decoded_table(batch.column(KEY).to_pylist(), batch.column(IMAGE).to_pylist(), [None] * n)


@dataclass
class IngestedDataset(_NamedByUri):
    uri: str
    manifest: dict
    limit: int | None = None
    kind: str = "dataset"

    @property
    def count(self) -> int:
        return self.manifest["count"] if self.limit is None else min(self.limit, self.manifest["count"])

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


def _info(uri: str) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    """What ``uri`` is (folder, file), failing at once, naming it, when it is missing or unreachable."""
    fs, path = storage.filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        if storage.is_s3(uri):
            if "NoSuchBucket" in str(e) or "bucket does not exist" in str(e).lower():
                raise SourceError(
                    f"source {uri} not found: bucket '{path.split('/')[0]}' does not exist at "
                    f"{storage.s3_endpoint() or 'AWS S3'}"
                ) from None
            raise _unreachable(uri, e) from None
        raise SourceError(f"cannot read the source {uri}: {e}") from None
    if info.type == pafs.FileType.NotFound:
        where = f"through {storage.s3_endpoint() or 'AWS S3'}" if storage.is_s3(uri) else f"({path})"
        raise SourceError(f"source {uri} not found {where}: no such folder, prefix or file")
    return fs, path, info


def check_source(spec: str) -> None:
    """Fail at once when the source a spec names is missing or unreachable (no listing, no
    download: what a command checks before it starts any work)."""
    if str(spec) != SYNTHETIC:
        _info(str(spec))


def _list(uri: str) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    """All files below uri, failing at once when the location is missing or unreachable."""
    fs, path, info = _info(uri)
    if info.type == pafs.FileType.File:
        return fs, path.rsplit("/", 1)[0], [info]
    try:
        return fs, path, fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as e:
        raise _unreachable(uri, e) if storage.is_s3(uri) else SourceError(f"cannot read the source {uri}: {e}") from None


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
        manifest = json.loads(storage.read_bytes(storage.join(spec, MANIFEST)))
        if manifest.get("format") != FORMAT:
            raise SourceError(f"{spec}/{MANIFEST} is not a {FORMAT} manifest (format={manifest.get('format')!r})")
        return IngestedDataset(spec, manifest, limit)
    if LMDB_DATA in names:
        folder = spec.rstrip("/").removesuffix(LMDB_DATA).rstrip("/") if spec.rstrip("/").endswith(LMDB_DATA) else spec
        return open_lmdb(download_lmdb(folder) if storage.is_s3(spec) else root, spec, limit)
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
