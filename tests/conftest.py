import os

# Idle OpenMP threads sleep instead of spinning: on shared cores, spinning threads
# made 2-thread Inception and autoencoder runs 2-30x slower (see benchmarks/fid.py).
# Set before torch loads its OpenMP runtime, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LSUN_DIR = ROOT.parent / "shared" / "data" / "lsun-bedroom" / "images"

# Tests share 2 cores with Ray workers; keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def lsun_dir() -> Path:
    if not LSUN_DIR.is_dir():
        pytest.fail(f"the shared LSUN sample is missing: expected {LSUN_DIR} (see ../shared/data/lsun-bedroom/NOTICE.md)")
    return LSUN_DIR


@pytest.fixture(scope="session")
def lsun_files(lsun_dir) -> list[Path]:
    return sorted(lsun_dir.glob("*.jpg"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session; see tests/s3server.py."""
    from tests.s3server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS variables pointed at the test S3 server (for this test only)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A real local Ray cluster for the session. 4 logical CPUs on 2 cores: two 1-CPU
    training workers plus Ray Data's read tasks must all be schedulable.

    Like a real deployment, the cluster's processes get the S3 endpoint and keys in
    their environment when they start (here: the session's SeaweedFS server)."""
    import ray

    saved = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())
    if not ray.is_initialized():
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
        from pipelines.cluster import start_local_ray

        start_local_ray(num_cpus=4, log_to_driver=True)
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
