"""The sweep's Tune plumbing with stand-in trial functions, in a real local Ray: a sweep
whose every trial failed ends with one line saying why."""

import pytest
import ray.tune

from pipelines.entrypoint import run_command
from pipelines.storage import StorageError
from tune.sweep import check_trials, error_line

MISSING = "no dataset at /somewhere/runs/datasets/synthetic-512-s0-32px: manifest.json is missing"


def failing_trial(config):
    raise StorageError(MISSING)


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
