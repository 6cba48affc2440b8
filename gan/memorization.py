"""The DCGAN paper's memorization audit (Radford et al. 2015, section 4.1.1).

"We fit a 3072-128-3072 de-noising dropout regularized RELU autoencoder on
32x32 downsampled center-crops of training examples. The resulting code layer
activations are then binarized via thresholding the ReLU activation [...] and
provides a convenient form of semantic-hashing, allowing for linear time
de-duplication."

Here: every image (training or generated) becomes a 32x32 view (square centre
crop, area-downsampled); the autoencoder is trained on the training views with
input corruption (dropout masking plus Gaussian noise) and dropout on the code;
a view's hash is which of the 128 code units are active (ReLU > 0). A generated
sample whose hash lies within ``radius`` bits of a training image's hash is
flagged as a likely copy; radius 0 is the paper's exact hash collision. With the
default radius (8 of 128 bits) lightly jittered copies (1-pixel shift, noise,
JPEG re-encode) are caught while distinct photos stay further apart (measured on
LSUN bedrooms in tests/test_memorization.py).

The same hashes group near-duplicates inside the training data
(:func:`near_duplicate_clusters`), which ingest can drop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan.hamming import near_duplicate_labels
from gan.images import to_pixel_scale

VIEW_SIZE = 32
VIEW_DIM = VIEW_SIZE * VIEW_SIZE * 3  # 3072
CODE_BITS = 128
DEFAULT_RADIUS = 8


# --------------------------------------------------------------------------- views


def audit_views(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images -> uint8 (N, 32, 32, 3) centre-crop views.

    Accepts uint8 NHWC (any one size) or float NCHW in [-1, 1] (generator output).
    """
    x = torch.as_tensor(images)
    if x.is_floating_point():
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
        x = to_pixel_scale(x).cpu()
    else:
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, :, top:top + side, left:left + side]
    if side % VIEW_SIZE == 0:
        x = F.avg_pool2d(x, side // VIEW_SIZE) if side > VIEW_SIZE else x
    else:
        x = F.interpolate(x, size=(VIEW_SIZE, VIEW_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _flat(views: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(views)).reshape(len(views), VIEW_DIM).float().div_(255)


# --------------------------------------------------------------------------- autoencoder


class DenoisingAutoencoder(nn.Module):
    """3072-128-3072 ReLU autoencoder; denoising (corrupted input, clean target), dropout on the code."""

    def __init__(self, input_dropout: float = 0.2, input_noise: float = 0.02, code_dropout: float = 0.1):
        super().__init__()
        self.encoder = nn.Linear(VIEW_DIM, CODE_BITS)
        self.decoder = nn.Linear(CODE_BITS, VIEW_DIM)
        self.input_dropout = nn.Dropout(input_dropout)
        self.code_dropout = nn.Dropout(code_dropout)
        self.input_noise = input_noise
        # Centring on the training mean lets the 128 units spend themselves on what varies.
        self.register_buffer("mean", torch.zeros(VIEW_DIM))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x - self.mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.input_dropout(x + self.input_noise * torch.randn_like(x))
        code = self.code_dropout(torch.relu(self.pre_activation(x)))
        return self.decoder(code) + self.mean

    @torch.no_grad()
    def reconstruction_loss(self, views: np.ndarray, batch_size: int = 1024) -> float:
        """Mean squared error (pixels in [0, 1]) of clean views, without corruption."""
        was_training = self.training
        self.eval()
        total = 0.0
        for i in range(0, len(views), batch_size):
            x = _flat(views[i:i + batch_size])
            total += F.mse_loss(self(x), x, reduction="sum").item()
        self.train(was_training)
        return total / (len(views) * VIEW_DIM)

    @torch.no_grad()
    def hash_bits(self, views: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """The semantic hash: bool (N, 128), True where the ReLU code unit is active."""
        out = [self.pre_activation(_flat(views[i:i + batch_size])) > 0 for i in range(0, len(views), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, CODE_BITS), bool)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"state": self.state_dict(), "config": self.config()}, buf)
        return buf.getvalue()

    def config(self) -> dict:
        return {"input_dropout": self.input_dropout.p, "input_noise": self.input_noise, "code_dropout": self.code_dropout.p}

    @classmethod
    def from_bytes(cls, data: bytes) -> "DenoisingAutoencoder":
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = cls(**saved["config"])
        model.load_state_dict(saved["state"])
        return model.eval()


def train_autoencoder(views: np.ndarray, steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
                      seed: int = 0, log_every: int = 100,
                      progress: Callable[[int, float], None] | None = None) -> tuple[DenoisingAutoencoder, list[float]]:
    """Fit the autoencoder on uint8 (N, 32, 32, 3) training views.

    Returns the model (eval mode) and the mean training loss of every ``log_every``
    steps; ``progress(step, loss)`` is called at the same moments.
    """
    if len(views) < 2:
        raise ValueError(f"the autoencoder needs at least 2 training views, got {len(views)}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks and input noise
    model = DenoisingAutoencoder()
    model.mean.copy_(_flat(views[: min(len(views), 20000)]).mean(0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch_size = min(batch_size, len(views))
    losses, window = [], []
    order = torch.randperm(len(views), generator=gen)
    cursor = 0
    model.train()
    for step in range(1, steps + 1):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(views), generator=gen), 0
        x = _flat(views[order[cursor:cursor + batch_size].numpy()])
        cursor += batch_size
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            losses.append(float(np.mean(window)))
            window = []
            if progress:
                progress(step, losses[-1])
    return model.eval(), losses


# --------------------------------------------------------------------------- hashes


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool (N, 128) -> uint8 (N, 16), for storage and exact-collision lookups."""
    return np.packbits(np.asarray(bits, bool), axis=1)


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.asarray(packed, np.uint8), axis=1, count=CODE_BITS).astype(bool)


def _signs(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(bits, bool)).float().mul_(2).sub_(1)


def nearest_hashes(query: np.ndarray, reference: np.ndarray, k: int = 1, chunk: int = 4096,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The k reference hashes nearest (Hamming) to each query: (distances int (M, k), indices (M, k)).

    Hamming distance = (bits - <q, r>) / 2 on +-1 codes: a float matmul, exact for
    128 bits and fast on any device. Ties go to the lower reference index.
    """
    if len(reference) == 0:
        raise ValueError("no reference hashes to compare against")
    k = min(k, len(reference))
    nbits = query.shape[1]
    best_d = torch.full((len(query), 0), 0.0)
    best_i = torch.zeros((len(query), 0), dtype=torch.long)
    out_d, out_i = [], []
    for qs in range(0, len(query), chunk):
        q = _signs(query[qs:qs + chunk]).to(device)
        bd, bi = best_d[qs:qs + chunk], best_i[qs:qs + chunk]
        for rs in range(0, len(reference), chunk):
            r = _signs(reference[rs:rs + chunk]).to(device)
            d = ((nbits - q @ r.T) / 2).cpu()
            idx = torch.arange(rs, rs + len(r)).expand(len(q), -1)
            cand_d, cand_i = torch.cat([bd, d], 1), torch.cat([bi, idx], 1)
            # A fraction of the index below half a bit: among equal distances topk takes the lowest index.
            key = cand_d.double() + cand_i.double() / (2 * (len(reference) + 1))
            top = torch.topk(key, min(k, key.shape[1]), dim=1, largest=False).indices
            bd, bi = cand_d.gather(1, top), cand_i.gather(1, top)
        out_d.append(bd)
        out_i.append(bi)
    return torch.cat(out_d).round().to(torch.int64).numpy(), torch.cat(out_i).numpy()


# --------------------------------------------------------------------------- audit


@dataclass
class AuditResult:
    """``report`` is JSON-able; ``pairs`` are (sample index, [training indices]) for the grid, closest first."""

    report: dict
    pairs: list[tuple[int, list[int]]] = field(default_factory=list)


def audit(sample_views: np.ndarray, sample_bits: np.ndarray, training_bits: np.ndarray,
          training_images: Callable[[np.ndarray], np.ndarray], radius: int = DEFAULT_RADIUS,
          neighbours: int = 3, closest: int = 16, device: str | torch.device = "cpu") -> AuditResult:
    """Audit M generated samples against the training set's hashes.

    ``training_images(indices)`` returns training images (uint8 NHWC, any size) so
    the closest pairs' pixel-space distance can be measured without holding the
    training set in memory.
    """
    dist, idx = nearest_hashes(sample_bits, training_bits, k=neighbours, device=device)
    nearest = dist[:, 0]
    m = len(nearest)
    order = np.lexsort((np.arange(m), nearest))[: min(closest, m)]
    pair_views = audit_views(training_images(idx[order, 0])) if len(order) else np.zeros((0, VIEW_SIZE, VIEW_SIZE, 3), np.uint8)
    rmse = np.sqrt(((sample_views[order].astype(np.float64) - pair_views.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))
    flagged = np.flatnonzero(nearest <= radius)
    report = {
        "samples": int(m),
        "training_images": int(len(training_bits)),
        "code_bits": int(sample_bits.shape[1]),
        "hamming_radius": int(radius),
        "exact_collision_fraction": float(np.mean(nearest == 0)),
        "flagged_fraction": float(len(flagged) / m),
        "flagged_samples": flagged[:1000].tolist(),
        "hamming_to_nearest": {
            "histogram": np.bincount(nearest, minlength=sample_bits.shape[1] + 1).tolist(),
            "mean": float(nearest.mean()),
            "quantiles": {f"p{q}": float(np.percentile(nearest, q)) for q in (1, 5, 25, 50, 75, 95)},
        },
        "closest_pairs": [
            {"sample": int(s), "training_index": int(idx[s, 0]), "hamming": int(nearest[s]),
             "pixel_rmse": round(float(e), 3), "flagged": bool(nearest[s] <= radius)}
            for s, e in zip(order, rmse)
        ],
    }
    return AuditResult(report, [(int(s), idx[s].tolist()) for s in order])


def audit_grid_images(samples: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Rows of [sample, its nearest training images]: uint8 (rows * (1 + k), H, W, 3) for a grid.

    ``samples`` is (rows, H, W, 3); ``neighbours`` is (rows, k, H, W, 3), same size.
    """
    rows = [np.concatenate([s[None], nb]) for s, nb in zip(samples, neighbours)]
    return np.concatenate(rows) if rows else np.zeros((0,) + samples.shape[1:], np.uint8)


# --------------------------------------------------------------------------- de-duplication


def near_duplicate_clusters(bits: np.ndarray, radius: int = 0) -> list[list[int]]:
    """Groups (size >= 2) of training images whose hashes are within ``radius`` bits.

    Radius 0 (the paper's de-duplication) groups identical hashes by sorting, linear in N
    but for the sort. A radius above 0 links every pair within it (transitively: the
    connected components) found by multi-index hashing (:mod:`gan.hamming`), which
    compares only hashes that agree exactly on one of ``radius + 1`` blocks of bits; see
    there for the cost and its worst case (never more than every pair once).
    Clusters are sorted by their smallest index; members ascending.
    """
    labels = near_duplicate_labels(np.asarray(bits, bool), radius)
    order = np.lexsort((np.arange(len(labels)), labels))
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(order)]
    # only the groups of two or more become lists: no Python object per singleton image
    groups = [order[a:b].tolist() for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1])]
    return sorted(groups, key=lambda g: g[0])


def duplicates_to_drop(clusters: list[list[int]]) -> list[int]:
    """Every member of each cluster except its first (lowest index): what de-duplication removes."""
    return sorted(i for g in clusters for i in sorted(g)[1:])
