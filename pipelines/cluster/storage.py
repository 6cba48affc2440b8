"""Local folders and s3:// URIs behind one small API (pyarrow filesystems).

S3 settings come from the standard AWS environment and config, never from code:
credentials through the AWS default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
~/.aws, an instance role), the endpoint of an S3-compatible store through
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL, which MLflow
users already set), the region through AWS_REGION / AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from pipelines.errors import PipelineError


class StorageError(PipelineError):
    """A location that cannot be read or written; the message says what to do."""


S3_SCHEME = "s3://"


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def s3_endpoint() -> str | None:
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = s3_endpoint()
    kwargs = {"region": s3_region(), "connect_timeout": 5, "request_timeout": 60}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["allow_bucket_creation"] = True
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    # Keys present in this process's environment are bound to the filesystem object, so
    # Ray actors that receive it (checkpoint upload, Ray Data reads) use the same identity
    # even when their own environment lacks them; otherwise arrow uses the AWS SDK's
    # default chain on each node (~/.aws, an instance role). The object's repr shows no key.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def filesystem_path(uri: str) -> str:
    """The path inside its filesystem: ``s3://bucket/key`` -> ``bucket/key``; a local path as is."""
    return str(uri)[len(S3_SCHEME):] if is_s3(uri) else str(uri)


def as_uri(path: str, like: str) -> str:
    """A filesystem path back as a URI of the same kind as ``like`` (``bucket/key`` -> ``s3://bucket/key``)."""
    return S3_SCHEME + path if is_s3(like) and not is_s3(path) else path


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/key URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), filesystem_path(uri).rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    if "://" in str(uri):
        return "/".join([str(uri).rstrip("/"), *parts])
    return str(Path(uri, *parts))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as e:
        raise StorageError(f"cannot reach {uri}: {e}. " + _s3_hint() if is_s3(uri) else f"cannot read {uri}: {e}") from None


def _s3_hint() -> str:
    endpoint = s3_endpoint() or "AWS S3 (no AWS_ENDPOINT_URL set)"
    return (f"Check that the S3 service at {endpoint} answers (for the local mini cluster: infra/local/start.sh), "
            "that the bucket exists, and that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance role) "
            "grant access.")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise StorageError(f"{uri} does not exist") from e


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; locally via a temporary name and an atomic rename."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    else:  # an S3 PUT is atomic: readers see the old object or the new one
        with fs.open_output_stream(path) as f:
            f.write(data)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files below uri (recursively), as URIs of the same kind, sorted."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(as_uri(i.path, uri) for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def check_writable(uri: str) -> None:
    """Fail at once, with what to do, when uri cannot be written (before any expensive work)."""
    probe = join(uri, f".write-probe-{uuid.uuid4().hex}")
    try:
        fs, path = filesystem(probe)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(b"ok")
        fs.delete_file(path)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means "not usable", with the cause attached
        if is_s3(uri):
            raise StorageError(f"cannot write to {uri}: {e}. " + _s3_hint()) from None
        raise StorageError(f"cannot write to {uri}: {e}") from None


def wait_writable(uri: str, timeout_s: float, what: str = "a checkpoint") -> int:
    """Wait until uri can be written, retrying with exponential backoff (0.5 s doubling, at most
    10 s apart) for up to ``timeout_s``; returns how many attempts failed first. Past the
    deadline: a StorageError that names the location, how long it waited and what to check."""
    import time

    started, delay, failures = time.monotonic(), 0.5, 0
    while True:
        try:
            check_writable(uri)
            return failures
        except StorageError as e:
            failures += 1
            waited = time.monotonic() - started
            if waited + delay > timeout_s:
                raise StorageError(f"storage did not answer for {waited:.0f}s ({failures} attempts) while writing "
                                   f"{what}: {e}") from None
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
