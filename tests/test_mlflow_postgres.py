"""The team tracking server as deployed: `mlflow server --app-name basic-auth` on PostgreSQL.

A real PostgreSQL and a real MLflow server on 127.0.0.1 (tests/pgserver.py). Requests
without credentials are refused; four Ray Tune trials running at once log a few thousand
metric points through the project's tracking code (pipelines/records/tracking.py: a nested run
each, MetricBuffer batches as at checkpoints, single points as the sweep logs them), and
every point arrives exactly once, in PostgreSQL, with no "database is locked" (SQLite's
failure under concurrent writers) and no secret in the server's logs or the runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.pgserver import postgres_and_mlflow

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TRIALS, STEPS, FLUSH_EVERY = 4, 150, 10
BATCH_METRICS = ("loss_d", "loss_g", "d_real")  # MetricBuffer, flushed every FLUSH_EVERY steps
SINGLE_METRIC = "images_per_second"  # one request per step, as MlflowClient.log_metric sends it
EXPERIMENT = "concurrent-trials"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with postgres_and_mlflow(tmp_path_factory.mktemp("mlflow")) as both:
        yield both


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_requests_without_credentials_are_refused(server):
    _, mlflow_server = server
    api = f"{mlflow_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(f"{mlflow_server.uri}/health") == 200, "the health probe stays open for load balancers"
    assert _get(api) == 401
    assert _get(api, (mlflow_server.username, "wrong-" + mlflow_server.password)) == 401
    assert _get(f"{mlflow_server.uri}/", None) == 401, "the UI is closed too"
    assert _get(api, (mlflow_server.username, mlflow_server.password)) == 200


# Runs as a separate driver process with the client's credentials in its environment (so
# its local Ray cluster's workers inherit them, as a cluster's pods get them from a Secret).
DRIVER = textwrap.dedent(f"""
    import os, sys, time
    import ray
    from ray import tune

    TRIALS, STEPS, FLUSH_EVERY = {TRIALS}, {STEPS}, {FLUSH_EVERY}

    def trial(config):
        import mlflow
        from mlflow.tracking import MlflowClient
        from pipelines.records import tracking

        uri = os.environ["MLFLOW_TRACKING_URI"]
        with tracking.run(uri, "{EXPERIMENT}", run_name=f"trial-{{config['trial']}}",
                          parent_run_id=config["parent"], tags={{"trial": str(config["trial"])}}) as active:
            run_id = active.info.run_id
            mlflow.log_params({{"trial": config["trial"], "lr_g": 2e-4 * (1 + config["trial"])}})
            buffer = tracking.MetricBuffer(uri, run_id)
            client = MlflowClient(uri)
            for step in range(1, STEPS + 1):
                buffer.add(step, {{"loss_d": 1.0 / step, "loss_g": float(config["trial"]), "d_real": step / STEPS}})
                client.log_metric(run_id, "{SINGLE_METRIC}", 100.0 + step, step=step)
                if step % FLUSH_EVERY == 0:
                    buffer.flush()
                    tune.report({{"step": step}})
            buffer.flush()

    if __name__ == "__main__":
        from pipelines.records import tracking
        uri = os.environ["MLFLOW_TRACKING_URI"]
        with tracking.run(uri, "{EXPERIMENT}", run_name="sweep") as parent:
            parent_id = parent.info.run_id
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = time.monotonic()
        tuner = tune.Tuner(
            tune.with_resources(trial, {{"CPU": 0.25}}),
            param_space={{"trial": tune.grid_search(list(range(TRIALS))), "parent": parent_id}},
            tune_config=tune.TuneConfig(max_concurrent_trials=TRIALS),
            run_config=tune.RunConfig(name="concurrent", storage_path=sys.argv[1], verbose=0),
        )
        results = tuner.fit()
        errors = [str(r.error) for r in results if r.error]
        print("RESULT", parent_id, len(results), len(errors), round(time.monotonic() - started, 1))
        for e in errors:
            print("TRIAL ERROR", e[-2000:])
        ray.shutdown()
""")


def test_four_concurrent_trials_lose_no_metric(server, tmp_path):
    from mlflow.tracking import MlflowClient

    pg, mlflow_server = server
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "AWS_"))}
    env |= mlflow_server.env | {"PYTHONPATH": str(ROOT)}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "tune")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    result = next(line.split() for line in done.stdout.splitlines() if line.startswith("RESULT"))
    parent_id, n_trials, n_errors = result[1], int(result[2]), int(result[3])
    assert (n_trials, n_errors) == (TRIALS, 0), output[-6000:]
    print("tune seconds", result[4])

    # Every trial ran at the same time as the others (the point of the test): their MLflow
    # runs overlap in time.
    os.environ.update(mlflow_server.env)  # this process reads back with the same credentials
    try:
        client = MlflowClient(mlflow_server.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        assert len(runs) == TRIALS and {r.info.status for r in runs} == {"FINISHED"}
        assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs), "the trials did not overlap"
        for run in runs:
            for name in (*BATCH_METRICS, SINGLE_METRIC):
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
                assert steps == list(range(1, STEPS + 1)), f"{run.data.tags['trial']}/{name}: lost or doubled steps"
            assert run.data.params["trial"] == run.data.tags["trial"]
            secrets_here = json.dumps([run.data.params, run.data.tags])
            assert mlflow_server.password not in secrets_here and pg.password not in secrets_here
    finally:
        for key in mlflow_server.env:
            os.environ.pop(key, None)

    # The points are in PostgreSQL, once each.
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (run_uuid, key, step)) FROM metrics WHERE run_uuid = ANY(%s)",
                    ([r.info.run_id for r in runs],))
        total, distinct = cur.fetchone()
    assert total == distinct == TRIALS * STEPS * (len(BATCH_METRICS) + 1)

    logs = mlflow_server.log() + pg.log() + output
    assert "database is locked" not in logs
    assert "deadlock detected" not in logs and "Traceback" not in mlflow_server.log()
    for secret in (mlflow_server.password, pg.password):
        assert secret not in logs, "a secret reached a log"
