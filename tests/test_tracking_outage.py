"""MetricBuffer against a tracking server that does not answer (a closed port on 127.0.0.1):
training must not fail, nothing may be lost, and the outage clock must run."""

import socket
import time

from pipelines.cluster import storage
from pipelines.records import tracking


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_flush_to_an_unreachable_server_keeps_every_point_and_times_the_outage():
    uri = f"http://127.0.0.1:{_closed_port()}"
    buffer = tracking.MetricBuffer(uri, "0" * 32, outage_timeout_s=0.5)
    buffer.add(1, {"loss_d": 1.0, "loss_g": 2.0})
    buffer.add(2, {"loss_d": 0.5})
    started = time.monotonic()
    assert buffer.flush() == 0
    assert time.monotonic() - started < 30, "a flush to a dead server must not wait out MLflow's long retries"
    assert len(buffer.pending) == 3 and buffer.down_since is not None
    assert not buffer.outage_exceeded() or buffer.outage_seconds() > 0.5
    time.sleep(0.6)
    assert buffer.outage_exceeded()
    assert uri in buffer.outage_message()


def test_waiting_for_storage_gives_up_with_the_location_after_the_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    started = time.monotonic()
    try:
        storage.wait_writable("s3://nowhere/checkpoints", timeout_s=2, what="a test checkpoint")
    except storage.StorageError as e:
        message = str(e)
    else:
        raise AssertionError("an unreachable S3 endpoint was taken for writable")
    assert time.monotonic() - started < 30
    assert "s3://nowhere/checkpoints" in message and "a test checkpoint" in message and "attempts" in message
    storage.wait_writable(str(tmp_path / "local"), timeout_s=1)  # a writable location passes at once
