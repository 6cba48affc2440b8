import os

# Idle OpenMP threads sleep instead of spinning: on shared cores, spinning threads
# made 2-thread Inception and autoencoder runs 2-30x slower (see benchmarks/fid.py).
# Set before torch loads its OpenMP runtime, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Real LSUN bedroom photos for the tests that need them: any folder of LSUN bedroom JPEGs
# named by DCGAN_LSUN_SAMPLE, else the sample CI keeps beside its checkout. Without either
# those tests skip and say so; CI sets CI_REQUIRE_LSUN=1, which makes a missing sample fail.
LSUN_ENV = "DCGAN_LSUN_SAMPLE"
LSUN_SHARED = ROOT.parent / "shared" / "data" / "lsun-bedroom" / "images"
LSUN_MIN_PHOTOS = 1300  # tests/test_memorization.py uses the most

# Tests share 2 cores with Ray workers; keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def find_lsun_sample() -> tuple[Path | None, str]:
    """(folder of LSUN bedroom JPEGs or None, why none was found)."""
    wanted = f"a folder of at least {LSUN_MIN_PHOTOS} LSUN bedroom JPEGs"
    if os.environ.get(LSUN_ENV):
        folder = Path(os.environ[LSUN_ENV]).expanduser()
        if not folder.is_dir():
            return None, f"{LSUN_ENV}={folder} is not a folder; it must name {wanted}"
        found = len(list(folder.glob("*.jpg")))
        if found < LSUN_MIN_PHOTOS:
            return None, f"{LSUN_ENV}={folder} holds {found} .jpg files; it must name {wanted}"
        return folder, ""
    if LSUN_SHARED.is_dir() and len(list(LSUN_SHARED.glob("*.jpg"))) >= LSUN_MIN_PHOTOS:
        return LSUN_SHARED, ""
    return None, f"needs real LSUN bedroom photos: set {LSUN_ENV} to {wanted}, or put them in {LSUN_SHARED}"


@pytest.fixture(scope="session")
def lsun_dir() -> Path:
    folder, why = find_lsun_sample()
    if folder is None:
        if os.environ.get("CI_REQUIRE_LSUN") == "1":
            pytest.fail(f"CI_REQUIRE_LSUN=1 and the LSUN sample is missing: {why}")
        pytest.skip(why)
    return folder


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

    from pipelines.records.tracking import temporary_environ as environ

    with environ(s3_server.env()):
        if not ray.is_initialized():
            os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
            from pipelines.cluster.connect import start_local_ray

            start_local_ray(num_cpus=4, log_to_driver=True)
        yield ray
        ray.shutdown()
