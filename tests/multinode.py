"""A multi-node Ray cluster on one machine, with real services, for failure tests.

A head and two worker nodes, each its own `ray start --block` (its own raylet, object
store, CPU count, ports and temporary folder), all on 127.0.0.1; storage in SeaweedFS
S3 (tests/s3server.py) and tracking on a real `mlflow server` (SQLite, artifacts in S3),
as infra/local/start.sh starts them. Every process is started in its own session, so
its PID is its process group: losing a node is `killpg(SIGKILL)` of that group (the
raylet, its object store and every worker process on it, at once), and a service
outage is the same for the service. Nothing here is a mock.

Placement is checkable: the head has 1 CPU and the resource ``head``; each worker node
has 2 CPUs, ``trainer: 1`` and its own name as a resource (``node_a``, ``node_b``...).
Training asks for ``scaling.worker_resources={trainer: 1}``, so its workers can only
run on worker nodes, one a node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.s3server import S3Server, start_s3_server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - not there yet
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last error: {last})")


@dataclass
class Service:
    """A process started in its own session; stop() kills its whole process group by PID."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> "Service":
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL to every process of the group: no goodbye, like a node that loses power."""
        if self.process is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def clean_env() -> dict[str, str]:
    """This process's environment without cluster, tracking or S3 settings of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "MINI_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


@dataclass
class MultiNode:
    tmp: Path
    s3: S3Server
    bucket: str
    env: dict[str, str]  # what a user's shell (and every Ray node) has: S3, tracking, Ray address
    mlflow: Service
    head: Service
    nodes: dict[str, Service] = field(default_factory=dict)
    gcs_port: int = 0
    dashboard_port: int = 0

    # --- addresses
    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # --- Ray nodes
    def add_node(self, name: str, cpus: int = 2, hide: Path | None = None) -> Service:
        """A worker node named by its resource ``name`` (and ``trainer: 1``).

        ``hide``: a folder this node does not see, as on a machine without the driver's
        disk: the node runs in its own mount namespace with an empty tmpfs over it.
        """
        temp = Path(f"/tmp/rn-{os.getpid()}-{name}")  # Ray's socket paths must stay short
        private = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide)] if hide else []
        argv = [*private, str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--address=127.0.0.1:{self.gcs_port}",
                "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", f"--resources={json.dumps({name: 1, 'trainer': 1})}",
                "--object-store-memory=120000000", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--temp-dir={temp}"]
        node = Service(name, argv, self.env, self.tmp / f"{name}.log").start()
        self.nodes[name] = node
        wait_until(lambda: self.node_id(name), 180, f"Ray node {name} joining")
        return node

    def state(self, kind: str, **filters: str) -> list[dict]:
        """Ray's State API (nodes, workers, actors) over HTTP, with the cluster's token: this
        test process stays out of Ray (the session's local Ray may live in it)."""
        query = {"detail": "true", "limit": "1000"}
        params = "&".join(f"{k}={v}" for k, v in query.items())
        params += "".join(f"&filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items())
        request = urllib.request.Request(f"{self.dashboard}/api/v0/{kind}?{params}", headers=_auth_header())
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def node_id(self, name: str) -> str | None:
        for n in self.alive_nodes():
            if name in (n.get("resources_total") or {}):
                return n["node_id"]
        return None

    def lose_node(self, name: str) -> list[int]:
        """Kill every process of node ``name`` at once (SIGKILL to its process group: the
        raylet, its object store, its Ray workers); returns their PIDs. At once means no
        State API call first: on a busy machine that takes seconds, and the run goes on."""
        node = self.nodes.pop(name)
        pids = _group_pids(node.pid)
        node.kill()
        wait_until(lambda: not _group_pids(node.pid), 10, f"every process of {name} gone", every=0.1)
        wait_until(lambda: self.node_id(name) is None, 120, f"Ray noticing {name} is gone")
        return pids

    def lose_head(self) -> list[str]:
        """The head node lost with everything on it, as when its pod is deleted: every process
        started from it (GCS, raylet, dashboard, the job supervisors, and the job drivers they
        start in sessions of their own) SIGKILLed at once. The worker nodes go with it: without
        GCS fault tolerance (no Redis here, none in infra/k8s) a raylet cannot outlive its GCS,
        and KubeRay restarts the worker pods as well. Returns the worker nodes' names."""
        services = [self.head, *self.nodes.values()]
        pids = {pid for service in services for pid in _tree_pids(service.pid)}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for service in services:
            service.process.wait()
        wait_until(lambda: not pids & _processes().keys(), 20, "every process of the head and its nodes gone",
                   every=0.1)
        names = list(self.nodes)
        self.nodes.clear()
        return names

    def restart_head(self, nodes: list[str]) -> None:
        """The head again on the same ports (the address users hold stays valid), then ``nodes``."""
        self.head.start()
        wait_until(lambda: self.node_id("head"), 180, "Ray head answering again")
        for name in nodes:
            self.add_node(name)

    def train_workers(self) -> list[tuple[str, int]]:
        """(node id, pid) of every Ray Train worker actor the cluster has seen, dead or alive."""
        return [(a["node_id"], a.get("pid")) for a in self.state("actors", class_name="RayTrainWorker")]

    # --- services
    def stop_mlflow(self) -> None:
        self.mlflow.kill()

    def start_mlflow(self) -> None:
        self.mlflow.start()
        wait_until(lambda: _health(self.tracking_uri), 120, "MLflow server answering")

    def stop_s3(self) -> None:
        self.s3.stop_hard()

    def start_s3(self) -> None:
        self.s3.restart()

    # --- drivers
    def driver(self, module: str, args: list[str], log: str) -> subprocess.Popen:
        """``python -m <module> <args>`` as a user's driver on this cluster (RAY_ADDRESS set)."""
        out = open(self.tmp / log, "wb")
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text(errors="replace")

    def s3_keys(self, prefix: str) -> list[str]:
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        for node in list(self.nodes.values()):
            node.kill()
        self.head.kill()
        self.mlflow.kill()
        self.s3.stop()
        for temp in Path("/tmp").glob(f"rn-{os.getpid()}-*"):
            shutil.rmtree(temp, ignore_errors=True)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live (not zombie) process, from /proc."""
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z":
                table[int(proc.name)] = (int(fields[1]), int(fields[2]))
    return table


def _group_pids(pgid: int) -> list[int]:
    """PIDs of the live processes in process group pgid."""
    return [pid for pid, (_, group) in _processes().items() if group == pgid]


def _tree_pids(root: int) -> list[int]:
    """The live processes descended from ``root`` or in its process group, root included: a
    process that moved to a session of its own (a Ray job's driver) is still its descendant."""
    table = _processes()
    tree = {pid for pid, (_, group) in table.items() if group == root} | ({root} & table.keys())
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def _auth_header() -> dict[str, str]:
    token = Path.home() / ".ray" / "auth_token"
    return {"Authorization": "Bearer " + token.read_text().strip()} if token.exists() else {}


def _health(uri: str) -> bool:
    with urllib.request.urlopen(uri + "/health", timeout=5) as r:
        return r.status == 200


class RestartableS3(S3Server):
    """SeaweedFS that can be killed (process group, SIGKILL) and started again on the same
    ports and data folder: an S3 outage, then the same store back."""

    def stop_hard(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def restart(self) -> None:
        log = open(self.workdir / "weed.log", "ab")
        self.process = subprocess.Popen(self.process.args, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until(lambda: self.client().list_buckets(), 120, "SeaweedFS answering again")


def start_multinode(tmp: Path) -> MultiNode:
    """S3, MLflow, a Ray head and worker nodes node_a and node_b; stop() ends them all."""
    started = start_s3_server(tmp / "seaweedfs")
    s3 = RestartableS3(**{k: getattr(started, k) for k in ("endpoint", "access_key", "secret_key", "process",
                                                           "workdir")})
    bucket = s3.create_bucket("multinode")
    mlflow_port, gcs_port, dashboard_port = free_port(), free_port(), free_port()
    env = clean_env() | s3.env() | {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "RAY_ADDRESS": f"127.0.0.1:{gcs_port}",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
        # Ray 2.60 turns token auth on where ~/.ray/auth_token exists: head, nodes and clients all need it.
        **({"RAY_AUTH_MODE": "token"} if (Path.home() / ".ray" / "auth_token").exists() else {}),
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",  # a busy 2-core machine starts workers slowly
        # A lost node is noticed in ~3 s rather than ~15 s.
        "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
    }
    mlflow = Service("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                                "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                                "--artifacts-destination", f"s3://{bucket}/mlflow-artifacts"],
                     env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, tmp / "mlflow.log")  # as start.sh
    head = Service("head", [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                            "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=1",
                            '--resources={"head": 1}', "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
                            f"--ray-client-server-port={free_port()}", "--object-store-memory=150000000",
                            f"--temp-dir=/tmp/rn-{os.getpid()}-head"], env, tmp / "head.log")
    cluster = MultiNode(tmp, s3, bucket, env, mlflow, head, gcs_port=gcs_port, dashboard_port=dashboard_port)
    try:
        cluster.start_mlflow()
        head.start()
        wait_until(lambda: cluster.node_id("head"), 180, "Ray head answering")
        cluster.add_node("node_a")
        cluster.add_node("node_b")
    except BaseException:
        cluster.stop()
        raise
    return cluster
