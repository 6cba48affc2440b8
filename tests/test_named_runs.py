"""A named run (train.run_name) launched again continues: the driver and its in-process Ray
head are lost mid-run (SIGKILL to the command's whole process group), the same command is
run again, and the run ends at its last iteration with every metric step once in one
MLflow run, the dataset checked and Ray started once by the relaunch. A config that would
train something else is refused. (That a resumed named run ends with the weights of an
uninterrupted one is shown on the multi-node cluster, tests/test_multinode.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS, EVERY = 60, 10
COMMON = ["--config", "smoke", f"train.iterations={ITERATIONS}", f"train.checkpoint_every={EVERY}", "train.log_every=5",
          "train.deterministic=true", "train.sample_every=100000", "eval.final_fid=false",
          "tracking.register_model=false"]


def _launch(module: str, cwd: Path, *args: str, log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
    return subprocess.Popen([sys.executable, "-m", module, *COMMON, *args], cwd=cwd, env=env,
                            stdout=open(cwd / log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return log.read_text(errors="replace")


def _train_run(workdir: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("dcgan-lsun-bedroom")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.ray_run_name = '{name}' and "
                                                            "tags.pipeline_step = 'train'")
    return client, run


def _weights(workdir: Path, name: str) -> dict:
    from pipelines.training.checkpoints import load_state

    _, run = _train_run(workdir, name)
    return load_state(run.data.tags["checkpoint"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("named")


@pytest.fixture(scope="module")
def relaunched(workdir):
    """A named `dcgan run` killed after its second checkpoint, then run again: (name, log)."""
    name = "lost"
    proc = _launch("pipelines.steps.run", workdir, f"train.run_name={name}", log="lost-1.log")
    deadline = time.time() + 400
    while f"iter {2 * EVERY}/" not in (workdir / "lost-1.log").read_text(errors="replace"):
        assert proc.poll() is None, (workdir / "lost-1.log").read_text(errors="replace")[-4000:]
        assert time.time() < deadline, "no second checkpoint in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started in-process: the head node
    proc.wait()
    assert "[train] iter 60/" not in (workdir / "lost-1.log").read_text(errors="replace"), "killed too late"

    again = _launch("pipelines.steps.run", workdir, f"train.run_name={name}", log="lost-2.log")
    log = _finish(again, workdir / "lost-2.log")
    assert again.returncode == 0, log[-4000:]
    return name, log


def test_a_named_run_whose_driver_and_head_were_killed_continues_when_launched_again(workdir, relaunched):
    name, log = relaunched
    assert f"continuing run '{name}'" in log and "resumed at iteration" in log, log[-4000:]
    # Counted once: the dataset checked once, Ray started once, in this whole `dcgan run`.
    assert log.count("[dataset] ") == 1 and log.count("[ray] ") == 1, log[-4000:]

    client, run = _train_run(workdir, name)
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, ITERATIONS + 1)), f"{key}: a gap or a repeat"
    pipelines = client.search_runs([run.info.experiment_id], "tags.pipeline_step = 'pipeline'")
    assert len(pipelines) == 1 and run.data.tags["mlflow.parentRunId"] == pipelines[0].info.run_id

    assert _weights(workdir, name)["iteration"] == ITERATIONS


def test_a_named_run_launched_with_another_model_is_refused_and_left_untouched(workdir, relaunched):
    name, _ = relaunched
    record = workdir / "runs" / "checkpoints" / f"{name}.json"
    before = record.read_bytes()
    checkpoints = sorted(p.name for p in (workdir / "runs" / "checkpoints" / name).iterdir())
    done = subprocess.run([sys.executable, "-m", "pipelines.steps.train", *COMMON, f"train.run_name={name}",
                           "model.g_width=24", "train.iterations=80"], cwd=workdir, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.g_width" in lines[0] and "train.iterations" not in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert record.read_bytes() == before
    assert sorted(p.name for p in (workdir / "runs" / "checkpoints" / name).iterdir()) == checkpoints


def test_a_named_run_restores_the_newest_whole_checkpoint_when_rays_record_is_older(tmp_path):
    """The driver lost between a checkpoint's upload and Ray registering it: Ray's record
    names an older checkpoint (or none); the named run's folder has the newer one."""
    from pipelines.config import load_config
    from pipelines.training.loop import _newer, newest_of_named_run

    cfg = load_config("smoke", [f"storage={tmp_path}", "train.run_name=raced"])
    assert newest_of_named_run(cfg) is None  # nothing yet: a first launch
    folder = tmp_path / "checkpoints" / "raced"
    for stamp in ("2026-12-07_20-40-25.893363", "2026-12-07_20-41-10.364163"):
        (folder / f"checkpoint_{stamp}").mkdir(parents=True)
        (folder / f"checkpoint_{stamp}" / "checkpoint.pt").write_bytes(b"whole")
    (folder / "checkpoint_2026-12-07_20-42-00.000000").mkdir()  # an upload that never finished
    newest = newest_of_named_run(cfg)
    assert newest == str(folder / "checkpoint_2026-12-07_20-41-10.364163" / "checkpoint.pt")
    assert _newer(newest, str(folder / "checkpoint_2026-12-07_20-40-25.893363"))  # Ray's record is behind
    assert not _newer(newest, str(folder / "checkpoint_2026-12-07_20-41-10.364163"))  # Ray's is the newest
    assert newest_of_named_run(load_config("smoke", [f"storage={tmp_path}"])) is None  # unnamed: Ray's alone
