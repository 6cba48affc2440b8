"""The MLflow user that jobs and sweeps log as: not the admin, EDIT on the project's experiment.

MLflow's basic-auth app (``mlflow server --app-name basic-auth``) checks every request
against per-resource permissions (READ < USE < EDIT < MANAGE) and falls back to
``default_permission`` (READ here) where a user has no grant. What a pipeline run does
needs EDIT on its experiment: create runs, log params, metrics, artifacts (proxied) and
logged models. Registration needs no grant given in advance: with workspaces off, any
user may create a registered model, and MLflow makes its creator MANAGE of that model
(so it can add versions and move aliases); ``--registered-model`` hands an existing
model (one an admin registered before) to the job user with EDIT, taking back MANAGE
where it had it. EDIT cannot change permissions, and a non-admin cannot create users,
roles, or make anyone admin.

Run as the admin, with both users' credentials in the environment (never on a command
line; nothing secret is printed)::

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \\
    MLFLOW_AUTH_ADMIN_USERNAME=... MLFLOW_AUTH_ADMIN_PASSWORD=... \\
    MLFLOW_TRACKING_USERNAME=<job user> MLFLOW_TRACKING_PASSWORD=<its password> \\
    python -m pipelines.records.job_user [--experiment NAME ...] [--registered-model NAME ...] [--wait S]

``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` are the names a job's MLflow client reads, so the
user set up is the one a job with the same environment logs as. Run again with a new
``MLFLOW_TRACKING_PASSWORD`` to rotate it: an existing user gets the new password (the
server's ``auth_cache_ttl_seconds`` may accept the old one for that long on other workers).
infra/local/start.sh runs it at every start; on Kubernetes the MLflow pod runs it after
its server starts (infra/k8s/mlflow.yaml).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from typing import NamedTuple

EDIT = "EDIT"
EXIT_FAILED = 1


class Credentials(NamedTuple):
    username: str
    password: str

    def __repr__(self) -> str:  # never the password, in a traceback or a log
        return f"Credentials(username={self.username!r}, password=***)"


class JobUserError(RuntimeError):
    """The job user could not be set up; the message names the step and what MLflow answered."""


def _call(uri: str, who: Credentials, endpoint: str, method: str, *, missing_ok: bool = False, **kwargs) -> dict | None:
    """One REST call as ``who``; None for 404 when ``missing_ok``. Errors name the call and the
    status, never the credentials."""
    from mlflow.environment_variables import MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    creds = MlflowHostCreds(uri, username=who.username, password=who.password,
                            ignore_tls_verification=MLFLOW_TRACKING_INSECURE_TLS.get(),
                            server_cert_path=MLFLOW_TRACKING_SERVER_CERT_PATH.get())
    resp = http_request(creds, endpoint, method, max_retries=3, timeout=30, **kwargs)
    if resp.status_code == 404 and missing_ok:
        return None
    if resp.status_code != 200:
        raise JobUserError(f"{method} {endpoint} as {who.username!r}: MLflow answered {resp.status_code}: "
                           f"{resp.text[:300]}")
    return resp.json() if resp.content else {}


def _ensure_user(uri: str, admin: Credentials, job: Credentials) -> str:
    """Create the job user, or give the existing one ``job.password``; never an admin. Returns what was done."""
    from mlflow.server.auth import routes

    existing = _call(uri, admin, routes.GET_USER, "GET", missing_ok=True, params={"username": job.username})
    if existing is None:
        _call(uri, admin, routes.CREATE_USER, "POST", json={"username": job.username, "password": job.password})
        done = "created"
    else:
        _call(uri, admin, routes.UPDATE_USER_PASSWORD, "PATCH", json={"username": job.username, "password": job.password})
        done = "password set"
    if existing is None or existing["user"].get("is_admin"):
        _call(uri, admin, routes.UPDATE_USER_ADMIN, "PATCH", json={"username": job.username, "is_admin": False})
    return done


def _ensure_experiment(uri: str, admin: Credentials, name: str) -> str:
    """The experiment's id; created by the admin if missing (so the job user does not own it)."""
    found = _call(uri, admin, "/api/2.0/mlflow/experiments/get-by-name", "GET", missing_ok=True,
                  params={"experiment_name": name})
    if found is not None:
        return found["experiment"]["experiment_id"]
    return _call(uri, admin, "/api/2.0/mlflow/experiments/create", "POST", json={"name": name})["experiment_id"]


def _ensure_registered_model(uri: str, admin: Credentials, name: str) -> None:
    found = _call(uri, admin, "/api/2.0/mlflow/registered-models/get", "GET", missing_ok=True, params={"name": name})
    if found is None:
        _call(uri, admin, "/api/2.0/mlflow/registered-models/create", "POST", json={"name": name})


def _grant(uri: str, admin: Credentials, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Give ``username`` exactly ``permission`` on the resource, replacing a grant it had (e.g. the
    MANAGE MLflow gives the creator of a resource): the grant API refuses to overwrite one."""
    from mlflow.server.auth import routes

    grant = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    try:
        _call(uri, admin, routes.GRANT_USER_PERMISSION, "POST", json=grant | {"permission": permission})
    except JobUserError as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
        _call(uri, admin, routes.REVOKE_USER_PERMISSION, "POST", json=grant)
        _call(uri, admin, routes.GRANT_USER_PERMISSION, "POST", json=grant | {"permission": permission})


def ensure_job_user(uri: str, admin: Credentials, job: Credentials, experiments: list[str],
                    registered_models: list[str] = ()) -> list[str]:
    """Set up ``job`` on the server at ``uri`` as ``admin``: a non-admin user with EDIT on each
    experiment (created if missing) and on each named registered model (created if missing).
    Returns one line per thing done, with no secret in it."""
    if job.username == admin.username:
        raise JobUserError(f"the job user must not be the admin ({admin.username!r}): give jobs a user of their own")
    if not job.password:
        raise JobUserError(f"no password for the job user {job.username!r}")
    report = [f"user {job.username}: {_ensure_user(uri, admin, job)}"]
    for name in experiments:
        experiment_id = _ensure_experiment(uri, admin, name)
        _grant(uri, admin, job.username, "experiment", experiment_id, EDIT)
        report.append(f"experiment {name} ({experiment_id}): {EDIT}")
    for name in registered_models:
        _ensure_registered_model(uri, admin, name)
        _grant(uri, admin, job.username, "registered_model", name, EDIT)
        report.append(f"registered model {name}: {EDIT}")
    return report


def wait_for_server(uri: str, timeout: float) -> None:
    """Until ``uri``/health answers 200 (the server may still be starting), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise JobUserError(f"MLflow at {uri} did not answer /health within {timeout:.0f}s")
        time.sleep(1)


def _credentials(user_var: str, password_var: str) -> Credentials:
    username, password = os.environ.get(user_var, ""), os.environ.get(password_var, "")
    if not username or not password:
        raise JobUserError(f"set {user_var} and {password_var} in the environment")
    return Credentials(username, password)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.records.job_user", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", action="append", help="experiment to grant EDIT on (repeatable; default "
                        "the config's tracking.experiment)")
    parser.add_argument("--registered-model", action="append", default=[], help="registered model to grant EDIT on")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the server to answer first")
    return parser


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException

    from pipelines.config import TrackingConfig

    args = build_parser().parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    try:
        if not uri.startswith(("http://", "https://")):
            raise JobUserError("set MLFLOW_TRACKING_URI to the tracking server (http://...)")
        admin = _credentials("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
        job = _credentials("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        if args.wait:
            wait_for_server(uri, args.wait)
        experiments = args.experiment or [TrackingConfig.model_fields["experiment"].default]
        for line in ensure_job_user(uri, admin, job, experiments, args.registered_model):
            print(f"[job-user] {line}", file=sys.stderr)
    except (JobUserError, MlflowException) as e:  # MLflow's: the server failed after retries
        print(f"[job-user] ERROR: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
