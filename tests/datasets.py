"""Small datasets in the canonical Parquet format (pipelines/dataset/format.py) for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gan.synthetic import synthetic_bedrooms
from pipelines.cluster import storage
from pipelines.dataset.format import FORMAT, IMAGE, KEY, MANIFEST, PIXEL_SHA256, content_hash, pixel_sha256


def write_dataset(out: Path | str, images: np.ndarray, keys: list[str] | None = None, shards: int = 2,
                  row_group_size: int | None = None) -> dict:
    """``images`` as a dataset at ``out`` (a local folder or s3://), with ingest's manifest fields."""
    keys = keys or [f"img-{i:06d}" for i in range(len(images))]
    hashes = [pixel_sha256(im) for im in images]
    fs, root = storage.filesystem(str(out))
    fs.create_dir(root, recursive=True)
    for s, idx in enumerate(np.array_split(np.arange(len(images)), shards)):
        table = pa.table({KEY: [keys[i] for i in idx], IMAGE: [images[i].tobytes() for i in idx],
                          PIXEL_SHA256: [hashes[i] for i in idx]})
        pq.write_table(table, f"{root}/part-{s:05d}.parquet", filesystem=fs, row_group_size=row_group_size)
    manifest = {"format": FORMAT, "resolution": int(images.shape[1]), "count": len(images),
                "content_hash": content_hash(hashes), "source": "tests", "skipped": [], "duplicates": 0}
    storage.write_bytes(storage.join(str(out), MANIFEST), json.dumps(manifest).encode())
    return manifest


def synthetic_dataset(out: Path, count: int = 128, resolution: int = 32, seed: int = 0) -> dict:
    return write_dataset(out, synthetic_bedrooms(count, resolution, seed))
