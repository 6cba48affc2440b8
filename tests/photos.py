"""Real LSUN photos as the dataset stores them (centre square, antialiased resize), and
the light edits a copying generator might make, for the evaluation tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def load_squares(files: list[Path], resolution: int) -> np.ndarray:
    """JPEG files -> uint8 (N, resolution, resolution, 3), cropped and resized like ingest does."""
    out = np.empty((len(files), resolution, resolution, 3), np.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            out[i] = np.asarray(im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BILINEAR))
    return out


def shift_one_pixel(images: np.ndarray) -> np.ndarray:
    """Move every image one pixel right, repeating the left column."""
    out = np.empty_like(images)
    out[:, :, 1:] = images[:, :, :-1]
    out[:, :, 0] = images[:, :, 0]
    return out


def add_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def jpeg_reencode(images: np.ndarray, quality: int = 75) -> np.ndarray:
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out

