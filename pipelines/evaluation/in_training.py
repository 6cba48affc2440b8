"""FID/KID inside the training loop, spread over the DDP ranks."""

from __future__ import annotations

import numpy as np
import torch

from gan import fid
from pipelines.config import PipelineConfig
from pipelines.evaluation.cache import ReferenceStats, reference_stats
from pipelines.dataset.format import read_manifest
from pipelines.evaluation.metrics import fid_kid, has_heldout
from pipelines.evaluation.pool import EvaluationWorker


class TrainingEvaluator:
    """``evaluator(generator, iteration) -> {fid_<n>, kid_<n>, kid_<n>_std}`` (and the same
    ``_heldout`` against held-out images when the dataset has them) for the training loop.

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
        self._reference: dict[str, ReferenceStats] = {}
        self._worker: EvaluationWorker | None = None

    def __getstate__(self):  # Ray ships the evaluator to the workers: not the loaded networks
        return {**self.__dict__, "_reference": {}, "_worker": None}

    def _splits(self) -> list[tuple[str, str]]:
        """Against the training images, and the held-out ones when the dataset has them (what
        the sweep's scheduler and the champion rule compare)."""
        self.manifest = self.manifest or read_manifest(self.cfg.dataset_uri)
        return [("train", "")] + ([("heldout", "_heldout")] if has_heldout(self.manifest) else [])

    def _references(self, split: str) -> ReferenceStats:
        if split not in self._reference:
            self._reference[split] = reference_stats(self.cfg.dataset_uri, self.manifest, split=split,
                                                     batch_size=self.cfg.eval.batch_size,
                                                     images=self.cfg.eval.reference_images)
        return self._reference[split]

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
            metrics = {}
            for split, against in self._splits():
                metrics |= fid_kid(self._references(split), stats, features, self.cfg, self.seed, against)
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
