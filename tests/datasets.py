"""Small datasets in the canonical Parquet format (pipelines/dataset_format.py) for tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gan.synthetic import synthetic_bedrooms
from pipelines.dataset_format import FORMAT, IMAGE, KEY, MANIFEST, PIXEL_SHA256


def write_dataset(out: Path, images: np.ndarray, keys: list[str] | None = None, shards: int = 2) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    keys = keys or [f"img-{i:06d}" for i in range(len(images))]
    hashes = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
    for s, idx in enumerate(np.array_split(np.arange(len(images)), shards)):
        table = pa.table({KEY: [keys[i] for i in idx], IMAGE: [images[i].tobytes() for i in idx],
                          PIXEL_SHA256: [hashes[i] for i in idx]})
        pq.write_table(table, out / f"part-{s:05d}.parquet")
    manifest = {"format": FORMAT, "resolution": int(images.shape[1]), "count": len(images),
                "content_hash": hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest(),
                "source": "tests", "skipped": [], "duplicates": 0}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def synthetic_dataset(out: Path, count: int = 128, resolution: int = 32, seed: int = 0) -> dict:
    return write_dataset(out, synthetic_bedrooms(count, resolution, seed))
