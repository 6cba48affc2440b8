"""Ingest through a real S3-compatible server (SeaweedFS on 127.0.0.1): an S3 source,
an S3 output that training reads back, an ingested dataset and an LMDB export as
S3 sources, and the errors for an unreachable endpoint, a missing bucket and an
empty prefix."""

import io
import uuid

import lmdb
import numpy as np
import pytest
import ray
from PIL import Image

from pipelines.dataset.streaming import epoch_batches, train_dataset
from pipelines.dataset.format import read_manifest
from pipelines.dataset.format import IMAGE, KEY, decode_images, read_columns
from pipelines.dataset.decode import decode_square
from pipelines.dataset.ingestion import ingest
from pipelines.dataset.sources import SourceError, open_source

RES = 32


@pytest.fixture
def ray_with_s3(s3_env, ray_local):
    # ray_local starts Ray with the session's S3 server in its environment, so Ray's workers reach it.
    return s3_env


def _stored(uri: str) -> dict[str, np.ndarray]:
    table = read_columns(uri, [KEY, IMAGE])
    return dict(zip(table.column(KEY).to_pylist(), decode_images(table.column(IMAGE), table.num_rows and RES)))


@pytest.mark.slow
def test_s3_source_to_s3_dataset_that_training_reads(ray_with_s3, lsun_files, tmp_path, monkeypatch):
    server = ray_with_s3
    bucket = server.create_bucket("ingest-" + uuid.uuid4().hex[:8])
    client = server.client()
    photos = lsun_files[100:112]
    for p in photos:
        client.put_object(Bucket=bucket, Key=f"bedrooms/{p.name}", Body=p.read_bytes())
    client.put_object(Bucket=bucket, Key="bedrooms/broken.jpg", Body=photos[0].read_bytes()[:500])

    manifest = ingest(f"s3://{bucket}/bedrooms", f"s3://{bucket}/datasets/b32", RES, progress=False)
    assert manifest["count"] == len(photos) and [s["source"] for s in manifest["skipped"]] == ["broken.jpg"]
    assert read_manifest(f"s3://{bucket}/datasets/b32")["content_hash"] == manifest["content_hash"]
    stored = _stored(f"s3://{bucket}/datasets/b32")
    assert set(stored) == {p.name for p in photos}
    np.testing.assert_array_equal(stored[photos[3].name], decode_square(photos[3].read_bytes(), RES))

    # Training input straight from S3.
    batches = list(epoch_batches(train_dataset(f"s3://{bucket}/datasets/b32", read_manifest(f"s3://{bucket}/datasets/b32")).iterator(), 4, RES, epoch=0))
    assert len(batches) == 3 and all(b.shape == (4, 3, RES, RES) for b in batches)

    # An ingested dataset in S3 is itself a source: here, resized to 16 px.
    small = ingest(f"s3://{bucket}/datasets/b32", str(tmp_path / "b16"), 16, progress=False)
    assert small["count"] == len(photos) and small["source_kind"] == "dataset"

    # An LSUN LMDB export in S3 is downloaded once, then read like a local one.
    monkeypatch.setenv("DCGAN_CACHE", str(tmp_path / "cache"))
    env = lmdb.open(str(tmp_path / "lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for p in photos[:5]:
            buf = io.BytesIO()
            Image.open(p).save(buf, "WEBP", quality=90)
            txn.put(p.stem.encode(), buf.getvalue())
    env.close()
    client.upload_file(str(tmp_path / "lmdb" / "data.mdb"), bucket, "lsun/bedroom_train_lmdb/data.mdb")
    from_lmdb = ingest(f"s3://{bucket}/lsun/bedroom_train_lmdb", str(tmp_path / "from-lmdb"), RES, progress=False)
    assert from_lmdb["count"] == 5 and set(_stored(str(tmp_path / "from-lmdb"))) == {p.stem for p in photos[:5]}


def test_s3_sources_that_are_missing_or_unreachable_fail_at_once(s3_env, monkeypatch):
    bucket = s3_env.create_bucket("empty-" + uuid.uuid4().hex[:8])
    with pytest.raises(SourceError, match=f"s3://{bucket}/nothing-here not found through {s3_env.endpoint}"):
        open_source(f"s3://{bucket}/nothing-here")
    with pytest.raises(SourceError, match="no-such-bucket"):
        open_source("s3://no-such-bucket-3f9a/images")

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(SourceError, match=r"S3 endpoint http://127.0.0.1:9 did not answer.*AWS_ENDPOINT_URL"):
        open_source(f"s3://{bucket}/images")
