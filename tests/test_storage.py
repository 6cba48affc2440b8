import uuid

import pytest

from pipelines.cluster import storage


def test_local_roundtrip_is_atomic_and_listable(tmp_path):
    uri = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert storage.exists(uri)
    assert storage.list_files(str(tmp_path)) == [uri]
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_s3_roundtrip_on_a_real_server(s3_env):
    bucket = s3_env.create_bucket("t-" + uuid.uuid4().hex[:8])
    uri = f"s3://{bucket}/x/y.bin"
    storage.check_writable(f"s3://{bucket}/x")
    storage.write_bytes(uri, b"abc")
    assert storage.read_bytes(uri) == b"abc"
    assert storage.list_files(f"s3://{bucket}/x") == [uri]
    storage.delete_dir(f"s3://{bucket}/x")
    assert not storage.exists(uri)


def test_unreachable_s3_names_the_endpoint_and_what_to_do(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(storage.StorageError, match=r"http://127.0.0.1:9.*infra/local/start.sh"):
        storage.check_writable("s3://nobucket/prefix")
