"""The canonical dataset every step after ingest reads: Parquet shards + manifest.json.

Columns (one row per image):
  key           string  the source's id (LSUN key, relative path, synthetic index)
  image         binary  raw RGB pixels, uint8, HWC, resolution x resolution x 3
  pixel_sha256  string  SHA-256 of ``image``: equal pixels, equal hash (exact duplicates)

Raw pixels rather than PNG: a 64x64 image is 12 KiB either way within a factor of
two, and raw bytes decode at memory speed, so the feed never waits on a codec.

manifest.json holds at least: format, resolution, count, content_hash (SHA-256 over
the sorted pixel hashes: the same images give the same hash whatever their order
or sharding), source, skipped ([{"source", "reason"}]), duplicates.
"""

from __future__ import annotations

import numpy as np
import torch

FORMAT = "dcgan-parquet-v1"
MANIFEST = "manifest.json"
KEY, IMAGE, PIXEL_SHA256 = "key", "image", "pixel_sha256"


def decode_images(column, resolution: int) -> np.ndarray:
    """An array/list of raw-pixel bytes -> uint8 (N, R, R, 3)."""
    buf = b"".join(bytes(x) for x in column)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(column), resolution, resolution, 3)


def to_model_input(images_uint8_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1] (the generator's tanh range)."""
    x = torch.as_tensor(images_uint8_nhwc)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
