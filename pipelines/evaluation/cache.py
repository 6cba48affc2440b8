"""What evaluation computes once per dataset, cached beside it.

``<dataset>/_eval/`` (local or s3://) holds, keyed by the manifest's ``content_hash``
and the recipe that made them, so a cluster computes each once:
- the Inception statistics of the training images (:func:`reference_stats`), with the
  features of a seeded random subset for KID;
- the audit's autoencoder and the semantic hash of every training image
  (:func:`audit_index`), which ingest also uses to find near-duplicates.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np

from gan import fid
from gan import memorization as mem
from pipelines.cluster import storage
from pipelines.config import EvalConfig, PipelineConfig
from pipelines.dataset.format import KEY, SHARD_SUFFIX, read_manifest
from pipelines.dataset.rows import ROWS_PER_CHUNK, dataset_chunks, split_rows
from pipelines.errors import EvaluationError
from pipelines.evaluation.pool import WorkerPool, using_pool, workers_for

CACHE_FOLDER = "_eval"
AUTOENCODER_MAX_VIEWS = 100_000


def _cache_uri(dataset_uri: str, kind: str, recipe: dict) -> str:
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    return storage.join(dataset_uri, CACHE_FOLDER, f"{kind}-{key}.npz")


def _content_hash(manifest: dict, dataset_uri: str) -> str:
    if not manifest.get("content_hash"):
        raise EvaluationError(f"the manifest of {dataset_uri} has no content_hash: re-run ingest to write a complete manifest")
    return manifest["content_hash"]



@dataclass
class ReferenceStats:
    stats: fid.FeatureStats
    features: np.ndarray  # float32, a seeded random subset, for KID and the copying audit
    cache_uri: str
    from_cache: bool
    feature_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # their global row indices
    _frechet: fid.FrechetReference | None = field(default=None, repr=False)

    @property
    def frechet(self) -> fid.FrechetReference:
        if self._frechet is None:
            self._frechet = fid.FrechetReference(self.stats.mean, self.stats.covariance)
        return self._frechet


def reference_stats(dataset_uri: str, manifest: dict | None = None, cfg: PipelineConfig | None = None, *,
                    pool: WorkerPool | None = None, batch_size: int | None = None, kid_features: int = fid.KID_FEATURES,
                    refresh: bool = False, rows_per_chunk: int = ROWS_PER_CHUNK, progress: bool = True,
                    images: int | None = None, split: str = "train") -> ReferenceStats:
    """Inception statistics of the training images (``split="train"``) or of the held-out
    ones (``"heldout"``), computed once and cached beside the dataset.

    Without a ``pool``, a ``cfg`` with several workers or GPUs spreads the work over Ray
    actors like its training workers (:func:`workers_for`); else it runs here.
    """
    batch_size = batch_size or (cfg.eval.batch_size if cfg else 50)
    manifest = manifest or read_manifest(dataset_uri)
    limit = images or (cfg.eval.reference_images if cfg else None)
    recipe = {"content_hash": _content_hash(manifest, dataset_uri), "extractor": fid.feature_extractor_id(),
              "kid_features": kid_features, "kid_seed": 0, "images": limit, "split": split,
              "holdout": manifest.get("holdout", {}).get("cutoff")}
    cache = _cache_uri(dataset_uri, "inception", recipe)
    if not refresh and storage.exists(cache):
        loaded = fid.load_stats(storage.read_bytes(cache))
        if loaded.meta.get("recipe") == json.dumps(recipe, sort_keys=True):
            return ReferenceStats(loaded.stats, loaded.features, cache, from_cache=True,
                                  feature_rows=np.asarray(json.loads(loaded.meta.get("feature_rows", "[]")), np.int64))
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    train, heldout = split_rows(dataset_uri, manifest, rows_per_chunk)
    pool_rows = train if split == "train" else heldout
    if len(pool_rows) < 2:
        raise EvaluationError(f"the {split} split of {dataset_uri} has {len(pool_rows)} images: statistics need at least "
                              "2 (set data.holdout and ingest again for held-out statistics)")
    # A seeded subset of the images when eval.reference_images caps them (the usual FID
    # reference is 50k images, not all 3M LSUN bedrooms); KID keeps a subset of those.
    rows = pool_rows if not limit or limit >= len(pool_rows) else np.sort(
        np.random.default_rng(0).choice(pool_rows, limit, replace=False))
    keep = np.sort(np.random.default_rng(1).choice(rows, min(kid_features, len(rows)), replace=False))
    chunks = [c for c in chunks if np.any((rows >= c.first) & (rows < c.first + c.rows))]
    workers, use_gpu = (workers_for(cfg), cfg.scaling.use_gpu) if cfg else (0, False)
    with using_pool(pool, workers, use_gpu, progress) as pool:
        parts = pool.map("dataset_features", [(c, manifest["resolution"], rows, keep, batch_size) for c in chunks],
                         [int(np.sum((rows >= c.first) & (rows < c.first + c.rows))) for c in chunks],
                         "reference statistics")
    stats = sum((p[0] for p in parts), fid.FeatureStats.empty())
    features = np.concatenate([p[2] for p in parts])
    storage.write_bytes(cache, stats.to_npz(features=features, recipe=json.dumps(recipe, sort_keys=True),
                                            dataset=dataset_uri, feature_rows=json.dumps(keep.tolist())))
    return ReferenceStats(stats, features, cache, from_cache=False, feature_rows=keep)



@dataclass
class AuditIndex:
    autoencoder: mem.DenoisingAutoencoder
    bits: np.ndarray  # bool (N, 128), training images in the dataset's global order
    losses: list[float]
    cache_uri: str
    from_cache: bool


def audit_index(dataset_uri: str, manifest: dict | None = None, *, pool: WorkerPool | None = None,
                steps: int | None = None, max_views: int = AUTOENCODER_MAX_VIEWS, seed: int = 0,
                refresh: bool = False, rows_per_chunk: int = ROWS_PER_CHUNK, progress: bool = True) -> AuditIndex:
    """The audit's autoencoder, trained on (up to ``max_views``) training views, and the semantic
    hash of every training image; cached beside the dataset."""
    steps = steps or EvalConfig().audit_autoencoder_steps
    manifest = manifest or read_manifest(dataset_uri)
    recipe = {"content_hash": _content_hash(manifest, dataset_uri), "steps": steps, "max_views": max_views,
              "seed": seed, "view": mem.VIEW_SIZE, "bits": mem.CODE_BITS, "autoencoder": mem.DenoisingAutoencoder().config()}
    cache = _cache_uri(dataset_uri, "audit", recipe)
    if not refresh and storage.exists(cache):
        z = np.load(io.BytesIO(storage.read_bytes(cache)), allow_pickle=False)
        model = mem.DenoisingAutoencoder.from_bytes(z["autoencoder"].tobytes())
        return AuditIndex(model, mem.unpack_bits(z["bits"]), z["losses"].tolist(), cache, from_cache=True)
    resolution = manifest["resolution"]
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    total = chunks[-1].first + chunks[-1].rows
    keep = np.sort(np.random.default_rng(seed).choice(total, min(max_views, total), replace=False))
    with using_pool(pool, progress=progress) as pool:
        parts = pool.map("dataset_views", [(c, resolution, keep) for c in chunks], [c.rows for c in chunks], "audit views")
        views = np.concatenate([p[1] for p in parts])
        bar = _tqdm(steps, "audit autoencoder", progress)
        model, losses = mem.train_autoencoder(views, steps=steps, seed=seed, progress=lambda s, loss: (
            bar.update(s - bar.n), bar.set_postfix(loss=f"{loss:.4f}")))
        bar.close()
        if len(keep) == total:
            packed = mem.pack_bits(model.hash_bits(views))
        else:
            blob = model.to_bytes()
            packed = np.concatenate(pool.map("dataset_hashes", [(c, resolution, blob) for c in chunks],
                                             [c.rows for c in chunks], "audit hashes"))
    buf = io.BytesIO()
    np.savez(buf, autoencoder=np.frombuffer(model.to_bytes(), np.uint8), bits=packed, losses=np.array(losses),
             recipe=np.str_(json.dumps(recipe, sort_keys=True)))
    storage.write_bytes(cache, buf.getvalue())
    return AuditIndex(model, mem.unpack_bits(packed), losses, cache, from_cache=False)


def near_duplicate_keys(dataset_uri: str, radius: int = 0, manifest: dict | None = None, **index_kwargs) -> list[list[str]]:
    """Clusters of near-duplicate training images, as lists of their ``key``s (the first is the one to keep).

    What ingest calls for ``data.drop_near_duplicates``: the audit's semantic hash
    (cached, see :func:`audit_index`) grouped by :func:`gan.memorization.near_duplicate_clusters`.
    """
    import pyarrow.parquet as pq

    import pyarrow as pa

    index = audit_index(dataset_uri, manifest, **index_kwargs)
    columns = []  # Arrow, not a Python string per image: only the clusters' keys become strings
    for uri in storage.list_files(dataset_uri, SHARD_SUFFIX):  # the global order of dataset_chunks
        fs, path = storage.filesystem(uri)
        columns.append(pq.read_table(path, filesystem=fs, columns=[KEY]).column(KEY).combine_chunks())
    keys = pa.chunked_array(columns, pa.string())
    if radius > 0:
        print(f"[dataset] {near_duplicate_projection(index.bits, radius)}", flush=True)
    clusters = mem.near_duplicate_clusters(index.bits, radius)
    members = keys.take(pa.array([i for cluster in clusters for i in cluster], pa.int64())).to_pylist()
    out, at = [], 0
    for cluster in clusters:
        out.append(members[at:at + len(cluster)])
        at += len(cluster)
    return out


CANDIDATES_PER_S = 3e6  # popcount checks a second, one process (measured on a 2-core CI machine: 2.7M)


def near_duplicate_projection(bits: np.ndarray, radius: int) -> str:
    """One line said before a search within ``radius`` bits: its candidate pairs (counted from
    the bucket sizes, no pair made) and the time they project to. The count grows as N^2
    times the chance two codes share a block: uneven codes make it a large share of all pairs."""
    from gan.hamming import candidate_count

    n = len(bits)
    pairs = max(n * (n - 1) // 2, 1)
    checked = min(candidate_count(bits, radius), pairs)
    return (f"near duplicates within {radius} bits among {n:,} images: {checked:,} candidate pairs to check "
            f"({checked / pairs:.2%} of all pairs), about {checked / CANDIDATES_PER_S:,.0f} s at "
            f"{CANDIDATES_PER_S / 1e6:.0f}M pairs/s (radius 0 checks none)")


def _tqdm(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=2)
