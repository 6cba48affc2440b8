"""Image helpers shared by training, evaluation and the latent-space tools."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


def to_pixel_scale(images: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] (the generator's tanh range) -> float NCHW in [0, 255], unrounded."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC on the same device, rounded to nearest (as the
    reference FID code quantises generated images)."""
    return to_pixel_scale(images).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_model_input(images_uint8_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (array or tensor) -> float32 NCHW in [-1, 1]: the inverse of :func:`to_uint8`."""
    return torch.as_tensor(images_uint8_nhwc).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """A grid of float NCHW images in [-1, 1] as one uint8 HWC array."""
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    g = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, normalize=True, value_range=(-1, 1))
    return g.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a PNG sample grid and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(images, nrow)).save(path)
    return path
