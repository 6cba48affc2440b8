"""The workers that evaluation spreads over: Ray actors, or this process.

Each :class:`EvaluationWorker` holds the Inception network on its device (a GPU when
the pool has GPUs), loaded on first use. With ``workers > 0`` the work (dataset
chunks, slices of generated samples) goes to that many Ray actors; partial statistics
come back as float64 sums and merge exactly. With ``workers = 0`` the same code runs
in this process, with a progress bar. Generated sample i depends only on (seed, i),
never on the number of workers.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from gan import fid
from gan import memorization as mem
from gan.images import to_uint8
from pipelines.config import PipelineConfig
from pipelines.dataset.rows import Chunk, read_chunk
from pipelines.errors import EvaluationError

LATENT_SEED_BLOCK = 500  # samples [k*500, (k+1)*500) come from seed (seed, k): fixed, whatever the split


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
                u8 = to_uint8(g(latents[i:i + batch_size].to(self.device)))
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

    def __init__(self, workers: int = 0, use_gpu: bool = False, cpus_per_worker: float = 1.0, progress: bool = True,
                 device: str | None = None):
        self.workers, self.progress = workers, progress
        self._local: EvaluationWorker | None = None
        self._actors: list = []
        if workers > 0:
            import ray

            from pipelines.cluster.connect import init_ray

            init_ray()  # RAY_ADDRESS when set, else a local cluster
            remote = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=cpus_per_worker)(EvaluationWorker)
            self._actors = [remote.remote() for _ in range(workers)]
        else:
            self._local = EvaluationWorker(device)  # default: this process's GPU when it has one

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



def put_generator(generator: torch.nn.Module, workers: int):
    """The generator as the workers receive it: once into Ray's object store, or as is."""
    if workers <= 0:
        return generator
    import ray

    return ray.put(copy.deepcopy(generator).cpu().eval())
