"""End to end on the local mini cluster: the path a user takes on a real cluster.

infra/local/start.sh starts SeaweedFS S3, PostgreSQL, an MLflow server with basic auth on
it (artifacts in S3) and a Ray head with token auth on 127.0.0.1, on free ports, into a
temporary state folder. Without the Ray token the job API refuses requests, without
credentials MLflow does. The smoke pipeline is `ray job submit`ted with both, its storage in
S3; then everything is read back the way a user would: from the MLflow server (params, loss
series, FID, audit report, sample grids, the registered model whose files sit in S3), with
`dcgan generate`, and in the MLflow UI in headless Chromium; and no secret is found in any
log, parameter, tag or stored object. Last, with the tracking server stopped, the pipeline
fails at once with a message saying how to start it and writes nothing. The cluster is
always stopped.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config
from tests.pgserver import require_postgres
from tests.s3server import free_port_pair

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
START, STOP = ROOT / "infra" / "local" / "start.sh", ROOT / "infra" / "local" / "stop.sh"
ARTIFACTS = ROOT / "test-artifacts"
DOCS = [ROOT / "README.md"]  # where the mini cluster and the cluster job are documented
PRESET = "smoke"  # a preset name: the presets are package data (pipelines/presets)
JOB_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MiniCluster:
    state: Path
    env: dict[str, str]  # a user's shell after `. env.sh`: the exports plus the S3 keys
    start_output: str

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def bucket(self) -> str:
        return self.env["DCGAN_BUCKET"]

    @property
    def secret_key(self) -> str:
        return self.env["AWS_SECRET_ACCESS_KEY"]

    @property
    def ray_token(self) -> str:
        return Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    def secrets(self) -> dict[str, str]:
        """Every secret the cluster holds, by name."""
        found = {"AWS_SECRET_ACCESS_KEY": self.secret_key, "MLFLOW_TRACKING_PASSWORD": self.env["MLFLOW_TRACKING_PASSWORD"],
                 "Ray token": self.ray_token,
                 "PostgreSQL password": (self.state / "server" / "pgpass").read_text().strip().rsplit(":", 1)[1],
                 "MLflow session key": (self.state / "server" / "flask_secret_key").read_text().strip(),
                 "MLflow admin password": self.admin()[1]}
        assert all(len(v) >= 16 for v in found.values()), "a secret is too short to search for"
        return found

    def admin(self) -> tuple[str, str]:
        """The MLflow admin's credentials, which only the server and start.sh's set-up see."""
        kept = dict(ln.split("=", 1) for ln in (self.state / "server" / "mlflow_admin.env").read_text().split())
        return kept["MLFLOW_AUTH_ADMIN_USERNAME"], kept["MLFLOW_AUTH_ADMIN_PASSWORD"]

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name=self.env["AWS_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def objects(self) -> dict[str, str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}

    def pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.state / "pids").glob("*.pid")]


def _clean_env() -> dict[str, str]:
    """This process's environment without any cluster, tracking or S3 settings of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "MINI_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # ray, mlflow, weed
    env["PYTHONPATH"] = str(ROOT)
    return env


def _user_env(start_stdout: str, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for line in start_stdout.splitlines():
        if m := re.fullmatch(r"export (\w+)=(\S+)", line.strip()):
            env[m.group(1)] = m.group(2)
        elif m := re.match(r"set -a; \. (\S+); set \+a", line.strip()):
            for kv in Path(m.group(1)).read_text().split():
                key, value = kv.split("=", 1)
                env[key] = value
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _free_ports() -> dict[str, int]:
    """Every port start.sh takes, free on 127.0.0.1 (SeaweedFS's also at +10000 for gRPC)."""
    ports, taken = {}, set()
    for name in ("S3", "S3_MASTER", "S3_VOLUME", "S3_FILER", "S3_ADMIN"):
        while (port := free_port_pair()) in taken or port + 10000 in taken:
            pass
        ports[f"MINI_{name}_PORT"] = port
        taken |= {port, port + 10000}
    for name in ("MLFLOW", "PG", "RAY", "RAY_DASHBOARD", "RAY_CLIENT", "RAY_AGENT"):
        while (port := _free_port()) in taken:
            pass
        ports[f"MINI_{name}_PORT"] = port
        taken.add(port)
    return ports


def test_start_refuses_a_taken_port_before_starting_anything(tmp_path):
    require_postgres()  # start.sh checks for it first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {k: str(v) for k, v in _free_ports().items()} | {"MINI_MLFLOW_PORT": str(port)}
        env = _clean_env() | ports | {"MINI_STATE_DIR": str(tmp_path / "state")}
        done = subprocess.run([str(START)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"port {port}" in done.stderr and "MINI_MLFLOW_PORT" in done.stderr, done.stderr
    assert not list((tmp_path / "state" / "pids").glob("*.pid")), "it started a service anyway"
    assert not done.stdout, "no env lines for a cluster that is not up"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_postgres()
    state = tmp_path_factory.mktemp("mini-cluster")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-e2e-", dir="/tmp"))  # Ray's socket paths must stay short
    settings = _free_ports() | {
        "MINI_STATE_DIR": str(state), "MINI_BUCKET": "dcgan-e2e", "MINI_RAY_TEMP_DIR": str(ray_tmp),
        # Two training-side CPUs on a 2-core machine: one trainer, Ray Data's reads, the evaluation.
        "MINI_RAY_NUM_CPUS": 4, "MINI_RAY_START_ARGS": "--object-store-memory 400000000",
        # A busy 2-core machine can take longer than Ray's 60 s to start a worker group.
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": 300,
    }
    env = _clean_env() | {k: str(v) for k, v in settings.items()}
    try:
        started = subprocess.run([str(START)], env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, f"start.sh failed:\n{started.stderr[-4000:]}"
        user_env = _user_env(started.stdout, env)
        # This process reads the server back as the user does: with the MLflow credentials.
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ[key] = user_env[key]
        yield MiniCluster(state, user_env, started.stdout + started.stderr)
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        subprocess.run([str(STOP)], env=env, capture_output=True, text=True, timeout=180)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if (state / "postgres.path").is_file():  # the database folder start.sh made outside the state dir
            shutil.rmtree((state / "postgres.path").read_text().strip(), ignore_errors=True)


@dataclass
class Job:
    output: str
    pipeline_argv: list[str]  # python -m pipelines.steps.run --config ... as submitted
    config: object
    experiment_id: str
    pipeline_run: object
    child_runs: dict  # pipeline_step -> Run


@pytest.fixture(scope="module")
def job(cluster):
    """The documented `ray job submit` line of the smoke pipeline, as a user runs it after `. env.sh`."""
    from mlflow.tracking import MlflowClient

    documented = sorted({ln.strip() for doc in DOCS if doc.exists() for ln in doc.read_text().splitlines()
                         if ln.strip().startswith("ray job submit") and PRESET in ln})
    assert len(documented) == 1, f"the docs must show one `ray job submit` line for {PRESET}: {documented}"
    argv = shlex.split(documented[0])
    argv = [re.sub(r"\$(\w+)", lambda m: cluster.env[m.group(1)], a) for a in argv]  # the user's shell
    split = argv.index("--")
    submit_flags, pipeline_argv = argv[3:split], argv[split + 1:]
    assert pipeline_argv[:5] == ["python", "-m", "pipelines.steps.run", "--config", PRESET], pipeline_argv
    overrides = pipeline_argv[5:]
    submission_id = f"dcgan-e2e-{int(time.time())}"
    submit = ["ray", "job", "submit", "--submission-id", submission_id, *submit_flags, "--", *pipeline_argv]
    done = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=ROOT)
    output = done.stdout + done.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "e2e-job.log").write_text(output)
    status = subprocess.run(["ray", "job", "status", submission_id],
                            env=cluster.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"job failed:\n{output[-6000:]}"
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr

    cfg = load_config(PRESET, overrides)
    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    pipeline = [r for r in runs if r.data.tags.get("pipeline_step") == "pipeline"]
    assert len(pipeline) == 1, [r.data.tags for r in runs]
    children = {r.data.tags.get("pipeline_step"): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == pipeline[0].info.run_id}
    assert cfg.storage.startswith(f"s3://{cluster.bucket}/"), "the documented run keeps its storage in the S3 store"
    return Job(output, pipeline_argv, cfg, experiment.experiment_id, pipeline[0], children)


def _download(cluster, run_id: str, path: str, dst: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                    tracking_uri=cluster.tracking_uri))


def test_start_prints_what_to_export_and_no_secret(cluster):
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "DCGAN_BUCKET",
                "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert cluster.env.get(key), f"start.sh did not print {key}"
    for url in (cluster.env["RAY_API_SERVER_ADDRESS"], cluster.tracking_uri, cluster.env["AWS_ENDPOINT_URL"]):
        assert url.startswith("http://127.0.0.1:"), url
    for name, secret in cluster.secrets().items():
        assert secret not in cluster.start_output, f"start.sh printed the {name}"
    for path in [cluster.state / "credentials.env", Path(cluster.env["RAY_AUTH_TOKEN_PATH"])] + \
            list((cluster.state / "server").iterdir()):
        assert path.stat().st_mode & 0o777 == 0o600, path
    # The exported RAY_ADDRESS takes a driver of this shell to the mini cluster, token and all.
    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print(ray.cluster_resources()['CPU'])"],
                           env=cluster.env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert float(probe.stdout.strip().splitlines()[-1]) == float(cluster.env["MINI_RAY_NUM_CPUS"])


def _listening_addresses(pgid: int) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket a process of group pgid listens on, from /proc."""
    import ipaddress

    listening = {}  # socket inode -> (ip, port)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints the address as 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            listening[fields[9]] = (str(ip), int(hex_port, 16))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in listening:
                found.append((int(proc.name), *listening[link[8:-1]]))
    return found


def test_services_listen_on_loopback_only(cluster):
    for pgid in cluster.pids():
        sockets = _listening_addresses(pgid)
        assert sockets, f"process group {pgid} listens nowhere"
        for pid, ip, port in sockets:
            assert ip in ("127.0.0.1", "::1"), f"pid {pid} of group {pgid} listens on {ip}:{port}"


def _http_status(url: str, headers: dict[str, str] | None = None) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_job_api_refuses_requests_without_the_token(cluster, tmp_path):
    api = cluster.env["RAY_API_SERVER_ADDRESS"] + "/api/jobs/"
    assert _http_status(api) == 401
    assert _http_status(api, {"Authorization": "Bearer " + "0" * 64}) in (401, 403)
    assert _http_status(api, {"Authorization": f"Bearer {cluster.ray_token}"}) == 200
    # `ray job submit` from a shell without the token (and no ~/.ray/auth_token) is turned away.
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)
    marker = "job-ran-without-token"
    done = subprocess.run(["ray", "job", "submit", "--", "python", "-c", f"print('{marker}')"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Authentication" in output, output[-2000:]
    assert marker not in output.replace(f"print('{marker}')", "")


def test_mlflow_refuses_requests_without_credentials(cluster):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    api = f"{cluster.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    user, password = cluster.env["MLFLOW_TRACKING_USERNAME"], cluster.env["MLFLOW_TRACKING_PASSWORD"]
    assert _http_status(api) == 401
    assert _http_status(f"{cluster.tracking_uri}/") == 401, "the UI too"
    assert _http_status(api, _basic(user, "not-" + password)) == 401
    assert _http_status(api, _basic(user, password)) == 200
    assert _http_status(f"{cluster.tracking_uri}/health") == 200, "the health probe stays open"
    # A user's shell (env.sh) and the jobs hold the job user's credentials, not the admin's
    # (tests/test_mlflow_job_user.py checks what that user may not do).
    import urllib.request

    from mlflow.server.auth.routes import GET_CURRENT_USER

    assert user != cluster.admin()[0] and not [k for k in cluster.env if k.startswith("MLFLOW_AUTH_ADMIN")]
    me = urllib.request.Request(f"{cluster.tracking_uri}{GET_CURRENT_USER}", headers=_basic(user, password))
    with urllib.request.urlopen(me, timeout=30) as resp:
        assert json.loads(resp.read())["user"]["is_admin"] is False
    assert _http_status(api, _basic(*cluster.admin())) == 200
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        with pytest.raises(MlflowException, match="401|nauthorized|credentials"):
            MlflowClient(cluster.tracking_uri).search_experiments()
    finally:
        os.environ.update(saved)


def test_pipeline_job_is_tracked_on_the_server(cluster, job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.tracking_uri)
    assert job.pipeline_run.info.user_id == cluster.env["MLFLOW_TRACKING_USERNAME"] != cluster.admin()[0]
    params = job.pipeline_run.data.params
    assert params["storage"] == job.config.storage
    assert params["train.iterations"] == str(job.config.train.iterations)
    assert params["model.resolution"] == str(job.config.model.resolution)
    assert set(job.child_runs) >= {"ingest", "train", "evaluate"}

    every_run = client.search_runs([job.experiment_id])
    assert {r.info.status for r in every_run} == {"FINISHED"}, "no run may be left RUNNING or FAILED"
    for run in every_run:  # keys reach the job through its environment, never the records
        assert cluster.secret_key not in json.dumps([run.data.params, run.data.tags])
    assert cluster.secret_key not in job.output

    train = job.child_runs["train"].info.run_id
    for name in ("loss_d", "loss_g"):
        history = client.get_metric_history(train, name)
        steps = [m.step for m in history]
        assert len(history) >= job.config.train.iterations // job.config.train.log_every, name
        assert steps == sorted(set(steps)), f"{name}: steps repeat or go back: {steps}"
        assert all(math.isfinite(m.value) for m in history)

    _step_lineage_and_plots(client, client.get_run(train), job.config.storage)
    for plot in ("losses", "discriminator"):  # kept for a look (and the README's picture)
        _download(cluster, train, f"plots/{plot}.png", ARTIFACTS / "plots")
    for step in ("ingest", "evaluate"):
        assert client.get_run(job.child_runs[step].info.run_id).inputs.dataset_inputs, f"{step} has no dataset input"

    fid_keys = [k for k in job.pipeline_run.data.metrics if k.startswith("fid")]
    assert fid_keys, f"no FID on the pipeline run: {job.pipeline_run.data.metrics}"
    fid = job.pipeline_run.data.metrics[fid_keys[0]]
    assert math.isfinite(fid) and fid > 0
    assert job.child_runs["evaluate"].data.metrics[fid_keys[0]] == fid


def _artifact_files(client, run_id: str) -> list[str]:
    files, stack = [], list(client.list_artifacts(run_id))
    while stack:
        item = stack.pop()
        if item.is_dir:
            stack += client.list_artifacts(run_id, item.path)
        else:
            files.append(item.path)
    return files


def test_audit_report_and_sample_grids_come_back_from_s3(cluster, job, tmp_path):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    client = MlflowClient(cluster.tracking_uri)
    runs = [job.pipeline_run.info.run_id] + [r.info.run_id for r in job.child_runs.values()]
    files = [(run_id, path) for run_id in runs for path in _artifact_files(client, run_id)]

    reports = [(run_id, p) for run_id, p in files if "audit" in p and p.endswith(".json")]
    assert reports, f"no audit report among the pipeline's artifacts: {[p for _, p in files]}"
    report = json.loads(_download(cluster, *reports[0], tmp_path / "audit").read_text())
    assert isinstance(report, dict) and report, "the audit report is empty"

    grids = [(run_id, p) for run_id, p in files if p.endswith(".png")]
    assert grids, "no sample grid among the pipeline's artifacts"
    image = Image.open(_download(cluster, *grids[0], tmp_path / "grid"))
    assert min(image.size) > job.config.model.resolution, "a grid holds several samples"

    # The artifacts live in the S3 store (the server proxies them), not on the server's disk.
    keys = cluster.objects()
    for _, path in reports + grids:
        assert any(k.startswith("mlflow-artifacts/") and k.endswith("/" + path) for k in keys), f"{path} is not in S3"
    assert not list(cluster.state.rglob("mlartifacts")), "the server kept artifacts on local disk"


def test_registered_model_sits_in_s3_and_generates_images(cluster, job, tmp_path):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    client = MlflowClient(cluster.tracking_uri)
    name = job.config.registered_model_name
    champion = client.get_model_version_by_alias(name, "champion")  # the first version on a fresh server
    assert champion.run_id == job.pipeline_run.info.run_id
    fid_key = champion.tags["fid_metric"]  # held-out FID: the smoke dataset holds some images out
    assert fid_key.startswith("fid_heldout_"), champion.tags
    assert float(champion.tags["fid"]) == pytest.approx(job.pipeline_run.data.metrics[fid_key])
    assert champion.tags["dataset_hash"] == job.pipeline_run.data.tags["dataset_hash"]
    from pipelines.records.registry import version_metrics

    linked = version_metrics(champion, cluster.tracking_uri)  # FID linked to the logged model: the version's metrics
    assert linked[fid_key] == pytest.approx(job.pipeline_run.data.metrics[fid_key]), linked
    audit_tags = {k: v for k, v in champion.tags.items() if k.startswith("audit")}
    assert audit_tags, f"the version carries no audit result: {champion.tags}"
    for key, value in audit_tags.items():
        assert 0 <= float(value) <= 1, f"{key}={value!r} is not the audit's fraction"

    # MLflow 3 registers a logged model: the version's source is models:/<model id>.
    model_id = champion.model_id or champion.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    location = logged.artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    prefix = "mlflow-artifacts/" + location[len("mlflow-artifacts:/"):].strip("/") + "/"
    files = {k[len(prefix):]: k for k in cluster.objects() if k.startswith(prefix)}
    assert "MLmodel" in files, f"no MLmodel under s3://{cluster.bucket}/{prefix}: {sorted(files)}"
    mlmodel = yaml.safe_load(cluster.s3().get_object(Bucket=cluster.bucket, Key=files["MLmodel"])["Body"].read())
    assert "pytorch" in mlmodel["flavors"]
    sizes = {k: cluster.s3().head_object(Bucket=cluster.bucket, Key=v)["ContentLength"] for k, v in files.items()}
    assert max(sizes.values()) > 10_000, f"no weights among the model's files: {sizes}"

    documented = {m.group(1) for doc in DOCS if doc.exists()
                  for m in re.finditer(r"dcgan generate --network models:/([\w.-]+)@champion", doc.read_text())}
    assert name in documented, f"the docs' `dcgan generate` lines name {documented}, the smoke run registers {name}"

    # A user without S3 keys: the model comes through the tracking server.
    env = {k: v for k, v in cluster.env.items() if not k.startswith("AWS_")}
    out = tmp_path / "samples"
    done = subprocess.run([sys.executable, "-m", "pipelines.steps.cli", "generate", "--network", f"models:/{name}@champion",
                           "-n", "6", "--seed", "7", "--outdir", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6
    images = [Image.open(p).convert("RGB") for p in pngs]
    assert {im.size for im in images} == {(job.config.model.resolution,) * 2}
    assert len({im.tobytes() for im in images}) == 6, "different seeds gave identical images"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    message = "headless Chromium is not installed (Debian: apt-get install -y chromium)"
    if os.environ.get("CI_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _render(browser: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page after its JavaScript ran: the DOM, or a screenshot of it."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--window-size=1400,1600", "--virtual-time-budget=20000"]
    flags.append(f"--screenshot={screenshot}" if screenshot else "--dump-dom")
    proc = subprocess.Popen([browser, *flags, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return out


def _page_text(dom: str) -> str:
    import html

    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def _rendered_text(browser: str, url: str, profile: Path, expected: list[str]) -> str:
    text = ""
    for _ in range(3):  # a busy machine may need a second pass for the app's data requests
        text = _page_text(_render(browser, url, profile))
        if all(e in text for e in expected):
            break
    return text


def test_mlflow_ui_shows_the_model_version_and_the_fid(cluster, job, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.authproxy import basic_auth_proxy

    browser = _chromium()
    client = MlflowClient(cluster.tracking_uri)
    name = job.config.registered_model_name
    version = client.get_model_version_by_alias(name, "champion").version
    profile = tmp_path / "chromium-profile"
    # A logged-in browser: every request reaches the server with the MLflow credentials
    # (headless Chromium cannot answer the basic-auth dialog; tests/authproxy.py).
    with basic_auth_proxy(cluster.tracking_uri, cluster.env["MLFLOW_TRACKING_USERNAME"],
                          cluster.env["MLFLOW_TRACKING_PASSWORD"]) as ui:
        model_url = f"{ui}/#/models/{name}"
        text = _rendered_text(browser, model_url, profile, [name, f"Version {version}"])
        assert name in text and f"Version {version}" in text, f"model page without version {version}:\n{text[:2000]}"

        run = job.pipeline_run
        fid_key = next(k for k in run.data.metrics if k.startswith("fid"))
        run_url = f"{ui}/#/experiments/{job.experiment_id}/runs/{run.info.run_id}"
        text = _rendered_text(browser, run_url, profile, ["Metrics", fid_key])
        assert re.search(rf"Metrics \(\d+\).*\b{re.escape(fid_key)}\b", text), f"run page without {fid_key}:\n{text[:2000]}"

        train = job.child_runs["train"]
        train_url = f"{ui}/#/experiments/{job.experiment_id}/runs/{train.info.run_id}"
        dataset = train.inputs.dataset_inputs[0].dataset.name
        text = _rendered_text(browser, train_url, profile, [dataset])
        assert dataset in text, f"the train run's page does not show its dataset {dataset}:\n{text[:2000]}"
        images_url = train_url + "/model-metrics"
        text = _rendered_text(browser, images_url, profile, ["samples"])
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "mlflow-train-model-metrics.txt").write_text(text)
        # The image chart of the `samples` key (its step slider sits below the fold; see the screenshot).
        assert re.search(r"Model metrics \(\d+\).*\bsamples\b", text), f"no samples image chart:\n{text[:2000]}"

        for url, png in ((run_url, ARTIFACTS / "mlflow-run-page.png"), (model_url, ARTIFACTS / "mlflow-model-page.png"),
                         (train_url, ARTIFACTS / "mlflow-train-run-page.png"),
                         (images_url, ARTIFACTS / "mlflow-train-images.png")):
            png.unlink(missing_ok=True)
            _render(browser, url, profile, screenshot=png)
            assert png.is_file() and png.stat().st_size > 10_000, f"no screenshot at {png}"


def test_training_alone_is_submitted_and_its_metrics_reach_the_server(cluster, job):
    """`python -m pipelines.steps.train` through `ray job submit` on the same head: SUCCEEDED, with
    every iteration's losses and the config in its own MLflow run."""
    from mlflow.tracking import MlflowClient

    storage = f"s3://{cluster.bucket}/train-only"
    submission_id = f"dcgan-e2e-train-{int(time.time())}"
    argv = ["python", "-m", "pipelines.steps.train", "--config", PRESET, f"storage={storage}", "train.iterations=10",
            "train.log_every=5", "train.checkpoint_every=5", "name=train-only"]
    done = subprocess.run(["ray", "job", "submit", "--submission-id", submission_id, "--working-dir", ".", "--", *argv],
                          env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=ROOT)
    (ARTIFACTS / "e2e-train-job.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    status = subprocess.run(["ray", "job", "status", submission_id], env=cluster.env, capture_output=True, text=True,
                            timeout=60)
    assert "succeeded" in status.stdout + status.stderr

    client = MlflowClient(cluster.tracking_uri)
    runs = client.search_runs([job.experiment_id], "tags.pipeline_step = 'train' and params.name = 'train-only'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["train.iterations"] == "10" and run.data.params["storage"] == storage
    assert "mlflow.parentRunId" not in run.data.tags  # the training step alone is a top-level run
    for name in ("loss_d", "loss_g", "d_real", "d_fake"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == list(range(1, 11)), name
    assert run.data.tags["checkpoint"].startswith(f"{storage}/checkpoints/")


def test_no_secret_in_logs_params_or_artifacts(cluster, job):
    """The jobs ran with every credential; none of them is in a log, a run's params or tags,
    a model version's tags, or any object in the S3 store (datasets, checkpoints, every
    MLflow artifact and model)."""
    from mlflow.tracking import MlflowClient

    secrets = {name: value.encode() for name, value in cluster.secrets().items()}
    found = []

    logs = [p for p in (cluster.state / "logs").rglob("*") if p.is_file()]
    logs += [p for p in (cluster.state / "logs" / "ray-session").resolve().rglob("*") if p.is_file()]
    logs += [p for p in ARTIFACTS.glob("e2e-*.log")]
    assert any(p.name.startswith("job-driver-dcgan-e2e-") for p in logs), "the jobs' driver logs are not among the files searched"
    texts = [(str(p), p.read_bytes()) for p in logs] + [("job output", job.output.encode())]

    client = MlflowClient(cluster.tracking_uri)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            record = json.dumps([run.info.run_name, run.data.params, run.data.tags, list(run.data.metrics)])
            texts.append((f"run {run.info.run_id}", record.encode()))
    for version in client.search_model_versions():
        texts.append((f"model version {version.name}/{version.version}", json.dumps(version.tags).encode()))

    objects = cluster.objects()
    assert any(k.startswith("mlflow-artifacts/") for k in objects) and len(objects) > 10
    s3 = cluster.s3()
    for key in objects:
        texts.append((f"s3://{cluster.bucket}/{key}", s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read()))

    for where, data in texts:
        found += [f"{name} in {where}" for name, secret in secrets.items() if secret in data]
    assert not found, found


def _ray(cluster, *args, timeout=120, check=False) -> str:
    done = subprocess.run(["ray", "job", *args], env=cluster.env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert not check or done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def _step_lineage_and_plots(client, run, storage: str) -> None:
    """What MLflow users look for on a training run, read from the tracking server."""
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "synthetic-256-s0-32px" and len(used.dataset.digest) == 32
    assert used.dataset.digest == run.data.tags["dataset_hash"][:32]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    steps = {int(m.group(1)) for p in images if (m := re.search(r"samples[+%]step[+%](\d+)[+%]", p))}
    assert steps, f"no step-indexed sample images: {images}"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/losses.png",
                                                                                "plots/discriminator.png"}
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)


def test_a_stopped_job_leaves_a_final_checkpoint_and_a_killed_run_that_resumes(cluster, job):
    """`ray job submit --no-wait`, `ray job logs`, `ray job stop`, as the README shows: the
    driver gets SIGTERM, training stops at the next log window with a checkpoint, the run is
    KILLED; resuming from that checkpoint finishes the same MLflow run without gap or repeat."""
    from mlflow.tracking import MlflowClient

    storage, sid = f"s3://{cluster.bucket}/stopped", f"dcgan-e2e-stop-{int(time.time())}"
    argv = ["python", "-m", "pipelines.steps.train", "--config", PRESET, f"storage={storage}", "name=stopped",
            "train.iterations=100000", "train.log_every=5", "train.checkpoint_every=100000"]
    grace = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}})
    _ray(cluster, "submit", "--no-wait", "--submission-id", sid, "--working-dir", ".", "--runtime-env-json", grace,
         "--", *argv, check=True)
    deadline = time.monotonic() + 300
    while "[train] iter 10/" not in (logs := _ray(cluster, "logs", sid)):
        assert time.monotonic() < deadline and "FAILED" not in _ray(cluster, "status", sid), logs[-4000:]
        time.sleep(5)
    _ray(cluster, "stop", sid, timeout=240)
    logs = _ray(cluster, "logs", sid)
    (ARTIFACTS / "e2e-stopped-job.log").write_text(logs)
    assert "stopped" in _ray(cluster, "status", sid).lower()

    client = MlflowClient(cluster.tracking_uri)
    (run,) = client.search_runs([job.experiment_id], "tags.pipeline_step = 'train' and params.name = 'stopped'")
    assert run.info.status == "KILLED", logs[-4000:]
    checkpoint = run.data.tags["checkpoint"]
    assert checkpoint.startswith(f"{storage}/checkpoints/"), checkpoint
    key = checkpoint[len(f"s3://{cluster.bucket}/"):] + "/checkpoint.pt"
    assert key in cluster.objects(), f"no final checkpoint at {checkpoint}"
    stopped_at = max(m.step for m in client.get_metric_history(run.info.run_id, "loss_d"))
    assert stopped_at % 5 == 0 and stopped_at >= 10

    total = stopped_at + 5
    resume = ["python", "-m", "pipelines.steps.train", "--config", PRESET, f"storage={storage}", "name=stopped",
              f"train.iterations={total}", "train.log_every=5", f"train.resume_from={checkpoint}"]
    out = _ray(cluster, "submit", "--working-dir", ".", "--", *resume, timeout=JOB_TIMEOUT_S, check=True)
    (ARTIFACTS / "e2e-resumed-job.log").write_text(out)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_d")) == list(range(1, total + 1))
    assert [m.value for m in client.get_metric_history(run.info.run_id, "resumed_at_iteration")] == [stopped_at]
    _step_lineage_and_plots(client, run, storage)


def test_without_tracking_server_the_pipeline_stops_at_once_and_writes_nothing(cluster, job, tmp_path):
    subprocess.run([str(STOP), "mlflow"], env=cluster.env | {"MINI_STATE_DIR": str(cluster.state)},
                   capture_output=True, text=True, timeout=120, check=True)
    before = cluster.objects()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    # The documented command from an empty folder, on fresh storage (it would ingest there first).
    argv = [sys.executable, *job.pipeline_argv[1:]]
    argv = [a for a in argv if not a.startswith("storage=")] + [f"storage=s3://{cluster.bucket}/fresh"]
    done = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert cluster.tracking_uri in done.stderr, done.stderr
    assert "infra/local/start.sh" in done.stderr and "mlflow server" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # "In seconds": it stops before starting Ray or reading data (a real run takes minutes).
    assert "Ray instance" not in done.stdout + done.stderr
    assert elapsed < 30, f"took {elapsed:.0f}s to notice the tracking server is down"
    assert cluster.objects() == before, "the failed run wrote to the dataset or checkpoint storage"
    assert not any(workdir.iterdir()), f"the failed run left files: {list(workdir.iterdir())}"


def test_stop_ends_exactly_the_cluster_processes(cluster):
    # A bystander whose command line names every service: a pkill -f or `ray stop` would end it.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                  "ray start --head", "mlflow server", "weed mini"], start_new_session=True)
    try:
        groups = cluster.pids()
        assert groups and all(_group_alive(g) for g in groups)
        done = subprocess.run([str(STOP)], env=cluster.env | {"MINI_STATE_DIR": str(cluster.state)},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert not [g for g in groups if _group_alive(g)], "stop.sh left cluster processes running"
        assert bystander.poll() is None, "stop.sh ended a process that was not the cluster's"
        assert not list((cluster.state / "pids").glob("*.pid"))
    finally:
        bystander.kill()
        bystander.wait()
