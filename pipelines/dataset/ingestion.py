"""Ingest: any source of bedroom images -> the canonical Parquet dataset (Ray Data).

The library behind ``dcgan ingest`` (pipelines/steps/ingest.py) and behind every step
that needs a dataset (:func:`ensure_dataset`).

One streaming Ray Data pass: read (pipelines/dataset/sources.py) -> decode, RGB, centre
crop, antialiased resize -> hash the pixels and drop exact duplicates -> write Parquet
shards of about ``data.shard_mb`` -> manifest.json, written last, so an ingest that
dies half way never looks complete (the next run clears its shards and starts over).

Exact duplicates are dropped across blocks, and unusable items counted, by one small
ledger actor (pipelines/dataset/ledger.py); they never stop the run.

On a cluster the read tasks open s3:// sources with the AWS settings of their own
node (instance role, ~/.aws or the AWS_* variables there), never with credentials
shipped from the driver. An LMDB export is read on the driver's node (an s3:// one
is first copied there, to $DCGAN_CACHE or ~/.cache/dcgan-ray); on a multi-node
cluster its images are decoded and written all over the cluster.
"""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.errors import PipelineError
from pipelines.cluster import storage
from pipelines.config import PipelineConfig
from pipelines.dataset.format import (
    FORMAT, IMAGE, KEY, MANIFEST, PIXEL_SHA256, SHARD_SUFFIX, content_hash, iter_strings, read_columns, read_manifest,
    rows_per_shard,
)
from pipelines.dataset.ledger import IngestLedger, finish_batch
from pipelines.dataset.reading import read_tasks
from pipelines.dataset.sources import SYNTHETIC, Source, open_source


class IngestError(PipelineError):
    """An ingest that cannot go on; the message says why and what to do."""




def _prepare_output(out: str) -> None:
    """Clear the leftovers of an unfinished ingest (shards without a manifest), refuse a foreign folder."""
    files = storage.list_files(out)
    ours = [f for f in files if f.endswith(SHARD_SUFFIX) or ".tmp-" in f.rsplit("/", 1)[-1]]
    foreign = sorted(set(files) - set(ours))
    if foreign:
        raise IngestError(
            f"--out {out} already holds files that are not part of a dataset ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): choose a new or empty folder"
        )
    if ours:
        print(f"clearing {len(ours)} shard(s) of an unfinished ingest in {out}", flush=True)
        storage.delete_dir(out)
    storage.check_writable(out)


class _ProgressBar:
    """A tqdm bar over source items, fed by polling the ledger while Ray Data writes."""

    def __init__(self, ledger, total: int, enabled: bool):
        self._ledger, self._total, self._enabled = ledger, total, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._enabled:
            self._thread.join()

    def _run(self):
        import ray
        from tqdm import tqdm

        with tqdm(total=self._total, unit="img", desc="ingest", dynamic_ncols=True, mininterval=1.0) as bar:
            while True:
                stopping = self._stop.wait(1.0)
                bar.update(ray.get(self._ledger.processed.remote()) - bar.n)
                if stopping:
                    return


def _shard_table(out: str) -> list[dict]:
    fs, path = storage.filesystem(out)
    shards = []
    for uri in storage.list_files(out, SHARD_SUFFIX):
        inner = storage.filesystem_path(uri)
        meta = pq.read_metadata(inner, filesystem=fs)
        shards.append({"file": inner[len(path) :].lstrip("/"), "rows": meta.num_rows, "bytes": fs.get_file_info(inner).size})
    return shards


def ingest(source: str | Source, out: str, resolution: int, *, limit: int | None = None, shard_mb: int = 128,
           synthetic_images: int = 4096, synthetic_seed: int = 0, progress: bool = True, holdout: float | int = 0) -> dict:
    """Ingest ``source`` into a new dataset at ``out`` (replacing an unfinished one); returns its manifest.

    Runs on the Ray cluster this process is connected to (see :func:`ensure_dataset`).
    """
    import ray
    from ray.data import DataContext
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = time.time()
    src = source if not isinstance(source, str) else open_source(
        source, limit=limit, synthetic_images=synthetic_images, synthetic_seed=synthetic_seed)
    if storage.exists(storage.join(out, MANIFEST)):
        raise IngestError(f"a complete dataset already exists at {out}: pass --overwrite to replace it")
    _prepare_output(out)
    print(f"ingesting {src.count} images from {src.description} ({src.kind}) -> {out} at {resolution}px", flush=True)

    DataContext.get_current().enable_progress_bars = False  # our bar counts images, theirs count blocks
    # On the driver's node: a worker node lost mid-ingest must not take the ledger with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = ray.remote(IngestLedger).options(num_cpus=0, scheduling_strategy=here).remote()
    tasks = read_tasks(src.count, rows_per_shard(shard_mb, resolution))
    rows = src.pixels(resolution, tasks).map_batches(
        finish_batch, fn_kwargs={"ledger": ledger}, batch_format="pyarrow", batch_size=None
    )
    fs, path = storage.filesystem(out)
    with _ProgressBar(ledger, src.count, progress):
        # No min_rows_per_file: it would split decode from write (and pixels would cross
        # the object store); shard size is set by the number of read tasks instead.
        rows.write_parquet(path, filesystem=fs, compression="none")
    summary = ray.get(ledger.summary.remote())
    ray.kill(ledger)

    manifest = _check_and_describe(out, src, resolution, summary, started, limit, synthetic_images, synthetic_seed,
                                   holdout)
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    rate = src.count / max(manifest["ingest_seconds"], 1e-9)
    print(f"ingested {manifest['count']} images ({len(summary['skipped'])} skipped, {summary['duplicates']} "
          f"exact duplicates dropped) into {len(manifest['shards'])} shard(s) at {out} in "
          f"{manifest['ingest_seconds']:.1f}s ({rate:.0f} img/s)", flush=True)
    return manifest


def _check_and_describe(out: str, src: Source, resolution: int, summary: dict, started: float, limit: int | None,
                        synthetic_images: int, synthetic_seed: int, holdout: float | int) -> dict:
    """Read the written shards back (every admitted image exactly once) and make the manifest."""
    shards = _shard_table(out)
    # In Arrow's buffers (about 70 bytes an image), never a Python string per image: at
    # LSUN's 3M images a list and a set of them would take the driver ~500 MB.
    hashes = read_columns(out, [PIXEL_SHA256]).column(PIXEL_SHA256)
    stored, distinct = len(hashes), pc.count_distinct(hashes).as_py()
    if stored != summary["stored"] or distinct != stored:
        raise IngestError(
            f"the shards in {out} hold {stored} rows ({distinct} distinct) but {summary['stored']} "
            "images were admitted; the output was changed during ingest or a write failed. Run ingest again."
        )
    if not stored:
        raise IngestError(
            f"no usable image in {src.description}: all {src.count} items were skipped "
            f"(first reasons: {[s['reason'] for s in summary['skipped'][:3]]})"
        )
    return {
        "format": FORMAT,
        "resolution": resolution,
        "count": stored,
        "content_hash": content_hash(hashes),
        "source": src.description,
        "source_kind": src.kind,
        "source_images": src.count,
        "recipe": recipe(src.spec, limit, synthetic_images, synthetic_seed, holdout),
        "holdout": holdout_entry(holdout, hashes),
        "skipped": summary["skipped"],
        "duplicates": summary["duplicates"],
        "shards": shards,
        "columns": [KEY, IMAGE, PIXEL_SHA256],
        "ingest_seconds": round(time.time() - started, 2),
    }


def recipe(source: str, limit: int | None, synthetic_images: int, synthetic_seed: int, holdout: float | int = 0) -> dict:
    """What decides a dataset's content and split besides the resolution: a dataset is reused
    only for the same recipe."""
    out = {"source": source, "limit": limit}
    if source == SYNTHETIC:
        out.update(synthetic_images=synthetic_images, synthetic_seed=synthetic_seed)
    if holdout:
        out["holdout"] = holdout
    return out


def holdout_entry(holdout: float | int, hashes: pa.Array | pa.ChunkedArray) -> dict:
    """The manifest's record of the held-out split (:mod:`gan.splits`): the rule every later
    step applies to each image's ``pixel_sha256``, and how many images it holds out.
    ``hashes``: the Arrow column, read in slices (8 bytes of key an image)."""
    from gan.splits import Holdout, holdout_keys

    keys = holdout_keys(h for piece in iter_strings(hashes) for h in piece)
    rule = Holdout.from_keys(holdout, keys)
    held = int(rule.mask_keys(keys).sum())
    return {**rule.to_manifest(), "images": held, "train_images": len(keys) - held}


def ensure_dataset(cfg: PipelineConfig, progress: bool = True) -> dict:
    """The manifest of the dataset at ``cfg.dataset_uri``, ingesting ``cfg.data.source`` there first if needed,
    on the Ray cluster this process has joined (:func:`pipelines.driver.session.open_session` joins it).

    With ``data.drop_near_duplicates`` the dataset is a de-duplicated copy of the plain
    ingest (which stays, reusable, at its own location): see :func:`drop_near_duplicates`.
    """
    uri = cfg.dataset_uri
    wanted = recipe(cfg.data.source, cfg.data.limit, cfg.data.synthetic_images, cfg.data.synthetic_seed,
                    cfg.data.holdout)
    if cfg.data.drop_near_duplicates:
        wanted["near_duplicate_radius"] = cfg.data.near_duplicate_radius
    if storage.exists(storage.join(uri, MANIFEST)):
        manifest = read_manifest(uri)
        if manifest.get("resolution") != cfg.model.resolution or manifest.get("recipe", wanted) != wanted:
            raise IngestError(
                f"the dataset at {uri} was ingested at {manifest.get('resolution')}px from {manifest.get('recipe')}, "
                f"but this config asks for {cfg.model.resolution}px from {wanted}. Point data.dataset at another "
                f"location, or delete {uri} to ingest it again."
            )
        print(f"[dataset] {uri}: {manifest['count']} images, ingested before", flush=True)
        return manifest
    if cfg.data.drop_near_duplicates:
        plain = cfg.model_copy(update={"data": cfg.data.model_copy(update={"drop_near_duplicates": False, "dataset": None})})
        return drop_near_duplicates(plain.dataset_uri, uri, cfg, ensure_dataset(plain, progress), wanted, progress)
    # Open the source before starting Ray: a missing or unreachable one fails in a second.
    source = open_source(cfg.data.source, limit=cfg.data.limit, synthetic_images=cfg.data.synthetic_images,
                         synthetic_seed=cfg.data.synthetic_seed)
    print(f"[dataset] {uri}: ingesting {cfg.data.source}", flush=True)
    return ingest(source, uri, cfg.model.resolution, limit=cfg.data.limit, shard_mb=cfg.data.shard_mb,
                  synthetic_images=cfg.data.synthetic_images, synthetic_seed=cfg.data.synthetic_seed,
                  progress=progress, holdout=cfg.data.holdout)


def drop_near_duplicates(src: str, out: str, cfg: PipelineConfig, manifest: dict, wanted_recipe: dict,
                         progress: bool = True) -> dict:
    """Copy the dataset at ``src`` to ``out`` keeping one image per near-duplicate cluster.

    The clusters come from the memorization audit's semantic hash (the DCGAN paper removed
    about 275,000 such images from LSUN this way): images whose 128-bit codes lie within
    ``data.near_duplicate_radius`` bits. The first image of each cluster stays; the
    manifest lists every dropped key with the key it duplicates.
    """
    from pipelines.evaluation.cache import near_duplicate_keys

    started = time.time()
    clusters = near_duplicate_keys(src, cfg.data.near_duplicate_radius, manifest,
                                   steps=cfg.eval.audit_autoencoder_steps, progress=progress)
    dropped = {key: cluster[0] for cluster in clusters for key in cluster[1:]}
    _prepare_output(out)
    kept = []  # each shard's pixel_sha256 column (Arrow: no Python string per image)
    shards = []
    for shard in storage.list_files(src, SHARD_SUFFIX):
        fs, path = storage.filesystem(shard)
        table = pq.read_table(path, filesystem=fs)
        table = table.filter(pc.invert(pc.is_in(table.column(KEY), value_set=pa.array(list(dropped), pa.string()))))
        name = shard.rsplit("/", 1)[-1]
        out_fs, out_path = storage.filesystem(storage.join(out, name))
        out_fs.create_dir(out_path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, out_path, filesystem=out_fs)
        kept.append(table.column(PIXEL_SHA256).combine_chunks())
        shards.append({"file": name, "rows": table.num_rows})
    kept_hashes = pa.chunked_array(kept, pa.string())
    result = {**manifest, "count": len(kept_hashes), "content_hash": content_hash(kept_hashes), "shards": shards,
              "holdout": holdout_entry(cfg.data.holdout, kept_hashes),
              "recipe": wanted_recipe, "source": f"{manifest.get('source')} without near-duplicates", "derived_from": src,
              "near_duplicates": {"radius": cfg.data.near_duplicate_radius, "clusters": len(clusters),
                                  "dropped": len(dropped), "dropped_keys": dropped},
              "ingest_seconds": round(manifest.get("ingest_seconds", 0) + time.time() - started, 2)}
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(result, indent=1).encode())
    print(f"near-duplicates: {len(clusters)} clusters, {len(dropped)} images dropped, {len(kept_hashes)} kept -> {out}",
          flush=True)
    return result
