"""Jobs log to the team tracking server as a user of their own, not as the admin.

A real PostgreSQL and a real ``mlflow server --app-name basic-auth`` on 127.0.0.1
(tests/pgserver.py). The job user is set up by the command infra/local/start.sh runs
(and the MLflow pod's postStart hook, infra/k8s/mlflow.yaml): ``python -m
pipelines.records.job_user``. Then, with only the job user's credentials, it cannot
create users, make itself admin, raise or hand out permissions (403 each), nor write to
an experiment it was not given; and a pipeline run still logs params, metrics,
artifacts and a logged generator and registers and promotes a model version, all
under that user. No password reaches the command's output, the server's log or the run.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
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
EXPERIMENT = "dcgan-job-user-test"
JOB_USER = "dcgan-job"
MODEL = "dcgan-job-user-model"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with postgres_and_mlflow(tmp_path_factory.mktemp("mlflow")) as both:
        yield both


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "AWS_"))}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def _set_up_job_user(mlflow_server, password: str, *extra: str) -> subprocess.CompletedProcess:
    """What infra/local/start.sh runs: admin and job user from the environment."""
    env = _env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_AUTH_ADMIN_USERNAME=mlflow_server.username,
               MLFLOW_AUTH_ADMIN_PASSWORD=mlflow_server.password, MLFLOW_TRACKING_USERNAME=JOB_USER,
               MLFLOW_TRACKING_PASSWORD=password)
    done = subprocess.run([sys.executable, "-m", "pipelines.records.job_user", "--experiment", EXPERIMENT, "--wait", "30", *extra],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for secret in (password, mlflow_server.password):
        assert secret not in done.stdout + done.stderr
    return done


def _request(uri: str, path: str, method: str, auth: tuple[str, str], body: dict | None = None,
             query: str = "") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{uri}{path}{query}", data=data, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


@pytest.fixture(scope="module")
def job_user(server):
    _, mlflow_server = server
    password = secrets.token_hex(16)
    done = _set_up_job_user(mlflow_server, password)
    assert f"user {JOB_USER}: created" in done.stderr and f"experiment {EXPERIMENT}" in done.stderr
    return JOB_USER, password


def test_the_job_user_is_no_admin_and_cannot_change_who_may_do_what(server, job_user):
    from mlflow.server.auth import routes

    _, mlflow_server = server
    uri, admin = mlflow_server.uri, (mlflow_server.username, mlflow_server.password)
    status, me = _request(uri, routes.GET_CURRENT_USER, "GET", job_user)
    assert status == 200 and me["user"]["username"] == JOB_USER and me["user"]["is_admin"] is False
    status, found = _request(uri, "/api/2.0/mlflow/experiments/get-by-name", "GET", admin,
                             query=f"?experiment_name={EXPERIMENT}")
    experiment_id = found["experiment"]["experiment_id"]
    status, perm = _request(uri, routes.GET_USER_PERMISSION, "GET", admin,
                            query=f"?username={JOB_USER}&resource_type=experiment&resource_id={experiment_id}")
    assert status == 200 and perm["permission"] == "EDIT"

    refused = {
        "create a user": (routes.CREATE_USER, "POST", {"username": "mallory", "password": secrets.token_hex(8)}),
        "make itself admin": (routes.UPDATE_USER_ADMIN, "PATCH", {"username": JOB_USER, "is_admin": True}),
        "raise its own permission on the experiment": (routes.GRANT_USER_PERMISSION, "POST", {
            "username": JOB_USER, "resource_type": "experiment", "resource_id": experiment_id, "permission": "MANAGE"}),
        "give another user a permission on the experiment": (routes.GRANT_USER_PERMISSION, "POST", {
            "username": mlflow_server.username, "resource_type": "experiment", "resource_id": experiment_id,
            "permission": "READ"}),
        "take the admin's permission away": (routes.REVOKE_USER_PERMISSION, "POST", {
            "username": mlflow_server.username, "resource_type": "experiment", "resource_id": experiment_id}),
        "grant itself every experiment": (routes.GRANT_USER_PERMISSION, "POST", {
            "username": JOB_USER, "resource_type": "experiment", "resource_id": "*", "permission": "EDIT"}),
        "create a role": (routes.CREATE_ROLE, "POST", {"workspace": "default", "name": "job-admins"}),
        "change the admin's password": (routes.UPDATE_USER_PASSWORD, "PATCH", {
            "username": mlflow_server.username, "password": secrets.token_hex(8)}),
        "delete the admin": (routes.DELETE_USER, "DELETE", {"username": mlflow_server.username}),
    }
    answers = {what: _request(uri, path, method, job_user, body)[0] for what, (path, method, body) in refused.items()}
    assert answers == {what: 403 for what in refused}, answers
    # Nothing changed: no new user, the job user still EDIT and no admin, the admin still in.
    assert _request(uri, routes.GET_USER, "GET", admin, query="?username=mallory")[0] == 404
    assert _request(uri, routes.GET_CURRENT_USER, "GET", job_user)[1]["user"]["is_admin"] is False
    assert _request(uri, routes.GET_USER_PERMISSION, "GET", admin, query=(
        f"?username={JOB_USER}&resource_type=experiment&resource_id={experiment_id}"))[1]["permission"] == "EDIT"
    assert _request(uri, routes.GET_CURRENT_USER, "GET", admin)[0] == 200

    # The admin's own experiment (no grant): the job user reads (default_permission) and cannot write.
    status, created = _request(uri, "/api/2.0/mlflow/experiments/create", "POST", admin, {"name": "admins-only"})
    assert status == 200
    status, _ = _request(uri, "/api/2.0/mlflow/runs/create", "POST", job_user,
                         {"experiment_id": created["experiment_id"]})
    assert status == 403


# A pipeline run's MLflow calls, through the project's own code, as the job user.
JOB = textwrap.dedent(f"""
    import mlflow, sys
    from pathlib import Path
    from gan.models import Generator
    from pipelines.records import registry, tracking

    uri = sys.argv[1]
    with tracking.run(uri, "{EXPERIMENT}", run_name="as-job-user") as active:
        mlflow.log_params({{"train.lr_g": 2e-4, "train.discriminator_steps": 1}})
        buffer = tracking.MetricBuffer(uri, active.info.run_id)
        for step in range(1, 6):
            buffer.add(step, {{"loss_d": 1.0 / step, "loss_g": 0.5 * step}})
        buffer.flush()
        report = Path(sys.argv[2]) / "audit.json"
        report.write_text('{{"copies": 0}}')
        mlflow.log_artifact(str(report), "audit")
        version, promoted, why = registry.register_and_promote(
            Generator(resolution=32, latent_dim=4, width=8), "{MODEL}", fid=123.0, fid_metric="fid_test",
            dataset_hash="abc", tags={{"run_by": "test"}})
        print("RESULT", active.info.run_id, version.version, promoted)
""")


def test_a_run_logs_and_registers_under_the_job_user(server, job_user, tmp_path):
    from mlflow.tracking import MlflowClient

    pg, mlflow_server = server
    env = _env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_TRACKING_USERNAME=job_user[0],
               MLFLOW_TRACKING_PASSWORD=job_user[1], DCGAN_GIT_COMMIT="0" * 40)
    script = tmp_path / "job.py"
    script.write_text(JOB)
    done = subprocess.run([sys.executable, str(script), mlflow_server.uri, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    _, run_id, version, promoted = next(ln.split() for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
    assert promoted == "True"

    # Read back as the admin: everything is there, and made by the job user.
    os.environ.update(MLFLOW_TRACKING_USERNAME=mlflow_server.username, MLFLOW_TRACKING_PASSWORD=mlflow_server.password)
    try:
        client = MlflowClient(mlflow_server.uri)
        run = client.get_run(run_id)
        assert run.info.user_id == JOB_USER and run.info.status == "FINISHED"
        assert run.data.params["train.lr_g"] == "0.0002"
        assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == [1, 2, 3, 4, 5]
        artifacts = {a.path for a in client.list_artifacts(run_id, "audit")}
        assert artifacts == {"audit/audit.json"}
        registered = client.get_model_version(MODEL, version)
        assert registered.run_id == run_id
        assert client.get_model_version_by_alias(MODEL, "champion").version == version
        logged = client.get_logged_model(registered.model_id or registered.source.removeprefix("models:/"))
        assert {m.key for m in logged.metrics} == {"fid_test"}
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    # The job user created the registered model, so MLflow made it the model's MANAGE holder.
    from mlflow.server.auth import routes

    status, perm = _request(mlflow_server.uri, routes.GET_USER_PERMISSION, "GET",
                            (mlflow_server.username, mlflow_server.password),
                            query=f"?username={JOB_USER}&resource_type=registered_model&resource_id={MODEL}")
    assert status == 200 and perm["permission"] == "MANAGE"
    secrets_here = json.dumps([run.data.params, run.data.tags, registered.tags])
    logs = mlflow_server.log() + pg.log() + done.stdout + done.stderr
    for secret in (job_user[1], mlflow_server.password, pg.password):
        assert secret not in secrets_here and secret not in logs


def test_running_the_setup_again_rotates_the_password_and_takes_back_manage(server, job_user):
    from mlflow.server.auth import routes

    _, mlflow_server = server
    admin = (mlflow_server.username, mlflow_server.password)
    new_password = secrets.token_hex(16)
    done = _set_up_job_user(mlflow_server, new_password, "--registered-model", MODEL)
    assert f"user {JOB_USER}: password set" in done.stderr and f"registered model {MODEL}: EDIT" in done.stderr
    # The model the job user registered (MANAGE, as its creator) is now EDIT: it can add
    # versions and move aliases, and no longer share the model with anyone.
    query = f"?username={JOB_USER}&resource_type=registered_model&resource_id={MODEL}"
    assert _request(mlflow_server.uri, routes.GET_USER_PERMISSION, "GET", admin, query=query)[1]["permission"] == "EDIT"
    share = {"username": mlflow_server.username, "resource_type": "registered_model", "resource_id": MODEL,
             "permission": "READ"}
    assert _request(mlflow_server.uri, routes.GRANT_USER_PERMISSION, "POST", (JOB_USER, new_password), share)[0] == 403
    # auth_cache_ttl_seconds caches a good password per worker; a wrong one is never cached.
    assert _request(mlflow_server.uri, routes.GET_CURRENT_USER, "GET", (JOB_USER, new_password))[0] == 200
    refused = _request(mlflow_server.uri, routes.GET_CURRENT_USER, "GET", (JOB_USER, "wrong-" + new_password))[0]
    assert refused == 401
    # Setting up the admin as the job user is refused before anything is sent.
    env = _env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_AUTH_ADMIN_USERNAME=mlflow_server.username,
               MLFLOW_AUTH_ADMIN_PASSWORD=mlflow_server.password, MLFLOW_TRACKING_USERNAME=mlflow_server.username,
               MLFLOW_TRACKING_PASSWORD=mlflow_server.password)
    same = subprocess.run([sys.executable, "-m", "pipelines.records.job_user"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert same.returncode == 1 and "must not be the admin" in same.stderr
    assert mlflow_server.password not in same.stderr
