"""Sample-quality metrics on Inception features beyond FID/KID.

- Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is
  the union of balls around its features, a ball's radius the distance to its k-th
  nearest neighbour within the set (k = 3). Precision is the fraction of generated
  features inside the real manifold, recall the fraction of real features inside
  the generated one. As stylegan2-ada's ``metrics/precision_recall.py``.
- Density and coverage (Naeem et al. 2020), k = 3 balls around real features only:
  density = (1 / kM) sum over samples of how many real balls hold it (about 1 when
  the distributions match, (k+1)/k for a set against itself, above 1 when samples
  crowd the dense regions); coverage = the fraction of real balls holding at
  least one sample.

All distances are Euclidean on the features, computed with ``torch.cdist`` in row
blocks of ``batch_size``, so memory is ``batch_size * N`` floats whatever the sizes
(10k x 10k: ~40 MB per block of 1024 rows). Every result carries its sample counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

DEFAULT_K = 3
DEFAULT_BATCH = 1024


def _tensor(features, device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features, np.float32) if not torch.is_tensor(features) else features)
    if x.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("features hold NaN or inf: check the images they came from")
    return x.to(device=device, dtype=torch.float32)


def _blocks(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


@torch.no_grad()
def knn_radii(features, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH,
              device: str | torch.device = "cpu") -> np.ndarray:
    """Distance from each feature to its k-th nearest other feature of the same set: float (N,)."""
    x = _tensor(features, device)
    if len(x) <= k:
        raise ValueError(f"k-th neighbour radii need more than k={k} features, got {len(x)}")
    out = torch.empty(len(x))
    for a, b in _blocks(len(x), batch_size):
        d = torch.cdist(x[a:b], x)
        # k + 1 smallest: the first is the feature itself (distance 0)
        out[a:b] = d.topk(k + 1, dim=1, largest=False).values[:, k].cpu()
    return out.numpy()


@torch.no_grad()
def nearest_neighbours(query, reference, batch_size: int = DEFAULT_BATCH,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For each query feature, (distance to, index of) its nearest reference feature."""
    q, r = _tensor(query, device), _tensor(reference, device)
    if len(r) == 0:
        raise ValueError("no reference features to compare against")
    dist, idx = torch.empty(len(q)), torch.empty(len(q), dtype=torch.long)
    for a, b in _blocks(len(q), batch_size):
        best = torch.cdist(q[a:b], r).min(dim=1)
        dist[a:b], idx[a:b] = best.values.cpu(), best.indices.cpu()
    return dist.numpy(), idx.numpy()


@torch.no_grad()
def _cross(real, fake, real_radii, fake_radii, batch_size, device):
    """One blocked pass over fake-real distances. Returns, as CPU tensors:
    for each fake, how many real balls hold it; for each real, whether its ball holds
    any fake (coverage); and, when ``fake_radii`` is given, for each real whether some
    fake ball holds it (recall)."""
    f, r = _tensor(fake, device), _tensor(real, device)
    rr = torch.as_tensor(np.asarray(real_radii, np.float32), device=device)
    fr = None if fake_radii is None else torch.as_tensor(np.asarray(fake_radii, np.float32), device=device)
    counts = torch.zeros(len(f), dtype=torch.long)
    covered = torch.zeros(len(r), dtype=torch.bool, device=device)
    recalled = torch.zeros(len(r), dtype=torch.bool, device=device)
    for a, b in _blocks(len(f), batch_size):
        d = torch.cdist(f[a:b], r)
        inside = d <= rr[None, :]
        counts[a:b] = inside.sum(dim=1).cpu()
        covered |= inside.any(dim=0)
        if fr is not None:
            recalled |= (d <= fr[a:b, None]).any(dim=0)
    return counts, covered.cpu(), recalled.cpu()


@dataclass
class ManifoldMetrics:
    """Precision, recall, density and coverage from one set of radii (what evaluation logs)."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    real_count: int
    fake_count: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{name}": getattr(self, name) for name in ("precision", "recall", "density", "coverage")}

    to_dict = asdict


@torch.no_grad()
def manifold_metrics(real_features, fake_features, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH,
                     device: str | torch.device = "cpu") -> ManifoldMetrics:
    """All four at the cost of three blocked distance passes (real-real, fake-fake, fake-real)."""
    real_radii = knn_radii(real_features, k, batch_size, device)
    fake_radii = knn_radii(fake_features, k, batch_size, device)
    counts, covered, recalled = _cross(real_features, fake_features, real_radii, fake_radii, batch_size, device)
    return ManifoldMetrics(float((counts > 0).double().mean()), float(recalled.double().mean()),
                           float(counts.sum()) / (k * len(counts)), float(covered.double().mean()),
                           k, len(real_radii), len(fake_radii))


def precision_recall(real_features, fake_features, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH,
                     device: str | torch.device = "cpu") -> ManifoldMetrics:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated vs real features
    (``.precision``, ``.recall``; density and coverage come from the same passes)."""
    return manifold_metrics(real_features, fake_features, k, batch_size, device)


def density_coverage(real_features, fake_features, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH,
                     device: str | torch.device = "cpu") -> ManifoldMetrics:
    """Density and coverage (Naeem et al. 2020) of generated vs real features (``.density``,
    ``.coverage``; precision and recall come from the same passes)."""
    return manifold_metrics(real_features, fake_features, k, batch_size, device)
