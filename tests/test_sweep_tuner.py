"""The sweep's Tune plumbing with stand-in trial functions, in a real local Ray and a real
S3 server (SeaweedFS on 127.0.0.1): ``--resume`` of a sweep kept in S3 restores its Tune
experiment, and a sweep whose every trial failed ends with one line saying why."""

import json
import uuid

import pytest
import ray.tune

from pipelines.cluster import storage
from pipelines.steps.entrypoint import run_command
from pipelines.cluster.storage import StorageError
from tune.sweep import STATE_FILE, check_trials, error_line, make_tuner, open_sweep
from tune.sweep_config import SweepConfig

MISSING = "no dataset at /somewhere/runs/datasets/synthetic-512-s0-32px: manifest.json is missing"


def run_trial(config):
    """Stands in for tune.trials.run_trial: Tune restores an experiment only with a trainable of the same name."""
    ray.tune.report({"iteration": 10, "fid_32": 123.0})


def failing_trial(config):
    raise StorageError(MISSING)


@pytest.fixture
def ray_with_s3(s3_env, ray_local):
    return s3_env


def test_resume_finds_and_restores_a_sweep_kept_in_s3(ray_with_s3, tmp_path):
    bucket = ray_with_s3.create_bucket("sweep-" + uuid.uuid4().hex[:8])
    directory = f"s3://{bucket}/sweeps/demo-1"
    config = SweepConfig(name="demo", preset="smoke", num_samples=1, search={"train.lr_g": {"choice": [1e-4]}},
                         pipeline={"storage": f"s3://{bucket}", "eval.fid_every": 10,
                                   "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"})
    storage.write_bytes(storage.join(directory, STATE_FILE), json.dumps(
        {"sweep": config.model_dump(), "sweep_run_name": "demo-1", "parent_run_id": None}).encode())
    fs, path = storage.filesystem(directory)
    first = ray.tune.Tuner(run_trial, run_config=ray.tune.RunConfig(
        name="tune", storage_path=path, storage_filesystem=fs, verbose=0)).fit()
    trial_id = first[0].metrics["trial_id"]

    sweep = open_sweep(None, resume=directory)  # what `dcgan sweep --resume s3://.../sweeps/demo-1` does
    assert sweep.resumed and sweep.directory == directory
    results = make_tuner(sweep).fit()
    # The finished trial, restored: not run again, and no new trial (which would run the
    # real trial function on a dataset that is not there, and fail).
    assert len(results) == 1 and not results.errors
    assert results[0].metrics["trial_id"] == trial_id and results[0].metrics["fid_32"] == 123.0


def test_a_sweep_whose_every_trial_failed_ends_with_one_line_naming_the_first_error(ray_local, tmp_path, capsys):
    results = ray.tune.Tuner(failing_trial, tune_config=ray.tune.TuneConfig(num_samples=2),
                             run_config=ray.tune.RunConfig(name="failing", storage_path=str(tmp_path), verbose=0)).fit()
    assert len(results.errors) == 2
    capsys.readouterr()
    status = run_command("dcgan sweep", lambda: check_trials(results, "fid_heldout_32"))
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"dcgan sweep: every trial failed (2 of 2); the first: StorageError: {MISSING}"]


def test_a_failed_training_reads_as_its_worker_error():
    from ray.train import ControllerError, WorkerGroupError

    worker_error = WorkerGroupError("rank 0 failed:\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                                    "ValueError: lr too big", {0: ValueError("lr too big")})
    assert error_line(worker_error) == "ValueError: lr too big"
    controller_error = ControllerError(StorageError("cannot write to s3://b/x"))
    assert error_line(controller_error) == "StorageError: cannot write to s3://b/x"
    assert error_line(RuntimeError("two\n   lines")) == "RuntimeError: two lines"
