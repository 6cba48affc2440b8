"""A real PostgreSQL server and an MLflow tracking server with basic auth on top of it, for tests.

Both bind 127.0.0.1 on free ports; PostgreSQL listens on no Unix socket. As on the mini
cluster (infra/local/start.sh): the superuser has no password (it cannot log in over TCP),
a 'mlflow' role owns the tracking and the user databases with its password only in a
0600 libpq password file, and the MLflow admin's credentials reach the server through its
environment. PostgreSQL refuses to run as root, so as root it runs as the 'postgres' user
that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "Debian/Ubuntu: sudo apt-get install -y postgresql (.ci/run installs it)"


def pg_bin() -> Path | None:
    """The folder holding initdb and postgres, or None (Debian keeps them off PATH)."""
    candidates = []
    if os.environ.get("MINI_PG_BIN"):
        candidates.append(Path(os.environ["MINI_PG_BIN"]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    candidates += reversed(versions)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def require_postgres() -> Path:
    """PostgreSQL's bin folder; skip the test without it (fail under CI_REQUIRE_POSTGRES=1)."""
    import pytest

    folder = pg_bin()
    if folder is None:
        message = f"PostgreSQL is not installed ({INSTALL_HINT}; or set MINI_PG_BIN to the folder with initdb)"
        if os.environ.get("CI_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--inh-caps=-all"]


def _stop_group(proc: subprocess.Popen, sig: int, timeout: float = 30) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


@dataclass
class Postgres:
    port: int
    folder: Path  # data dir and the password file
    process: subprocess.Popen
    password: str  # the mlflow role's
    pgpass: Path

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "mlflow"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", dbname=database,
                                passfile=str(self.pgpass))

    def log(self) -> str:
        return (self.folder / "postgres.log").read_text(errors="replace")

    def stop(self) -> None:
        _stop_group(self.process, signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(timeout: float = 60.0) -> Postgres:
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_HINT}")
    # Outside pytest's private temp folders: the postgres user must reach the data dir.
    folder = Path(tempfile.mkdtemp(prefix="tests-pg-"))
    as_pg = _as_postgres()
    if as_pg:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    subprocess.run([*as_pg, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                    "--auth-host=scram-sha-256", "--auth-local=peer", "--no-instructions", "--no-sync"],
                   check=True, capture_output=True)
    password = secrets.token_hex(16)
    sql = (f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'\n"
           "CREATE DATABASE mlflow OWNER mlflow\nCREATE DATABASE mlflow_auth OWNER mlflow\n")
    subprocess.run([*as_pg, str(binaries / "postgres"), "--single", "-D", str(data), "postgres"],
                   input=sql, text=True, check=True, capture_output=True)
    port = free_port()
    pgpass = folder / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:mlflow:{password}\n")
    pgpass.chmod(0o600)  # root's; the postgres user never reads it
    log = open(folder / "postgres.log", "wb")
    proc = subprocess.Popen([*as_pg, str(binaries / "postgres"), "-D", str(data), "-p", str(port),
                             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                             "-c", "fsync=off"],  # a test database: durability buys nothing here
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Postgres(port, folder, proc, password, pgpass)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {server.log()[-2000:]}")
        ready = subprocess.run([str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)])
        if ready.returncode == 0:
            return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"PostgreSQL did not answer on 127.0.0.1:{port} within {timeout}s")


@dataclass
class MlflowServer:
    uri: str
    username: str
    password: str
    process: subprocess.Popen
    folder: Path
    env: dict[str, str] = field(default_factory=dict)  # what a client needs

    def log(self) -> str:
        return (self.folder / "mlflow.log").read_text(errors="replace")

    def stop(self) -> None:
        _stop_group(self.process, signal.SIGTERM)


def start_mlflow(pg: Postgres, folder: Path, workers: int = 2, timeout: float = 120.0) -> MlflowServer:
    """``mlflow server --app-name basic-auth`` on PostgreSQL (runs and users), local artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    username, password = "admin", secrets.token_hex(16)
    (folder / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {pg.uri('mlflow_auth')}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n")  # one PBKDF2 check per minute, not per request
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env |= {"PGPASSFILE": str(pg.pgpass), "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": username, "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as infra/local/start.sh: no job runner processes
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(folder / "mlflow.log", "wb")
    proc = subprocess.Popen([str(mlflow), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers),
                             "--backend-store-uri", pg.uri("mlflow"),
                             "--artifacts-destination", str(folder / "artifacts")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    server = MlflowServer(uri, username, password, proc, folder, {
        "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}: {server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer on {uri} within {timeout}s: {server.log()[-3000:]}")


@contextlib.contextmanager
def postgres_and_mlflow(folder: Path):
    """PostgreSQL and a basic-auth MLflow server on it (skipped, or failed in CI, without
    PostgreSQL), both stopped afterwards: yields (postgres, server)."""
    require_postgres()
    pg = start_postgres()
    try:
        mlflow_server = start_mlflow(pg, folder)
        try:
            yield pg, mlflow_server
        finally:
            mlflow_server.stop()
    finally:
        pg.stop()

