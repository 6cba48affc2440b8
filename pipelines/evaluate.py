"""Evaluation step: FID and KID against the training data, the memorization audit, into MLflow.

``python -m pipelines.evaluate --run <MLflow run id | checkpoint | models:/...>``
(or ``dcgan evaluate``) evaluates a generator and logs metrics, the audit report
(JSON) and image grids into the run; the pipeline calls :func:`evaluate_generator`
after training, and the training loop a :class:`TrainingEvaluator` every
``eval.fid_every`` iterations (FID/KID only, spread over its DDP ranks).

What is computed once per dataset is cached beside it (``<dataset>/_eval/``,
local or s3://), keyed by the manifest's ``content_hash`` and the recipe that
made it, so a cluster computes it once:
- the Inception statistics of the training images (:func:`reference_stats`),
  with the features of a seeded random subset for KID;
- the audit's autoencoder and the semantic hash of every training image
  (:func:`audit_index`).

Distributed: with ``workers > 0`` the work (dataset chunks, slices of generated
samples) is spread over Ray actors, each holding the Inception network on its
device (a GPU when ``use_gpu``); partial statistics come back as float64 sums and
merge exactly. With ``workers = 0`` the same code runs in this process, with a
progress bar. Generated sample i depends only on (seed, i), never on the number
of workers.
"""

from __future__ import annotations


import argparse
import contextlib
import copy
import hashlib
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan import fid
from gan import memorization as mem
from gan.images import grid
from pipelines import storage
from pipelines.config import ConfigError, PipelineConfig, deep_merge, load_config, parse_overrides, validate
from pipelines.data import read_manifest
from pipelines.dataset_format import IMAGE, KEY, SHARD_SUFFIX, decode_images

CACHE_FOLDER = "_eval"
ROWS_PER_CHUNK = 4096  # one task's share of a dataset: small enough to spread, large enough to amortise
SAMPLES_PER_TASK = 500  # one task's share of generated samples
LATENT_SEED_BLOCK = 500  # samples [k*500, (k+1)*500) come from seed (seed, k): fixed, whatever the split
GRID_SAMPLES = 64
AUDIT_GRID_ROWS = 8
AUTOENCODER_STEPS = 2000
AUTOENCODER_MAX_VIEWS = 100_000
CHECKPOINT_TAG = "checkpoint"  # on a training run (pipelines/train.py): where its last checkpoint lives


class EvaluationError(RuntimeError):
    """Evaluation cannot run as asked; the message says what to do."""


# --------------------------------------------------------------------------- dataset access


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
        raise EvaluationError(f"no Parquet shards in {dataset_uri}: ingest the dataset first (dcgan ingest ... --out {dataset_uri})")
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


def _cache_uri(dataset_uri: str, kind: str, recipe: dict) -> str:
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    return storage.join(dataset_uri, CACHE_FOLDER, f"{kind}-{key}.npz")


def _content_hash(manifest: dict, dataset_uri: str) -> str:
    if not manifest.get("content_hash"):
        raise EvaluationError(f"the manifest of {dataset_uri} has no content_hash: re-run ingest to write a complete manifest")
    return manifest["content_hash"]


# --------------------------------------------------------------------------- workers


class EvaluationWorker:
    """One device's share of the work: holds the Inception network (loaded on first use)."""

    def __init__(self, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._extractor: fid.InceptionFeatures | None = None

    @property
    def extractor(self) -> fid.InceptionFeatures:
        if self._extractor is None:
            self._extractor = fid.InceptionFeatures(self.device)
        return self._extractor

    def dataset_features(self, chunk: Chunk, resolution: int, rows: np.ndarray, keep: np.ndarray, batch_size: int):
        """(FeatureStats, global indices kept, their features) of the chunk's rows in ``rows``
        (sorted global indices); features are kept for those also in ``keep`` (KID)."""
        mine = rows[(rows >= chunk.first) & (rows < chunk.first + chunk.rows)]
        images = read_chunk(chunk, resolution)[mine - chunk.first]
        stats, kept = fid.FeatureStats.empty(), []
        for i in range(0, len(images), batch_size):
            feats = self.extractor(images[i:i + batch_size])
            stats.add(feats)
            kept.append(feats[np.isin(mine[i:i + len(feats)], keep)])
        idx = keep[(keep >= chunk.first) & (keep < chunk.first + chunk.rows)]
        return stats, idx, np.concatenate(kept) if kept else np.zeros((0, fid.FEATURE_DIM), np.float32)

    def dataset_views(self, chunk: Chunk, resolution: int, keep: np.ndarray):
        """The audit's 32x32 views of the chunk's rows whose global index is in ``keep``."""
        images = read_chunk(chunk, resolution)
        idx = keep[(keep >= chunk.first) & (keep < chunk.first + chunk.rows)]
        return idx, mem.audit_views(images[idx - chunk.first])

    def dataset_hashes(self, chunk: Chunk, resolution: int, autoencoder: bytes) -> np.ndarray:
        model = mem.DenoisingAutoencoder.from_bytes(autoencoder)
        return mem.pack_bits(model.hash_bits(mem.audit_views(read_chunk(chunk, resolution))))

    def generated(self, generator: torch.nn.Module, start: int, count: int, seed: int, batch_size: int,
                  keep_images: int, keep_features: int = fid.KID_FEATURES):
        """Samples [start, start + count): (FeatureStats, features of those < keep_features (for KID),
        uint8 images of those < keep_images (grids, audit))."""
        if count == 0:  # more ranks than samples
            return fid.FeatureStats.empty(), np.zeros((0, fid.FEATURE_DIM), np.float32), np.zeros((0, 0, 0, 3), np.uint8)
        g = copy.deepcopy(generator).to(self.device).eval()  # the caller's (training) generator stays as it is
        latents = sample_latents(start, count, seed, latent_dim(generator))
        stats, features, images = fid.FeatureStats.empty(), [], []
        with torch.inference_mode():
            for i in range(0, count, batch_size):
                u8 = fid.float_to_uint8(g(latents[i:i + batch_size].to(self.device)))
                feats = self.extractor(u8)
                stats.add(feats)
                features.append(feats[: max(0, keep_features - (start + i))])
                images.append(u8[: max(0, keep_images - (start + i))].cpu().numpy())
        return stats, np.concatenate(features), np.concatenate(images)


def latent_dim(generator: torch.nn.Module) -> int:
    dim = getattr(generator, "latent_dim", None) or getattr(getattr(generator, "module", None), "latent_dim", None)
    if not dim:
        raise EvaluationError(f"cannot tell the latent size of {type(generator).__name__}: expected gan.models.Generator")
    return int(dim)


def sample_latents(start: int, count: int, seed: int, dim: int) -> torch.Tensor:
    """z of samples [start, start + count): each block of LATENT_SEED_BLOCK samples has its own
    seed, so sample i is the same however the samples are split over workers."""
    b = LATENT_SEED_BLOCK
    parts = []
    for block in range(start // b, (start + count - 1) // b + 1):
        z = torch.randn(b, dim, 1, 1, generator=torch.Generator().manual_seed(seed * 1_000_003 + block))
        parts.append(z[max(start, block * b) - block * b: min(start + count, (block + 1) * b) - block * b])
    return torch.cat(parts)


class WorkerPool:
    """``workers`` Ray actors (each with a GPU when ``use_gpu``), or this process when 0."""

    def __init__(self, workers: int = 0, use_gpu: bool = False, cpus_per_worker: float = 1.0, progress: bool = True):
        self.workers, self.progress = workers, progress
        self._local: EvaluationWorker | None = None
        self._actors: list = []
        if workers > 0:
            import ray

            from pipelines.cluster import init_ray

            init_ray()  # RAY_ADDRESS when set, else a local cluster
            remote = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=cpus_per_worker)(EvaluationWorker)
            self._actors = [remote.remote() for _ in range(workers)]
        else:
            self._local = EvaluationWorker()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
            self._actors = []

    def map(self, method: str, items: list[tuple], sizes: list[int], desc: str) -> list:
        """``EvaluationWorker.<method>(*item)`` for every item, results in item order."""
        from tqdm import tqdm

        results = []
        with tqdm(total=sum(sizes), desc=desc, unit="img", disable=not self.progress, mininterval=2) as bar:
            if self._local is not None:
                for item, size in zip(items, sizes):
                    results.append(getattr(self._local, method)(*item))
                    bar.update(size)
                return results
            from ray.util import ActorPool

            pool = ActorPool(self._actors)
            for result, size in zip(pool.map(lambda a, item: getattr(a, method).remote(*item), items), sizes):
                results.append(result)
                bar.update(size)
        return results


def workers_for(cfg: PipelineConfig) -> int:
    """Ray actors for a config: its workers when it has several or GPUs, else this process (0)."""
    return cfg.scaling.num_workers if cfg.scaling.num_workers > 1 or cfg.scaling.use_gpu else 0


@contextlib.contextmanager
def using_pool(pool: WorkerPool | None, workers: int = 0, use_gpu: bool = False, progress: bool = True):
    """The caller's pool, or one made (and closed) for this call."""
    if pool is not None:
        yield pool
    else:
        with WorkerPool(workers, use_gpu, progress=progress) as own:
            yield own


# --------------------------------------------------------------------------- reference statistics


@dataclass
class ReferenceStats:
    stats: fid.FeatureStats
    features: np.ndarray  # float32, a seeded random subset, for KID
    cache_uri: str
    from_cache: bool
    _frechet: fid.FrechetReference | None = field(default=None, repr=False)

    @property
    def frechet(self) -> fid.FrechetReference:
        if self._frechet is None:
            self._frechet = fid.FrechetReference(self.stats.mean, self.stats.covariance)
        return self._frechet


def reference_stats(dataset_uri: str, manifest: dict | None = None, cfg: PipelineConfig | None = None, *,
                    pool: WorkerPool | None = None, batch_size: int | None = None, kid_features: int = fid.KID_FEATURES,
                    refresh: bool = False, rows_per_chunk: int = ROWS_PER_CHUNK, progress: bool = True,
                    images: int | None = None) -> ReferenceStats:
    """Inception statistics of the training data, computed once and cached beside the dataset.

    Without a ``pool``, a ``cfg`` with several workers or GPUs spreads the work over Ray
    actors like its training workers (:func:`workers_for`); else it runs here.
    """
    batch_size = batch_size or (cfg.eval.batch_size if cfg else 50)
    manifest = manifest or read_manifest(dataset_uri)
    limit = images or (cfg.eval.reference_images if cfg else None)
    recipe = {"content_hash": _content_hash(manifest, dataset_uri), "extractor": fid.feature_extractor_id(),
              "kid_features": kid_features, "kid_seed": 0, "images": limit}
    cache = _cache_uri(dataset_uri, "inception", recipe)
    if not refresh and storage.exists(cache):
        loaded = fid.load_stats(storage.read_bytes(cache))
        if loaded.meta.get("recipe") == json.dumps(recipe, sort_keys=True):
            return ReferenceStats(loaded.stats, loaded.features, cache, from_cache=True)
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    total = chunks[-1].first + chunks[-1].rows
    # A seeded subset of the training images when eval.reference_images caps them (the
    # usual FID reference is 50k images, not all 3M LSUN bedrooms); KID keeps a subset of those.
    rows = np.arange(total) if not limit or limit >= total else np.sort(
        np.random.default_rng(0).choice(total, limit, replace=False))
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
                                            dataset=dataset_uri))
    return ReferenceStats(stats, features, cache, from_cache=False)


# --------------------------------------------------------------------------- audit index


@dataclass
class AuditIndex:
    autoencoder: mem.DenoisingAutoencoder
    bits: np.ndarray  # bool (N, 128), training images in the dataset's global order
    losses: list[float]
    cache_uri: str
    from_cache: bool


def audit_index(dataset_uri: str, manifest: dict | None = None, *, pool: WorkerPool | None = None,
                steps: int = AUTOENCODER_STEPS, max_views: int = AUTOENCODER_MAX_VIEWS, seed: int = 0,
                refresh: bool = False, rows_per_chunk: int = ROWS_PER_CHUNK, progress: bool = True) -> AuditIndex:
    """The audit's autoencoder, trained on (up to ``max_views``) training views, and the semantic
    hash of every training image; cached beside the dataset."""
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

    index = audit_index(dataset_uri, manifest, **index_kwargs)
    keys: list[str] = []
    for uri in storage.list_files(dataset_uri, SHARD_SUFFIX):  # the global order of dataset_chunks
        fs, path = storage.filesystem(uri)
        keys += pq.read_table(path, filesystem=fs, columns=[KEY]).column(KEY).to_pylist()
    return [[keys[i] for i in cluster] for cluster in mem.near_duplicate_clusters(index.bits, radius)]


def _tqdm(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=2)


# --------------------------------------------------------------------------- evaluation


def sample_tag(n: int) -> str:
    """How a sample count appears in metric names: 10000 -> '10k', 200 -> '200'."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def metric_key(metric: str, samples: int) -> str:
    """A metric's name with its sample count: ('fid', 10000) -> 'fid_10k'."""
    return f"{metric}_{sample_tag(samples)}"


@dataclass
class EvaluationResult:
    metrics: dict[str, float]  # fid_<n>, kid_<n>, kid_<n>_std, audit_* (named with their sample counts)
    audit: dict | None  # the audit report (JSON-able)
    grids: dict[str, Path]  # name -> PNG
    samples: int
    audit_samples: int
    seconds: float

    @property
    def images(self) -> list[Path]:
        return list(self.grids.values())


def evaluate_generator(generator: torch.nn.Module, dataset_uri: str, cfg: PipelineConfig, *,
                       samples: int | None = None, audit_samples: int | None = None, out_dir: str | Path | None = None,
                       workers: int = 0, use_gpu: bool = False, seed: int = 0, progress: bool = True,
                       manifest: dict | None = None, rows_per_chunk: int = ROWS_PER_CHUNK,
                       autoencoder_steps: int | None = None, samples_per_task: int = SAMPLES_PER_TASK,
                       pool: WorkerPool | None = None) -> EvaluationResult:
    """FID/KID of ``samples`` generated images against the training data, and the audit of
    ``audit_samples`` of them; grids are written under ``out_dir`` (default: a temporary folder).

    ``workers=0`` runs here (on this process's GPU if it has one): what the training loop
    wants. ``workers>0`` spreads the work over that many Ray actors; pass a ``pool`` to
    keep the actors (and their loaded networks) from one evaluation to the next.
    """
    started = time.time()
    manifest = manifest or read_manifest(dataset_uri)
    n = samples or cfg.eval.fid_samples
    m = min(n, audit_samples or cfg.eval.audit_samples) if cfg.eval.audit else 0
    if n < 2:
        raise ConfigError(f"eval.fid_samples must be at least 2 (got {n})")
    made = getattr(generator, "resolution", None)
    if made and made != manifest["resolution"]:
        raise EvaluationError(f"the generator makes {made}x{made} images but the dataset at {dataset_uri} holds "
                              f"{manifest['resolution']}x{manifest['resolution']}: evaluate against its training dataset")
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="dcgan-eval-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with using_pool(pool, workers, use_gpu, progress) as pool:
        ref = reference_stats(dataset_uri, manifest, pool=pool, batch_size=cfg.eval.batch_size,
                              rows_per_chunk=rows_per_chunk, progress=progress, images=cfg.eval.reference_images)
        gen_ref = _put(generator, pool.workers)
        slices = [(s, min(samples_per_task, n - s)) for s in range(0, n, samples_per_task)]
        keep_images = max(m, GRID_SAMPLES)
        parts = pool.map("generated", [(gen_ref, s, c, seed, cfg.eval.batch_size, keep_images) for s, c in slices],
                         [c for _, c in slices], f"generated samples ({sample_tag(n)})")
        index = audit_index(dataset_uri, manifest, pool=pool, rows_per_chunk=rows_per_chunk,
                            steps=autoencoder_steps or cfg.eval.audit_autoencoder_steps,
                            progress=progress) if m else None
    stats = sum((p[0] for p in parts), fid.FeatureStats.empty())
    features = np.concatenate([p[1] for p in parts])
    images = np.concatenate([p[2] for p in parts])
    metrics = fid_kid(ref, stats, features, cfg, seed)
    grids = {"samples": _save_png(grid_of(images[:GRID_SAMPLES]), out_dir / f"samples-{sample_tag(n)}.png")}
    report = None
    if index is not None:
        report, audit_metrics, audit_grid = _audit_samples(images[:m], index, dataset_uri, manifest["resolution"],
                                                           rows_per_chunk, out_dir)
        metrics |= audit_metrics
        if audit_grid:
            grids["audit"] = audit_grid
    return EvaluationResult(metrics, report, grids, n, m, time.time() - started)


def fid_kid(reference: ReferenceStats, stats: fid.FeatureStats, features: np.ndarray, cfg: PipelineConfig,
            seed: int = 0) -> dict[str, float]:
    """fid_<n>, kid_<n> and kid_<n>_std of generated samples' statistics and (some of) their features."""
    kid, kid_std = fid.kernel_inception_distance(reference.features, features, cfg.eval.kid_subsets,
                                                 cfg.eval.kid_subset_size, seed)
    return {metric_key("fid", stats.count): reference.frechet.distance(stats.mean, stats.covariance),
            metric_key("kid", stats.count): kid, metric_key("kid", stats.count) + "_std": kid_std}


def _audit_samples(images: np.ndarray, index: AuditIndex, dataset_uri: str, resolution: int, rows_per_chunk: int,
                   out_dir: Path) -> tuple[dict, dict[str, float], Path | None]:
    """The memorization audit of generated uint8 images: (report, metrics, grid of the closest pairs)."""
    chunks = dataset_chunks(dataset_uri, rows_per_chunk)
    views = mem.audit_views(images)
    result = mem.audit(views, index.autoencoder.hash_bits(views), index.bits,
                       lambda idx: read_rows(chunks, idx, resolution),
                       device="cuda" if torch.cuda.is_available() else "cpu")  # M x N Hamming distances
    report = result.report | {"autoencoder_final_loss": index.losses[-1] if index.losses else None}
    metrics = {metric_key("audit_exact_collisions", len(images)): report["exact_collision_fraction"],
               metric_key("audit_flagged", len(images)): report["flagged_fraction"],
               metric_key("audit_median_hamming", len(images)): report["hamming_to_nearest"]["quantiles"]["p50"]}
    pairs = result.pairs[:AUDIT_GRID_ROWS]
    if not pairs:
        return report, metrics, None
    neighbours = read_rows(chunks, np.array([nb for _, nb in pairs]).ravel(), resolution)
    rows = mem.audit_grid_images(images[[s for s, _ in pairs]], neighbours.reshape(len(pairs), -1, resolution, resolution, 3))
    return report, metrics, _save_png(grid_of(rows, nrow=rows.shape[0] // len(pairs)), out_dir / f"audit-{sample_tag(len(images))}.png")


class TrainingEvaluator:
    """``evaluator(generator, iteration) -> {fid_<n>, kid_<n>, kid_<n>_std}`` for the training loop.

    Call it on every rank of a torch.distributed group (or in a single process): each
    rank generates and embeds its share of the samples on the generator's device, the
    float64 sums are all-reduced (an exact merge), the KID features gathered, and rank
    0's metrics are given to every rank. Sample i is the same whatever the number of
    ranks, and the same at every call (fixed seed), so the FID curve tracks the generator,
    not the noise. The reference statistics are read from the cache; compute them first
    (``reference_stats(dataset_uri, manifest, cfg)``), or rank 0 computes them alone.
    """

    def __init__(self, cfg: PipelineConfig, manifest: dict | None = None, samples: int | None = None, seed: int = 0):
        self.cfg, self.manifest, self.seed = cfg, manifest, seed
        self.samples = samples or cfg.eval.fid_samples
        self._reference: ReferenceStats | None = None
        self._worker: EvaluationWorker | None = None

    def __getstate__(self):  # Ray ships the evaluator to the workers: not the loaded networks
        return {**self.__dict__, "_reference": None, "_worker": None}

    def __call__(self, generator: torch.nn.Module, iteration: int) -> dict[str, float]:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        device = next(generator.parameters()).device
        if self._worker is None:
            self._worker = EvaluationWorker(str(device))
        start, stop = self.samples * rank // world, self.samples * (rank + 1) // world
        stats, features, _ = self._worker.generated(generator, start, stop - start, self.seed,
                                                    self.cfg.eval.batch_size, keep_images=0)
        if distributed:
            stats, features = _merged_over_ranks(stats, features, device if dist.get_backend() == "nccl" else "cpu")
        metrics = None
        if rank == 0:
            if self._reference is None:
                self._reference = reference_stats(self.cfg.dataset_uri, self.manifest, batch_size=self.cfg.eval.batch_size,
                                                  images=self.cfg.eval.reference_images)
            metrics = fid_kid(self._reference, stats, features, self.cfg, self.seed)
        if distributed:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics


def _merged_over_ranks(stats: fid.FeatureStats, features: np.ndarray, device) -> tuple[fid.FeatureStats, np.ndarray]:
    """Every rank's statistics summed (float64 all-reduce) and features gathered, in rank order."""
    import torch.distributed as dist

    d = stats.total.shape[0]
    sums = torch.cat([torch.tensor([float(stats.count)], dtype=torch.float64), torch.from_numpy(stats.total),
                      torch.from_numpy(stats.outer).flatten()]).to(device)
    dist.all_reduce(sums)
    sums = sums.cpu().numpy()
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, features)
    return fid.FeatureStats(int(round(sums[0])), sums[1:1 + d], sums[1 + d:].reshape(d, d)), np.concatenate(gathered)


def _put(generator: torch.nn.Module, workers: int):
    """The generator as the workers receive it: once into Ray's object store, or as is."""
    if workers <= 0:
        return generator
    import ray

    return ray.put(copy.deepcopy(generator).cpu().eval())


def grid_of(images_uint8: np.ndarray, nrow: int | None = None) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return grid(x, nrow=nrow)


def _save_png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image).save(path)
    return path


# --------------------------------------------------------------------------- MLflow


def log_to_mlflow(result: EvaluationResult, tracking_uri: str, run_id: str | None = None, step: int = 0,
                  experiment: str = "dcgan-lsun-bedroom", run_name: str = "evaluate", tags: dict | None = None) -> str:
    """Metrics, the audit report and the grids of one evaluation into an MLflow run
    (a new, finished run in ``experiment`` when ``run_id`` is None); returns the run id."""
    import mlflow

    from pipelines import tracking

    client = mlflow.MlflowClient(tracking_uri)
    new_run = run_id is None
    if new_run:
        experiment_id = tracking.configure(tracking_uri, experiment)  # artifacts beside an embedded SQLite store
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
    for name, value in result.metrics.items():
        client.log_metric(run_id, name, float(value), step=step)
    if result.audit is not None:
        client.log_dict(run_id, result.audit, f"evaluation/audit-{sample_tag(result.audit_samples)}-step{step:07d}.json")
    for path in result.grids.values():
        client.log_artifact(run_id, str(path), f"evaluation/step{step:07d}")
    if new_run:
        client.set_terminated(run_id)
    return run_id


# --------------------------------------------------------------------------- command


def _is_location(target: str) -> bool:
    return "/" in target or target.endswith(".pt") or Path(target).exists()


def _resolve(target: str, tracking_uri: str) -> tuple[str, str | None]:
    """--run -> (generator location for load_generator, MLflow run id to log into or None)."""
    if _is_location(target):
        return target, None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(target)
    except mlflow.exceptions.MlflowException as e:
        raise EvaluationError(f"'{target}' is neither a checkpoint path nor an MLflow run at {tracking_uri} ({e}). "
                              "Pass a checkpoint folder/.pt, or set MLFLOW_TRACKING_URI to the run's server") from None
    if run.data.tags.get(CHECKPOINT_TAG):
        return run.data.tags[CHECKPOINT_TAG], target
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{target}'", output_format="list")
    if models:
        return f"models:/{models[0].model_id}", target
    raise EvaluationError(f"MLflow run {target} has neither a '{CHECKPOINT_TAG}' tag nor a logged model: "
                          "pass its checkpoint with --run <checkpoint folder>")


def main(argv: list[str] | None = None) -> int:
    from pipelines import tracking
    from pipelines.checkpoints import generator_from_state, load_generator, load_state

    ap = argparse.ArgumentParser(prog="dcgan evaluate", description="FID, KID and the memorization audit of a generator, into MLflow.")
    ap.add_argument("--run", required=True, help="an MLflow run id, a checkpoint (folder or .pt, local or s3://), or models:/...")
    ap.add_argument("--config", help="preset or YAML (default: the checkpoint's own config)")
    ap.add_argument("--dataset", help="the ingested training dataset (default: the config's)")
    ap.add_argument("--samples", type=int, help="generated samples for FID/KID (default eval.fid_samples)")
    ap.add_argument("--audit-samples", type=int, help="samples audited for memorization (default eval.audit_samples)")
    ap.add_argument("--workers", type=int, help="Ray actors (0: this process; default scaling.num_workers if >1 or GPUs)")
    ap.add_argument("--out", help="folder for the grids (also logged to MLflow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autoencoder-steps", type=int, default=AUTOENCODER_STEPS, help="training steps of the audit's autoencoder")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. eval.audit=false")
    args = ap.parse_args(argv)
    try:
        base = load_config(args.config) if args.config else PipelineConfig()
        tracking_uri = validate(deep_merge(base.model_dump(), parse_overrides(args.overrides))).tracking_uri()
        location, run_id = _resolve(args.run, tracking_uri)
        state = None if location.startswith(("models:/", "runs:/")) else load_state(location)
        raw = state["config"] if state and not args.config else base.model_dump()
        cfg = validate(deep_merge(raw, parse_overrides(args.overrides)))
        if args.dataset:
            cfg = validate(deep_merge(cfg.model_dump(), {"data": {"dataset": args.dataset}}))
        generator = generator_from_state(state) if state else load_generator(location)
        tracking_uri = cfg.tracking_uri()
        tracking.check_tracking(tracking_uri)  # before the expensive part
        workers = args.workers if args.workers is not None else workers_for(cfg)
        result = evaluate_generator(generator, cfg.dataset_uri, cfg, samples=args.samples, audit_samples=args.audit_samples,
                                    out_dir=args.out, workers=workers, use_gpu=cfg.scaling.use_gpu, seed=args.seed,
                                    autoencoder_steps=args.autoencoder_steps)
        step = int(state.get("iteration", 0)) if state else 0
        run_id = log_to_mlflow(result, tracking_uri, run_id or (state or {}).get("mlflow_run_id"), step=step,
                               experiment=cfg.tracking.experiment, run_name=f"evaluate-{cfg.name}",
                               tags={"dcgan.evaluated": args.run})
    except (EvaluationError, ConfigError, storage.StorageError, fid.FIDError, tracking.TrackingUnavailable) as e:
        print(f"dcgan evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"run_id": run_id, "step": step, **{k: round(v, 6) for k, v in result.metrics.items()},
                      "grids": {k: str(v) for k, v in result.grids.items()}, "seconds": round(result.seconds, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
