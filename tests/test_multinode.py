"""The pipeline on a multi-node Ray cluster (tests/multinode.py), with whole nodes and
services lost mid-run: real processes, killed by PID (their process groups).

One cluster for the module: a head, worker nodes node_a and node_b, SeaweedFS S3 and an
MLflow server. Training runs as a user's driver (`python -m pipelines.steps.train` with
RAY_ADDRESS), the whole pipeline through `ray job submit`. Each failure is injected when
the run's first checkpoint is in S3, so it lands mid-run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.records.tracking import temporary_environ as environ
from tests.multinode import ROOT, start_multinode, wait_until

pytestmark = pytest.mark.slow

DATASET = "datasets/synthetic-32px"
INGEST_IMAGES = 1200
# Two workers, one a worker node (`trainer: 1` on each), the paper's order rule on: a
# resumed run must end with the weights of an uninterrupted one.
TWO_NODES = ["scaling.num_workers=2", "scaling.placement_strategy=SPREAD", "scaling.worker_resources.trainer=1",
             "train.deterministic=true", "data.shuffle=true"]
ITERATIONS, EVERY = 300, 50  # long enough that a failure lands well before the end
RUN = [f"train.iterations={ITERATIONS}", f"train.checkpoint_every={EVERY}", "train.log_every=5", "train.batch_size=16",
       "train.sample_every=100000", "scaling.max_failures=2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.datasets import synthetic_dataset

    tmp = tmp_path_factory.mktemp("multinode")
    cluster = start_multinode(tmp)
    s3_env = {k: v for k, v in cluster.env.items() if k.startswith(("AWS_", "MLFLOW_S3"))}
    try:
        with environ(s3_env):  # this process reads S3 like the nodes do
            synthetic_dataset(f"s3://{cluster.bucket}/{DATASET}", count=128, resolution=32)
            yield cluster
    finally:
        cluster.stop()


def _train_args(cluster, name: str, *extra: str) -> list[str]:
    return ["--config", "smoke", f"name={name}", f"storage=s3://{cluster.bucket}/{name}",
            f"data.dataset=s3://{cluster.bucket}/{DATASET}", *RUN, *extra]


def _first_checkpoint(cluster, name: str, proc, timeout: float = 400) -> str:
    """Wait for the run's first checkpoint in S3 (the failure goes in after it)."""
    def found():
        if proc.poll() is not None:
            raise AssertionError(f"{name} ended before its first checkpoint:\n{cluster.log(name + '.log')[-4000:]}")
        return [k for k in cluster.s3_keys(f"{name}/checkpoints/") if k.endswith("/checkpoint.pt")]
    return wait_until(found, timeout, f"{name}: first checkpoint", every=0.2)[0]


def _finish(cluster, name: str, proc, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        raise
    return cluster.log(name + ".log")


def _train_run(cluster, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name("dcgan-lsun-bedroom")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.ray_run_name LIKE '{name}%'")
    return client, run


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _state(uri: str) -> dict:
    """A checkpoint's state; a restarted SeaweedFS answers GetObject with an internal error
    for a few seconds while its volume server comes back, so retry that for a minute."""
    from pipelines.training.checkpoints import load_state

    def read():
        try:
            return load_state(uri)
        except OSError as e:
            if "INTERNAL_FAILURE" not in str(e) and "try again" not in str(e):
                raise
            return None

    return wait_until(read, 60, f"reading {uri} from the restarted S3 store", every=1.0)


def _every_step_once(client, run, iterations: int) -> None:
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g"):
        assert _steps(client, run.info.run_id, key) == list(range(1, iterations + 1)), f"{key}: gap or duplicate"


def _same_weights_as_uninterrupted(uninterrupted, run) -> None:
    _, ref_run, _ = uninterrupted
    a, b = _state(ref_run.data.tags["checkpoint"]), _state(run.data.tags["checkpoint"])
    assert a["iteration"] == b["iteration"] == ITERATIONS and a["data_position"] == b["data_position"]
    for net in ("generator", "discriminator"):
        for key, value in a[net].items():
            if value.is_floating_point():
                assert torch.allclose(value, b[net][key], rtol=1e-6, atol=0), f"{net}.{key} differs after the loss"
            else:
                assert torch.equal(value, b[net][key]), f"{net}.{key} differs after the loss"


# ----------------------------------------------------------------------------- the whole pipeline, submitted


def test_the_pipeline_submitted_to_the_cluster_trains_on_both_worker_nodes(cluster):
    """...and each of the two nodes logs its system metrics into the training run, under its
    Ray node id (system/<node id>/...), beside the driver's (system/..., the head's)."""
    before = set(cluster.train_workers())
    argv = ["python", "-m", "pipelines.steps.run", "--config", "smoke", "name=submitted",
            f"storage=s3://{cluster.bucket}/pipeline", "train.iterations=10", "train.checkpoint_every=5",
            "tracking.system_metrics_interval_s=1", *TWO_NODES[:3], "eval.audit_autoencoder_steps=50"]
    done = subprocess.run(["ray", "job", "submit", "--submission-id", "multinode-pipeline", "--", *argv],
                          env=cluster.env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    (cluster.tmp / "pipeline-job.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "succeeded" in done.stdout + done.stderr
    workers = set(cluster.train_workers()) - before
    nodes = {node for node, _ in workers}
    assert nodes == {cluster.node_id("node_a"), cluster.node_id("node_b")}, f"training ran on {nodes}"
    client, run = _train_run(cluster, "submitted")
    system = [k.split("/") for k in run.data.metrics if k.startswith("system/")]
    assert {k[1] for k in system if len(k) == 3} == nodes, sorted(run.data.metrics)
    for node in nodes:
        assert f"system/{node}/cpu_utilization_percentage" in run.data.metrics
        assert f"system_node.{node}" in run.data.tags
    assert "system/cpu_utilization_percentage" in run.data.metrics  # the driver's machine, as before


# ----------------------------------------------------------------------------- services


@pytest.fixture(scope="module")
def uninterrupted(cluster):
    """A run whose nodes all stay; its MLflow server is killed and restarted mid-run."""
    name = "uninterrupted"
    proc = cluster.driver("pipelines.steps.train", _train_args(cluster, name, *TWO_NODES), name + ".log")
    _first_checkpoint(cluster, name, proc)
    cluster.stop_mlflow()
    # Down until training has met the outage (a flush that failed and kept its points),
    # however long the machine takes to get there: then back, before the run ends.
    wait_until(lambda: "metric points kept" in cluster.log(name + ".log") or proc.poll() is not None, 300,
               f"{name}: training meets the MLflow outage", every=0.5)
    cluster.start_mlflow()
    log = _finish(cluster, name, proc)
    assert proc.returncode == 0, log[-6000:]
    client, run = _train_run(cluster, name)
    return client, run, log


def test_mlflow_restarted_mid_training_every_step_arrives_once(uninterrupted):
    client, run, log = uninterrupted
    assert "away for" in log and "metric points kept" in log, "the MLflow outage did not overlap training"
    assert run.info.status == "FINISHED"
    _every_step_once(client, run, ITERATIONS)


def test_s3_down_at_a_checkpoint_fails_clearly_and_the_previous_checkpoint_resumes(cluster):
    name = "s3-down"
    common = ["train.storage_timeout_s=6", "scaling.max_failures=0"]
    proc = cluster.driver("pipelines.steps.train", _train_args(cluster, name, *common, "train.iterations=100000",
                                                               "train.checkpoint_every=10"), name + ".log")
    _first_checkpoint(cluster, name, proc)
    cluster.stop_s3()
    try:
        log = _finish(cluster, name, proc, timeout=300)
    finally:
        cluster.start_s3()
    assert proc.returncode != 0, log[-4000:]
    assert "checkpoint storage does not answer" in log and cluster.s3.endpoint in log, log[-4000:]
    assert "Traceback" not in log.split("dcgan train:")[-1]
    # No half checkpoint: every checkpoint folder in S3 holds a whole checkpoint.pt.
    keys = cluster.s3_keys(f"{name}/checkpoints/")
    folders = {k.rsplit("/", 1)[0] for k in keys if k.rsplit("/", 2)[-2].startswith("checkpoint_")}
    for folder in folders:
        assert f"{folder}/checkpoint.pt" in keys, f"{folder} holds no checkpoint.pt"
        assert _state(f"s3://{cluster.bucket}/{folder}")["iteration"] % 10 == 0
    last = log.split("with train.resume_from=")[-1].split()[0]
    done = _state(last)["iteration"]
    assert last.startswith(f"s3://{cluster.bucket}/{name}/checkpoints/"), last
    again = cluster.driver("pipelines.steps.train", _train_args(cluster, name, *common, f"train.iterations={done + 10}",
                                                                "train.checkpoint_every=10", f"train.resume_from={last}"),
                           name + "-again.log")
    log = _finish(cluster, name + "-again", again)
    assert again.returncode == 0, log[-4000:]
    assert f"resumed at iteration {done}" in log


# ----------------------------------------------------------------------------- nodes


def test_a_node_lost_in_training_resumes_from_s3_and_ends_with_the_uninterrupted_weights(cluster, uninterrupted):
    name = "node-lost"
    proc = cluster.driver("pipelines.steps.train", _train_args(cluster, name, *TWO_NODES), name + ".log")
    _first_checkpoint(cluster, name, proc)
    on_b = cluster.node_id("node_b")
    killed = cluster.lose_node("node_b")
    assert killed, "node_b held no Ray worker"
    cluster.add_node("node_c")
    log = _finish(cluster, name, proc)
    assert proc.returncode == 0, log[-6000:]

    client, run = _train_run(cluster, name)
    _every_step_once(client, run, ITERATIONS)
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_at_iteration")]
    assert len(resumed) == 1 and resumed[0] % EVERY == 0 and 0 < resumed[0] < ITERATIONS, resumed
    nodes = {node for node, _ in cluster.train_workers()}
    assert {on_b, cluster.node_id("node_c")} <= nodes, "the run did not train on node_b, then on node_c"

    _same_weights_as_uninterrupted(uninterrupted, run)


def _expected_content_hash(files: list[Path], resolution: int) -> tuple[str, int]:
    from pipelines.dataset.decode import UnreadableImage, decode_square
    from pipelines.dataset.format import content_hash, pixel_sha256

    hashes = set()
    for f in files:
        try:
            hashes.add(pixel_sha256(decode_square(f.read_bytes(), resolution)))
        except UnreadableImage:
            pass
    return content_hash(hashes), len(hashes)


def test_a_node_lost_in_ingest_never_leaves_a_half_dataset(cluster, lsun_files, tmp_path):
    from pipelines.cluster import storage
    from pipelines.dataset.format import read_manifest

    folder = tmp_path / "photos"
    folder.mkdir()
    for f in lsun_files[:INGEST_IMAGES]:
        shutil.copy(f, folder / f.name)
    expected, kept = _expected_content_hash(sorted(folder.iterdir()), 32)
    out = f"s3://{cluster.bucket}/datasets/photos-killed"
    args = ["--source", str(folder), "--out", out, "--resolution", "32", "--shard-mb", "1"]

    proc = cluster.driver("pipelines.steps.ingest", args, "ingest.log")
    wait_until(lambda: proc.poll() is not None or cluster.s3_keys("datasets/photos-killed/"), 300,
               "ingest writing its first shard", every=0.2)
    victim = "node_a" if "node_a" in cluster.nodes else "node_c"
    cluster.lose_node(victim)
    assert proc.poll() is None and not storage.exists(storage.join(out, "manifest.json")), \
        "the ingest was over before the node was lost"
    log = _finish(cluster, "ingest", proc)
    cluster.add_node("node_d")
    if proc.returncode != 0:  # a clear failure, nothing taken for finished, and a re-run completes
        assert "Traceback" not in log.split("ingesting")[-1][-3000:] or "Run ingest again" in log, log[-4000:]
        assert not storage.exists(storage.join(out, "manifest.json")), "a failed ingest left a manifest"
        again = cluster.driver("pipelines.steps.ingest", args, "ingest-again.log")
        log = _finish(cluster, "ingest-again", again)
        assert again.returncode == 0, log[-4000:]
    manifest = read_manifest(out)
    assert manifest["content_hash"] == expected and manifest["count"] == kept
    assert manifest["count"] + manifest["duplicates"] + len(manifest["skipped"]) == INGEST_IMAGES


def test_a_local_folder_that_a_node_does_not_see_is_refused_in_seconds(cluster, tmp_path):
    """A node without the driver's disk (its own mount namespace): local storage is refused
    before anything is trained, naming the key and the node; a folder all nodes see passes."""
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        why = f"a node with its own mount namespace needs `unshare --mount` (root): {probe.stderr.strip()}"
        if os.environ.get("CI_REQUIRE_NAMESPACES") == "1":
            pytest.fail(f"CI_REQUIRE_NAMESPACES=1: {why}")
        pytest.skip(why)
    private, shared = tmp_path / "private", tmp_path / "shared"
    private.mkdir()
    cluster.add_node("node_private", cpus=1, hide=private)
    try:
        name = "private-storage"
        proc = cluster.driver("pipelines.steps.train", ["--config", "smoke", f"name={name}", f"storage={private}",
                                                        f"data.dataset=s3://{cluster.bucket}/{DATASET}"], name + ".log")
        log = _finish(cluster, name, proc, timeout=180)
        assert proc.returncode == 2, log[-4000:]
        private_id = cluster.node_id("node_private")[:8]
        # only that node: named by address (Ray's, this machine's) and ID, as `ray status` lists them
        assert re.search(rf"storage={re.escape(str(private))} is not seen by the node\(s\) at \S+ \(node {private_id}\) \(of ", log), \
            log[-4000:]
        assert "Traceback" not in log
        assert "data.dataset=" not in log.split("local folders on a Ray cluster")[1]  # an s3:// URI needs no check
        assert not list(private.glob(".dcgan-shared-check-*")), "the marker file stays behind"
        assert not [k for k in cluster.s3_keys("") if name in k] and not (private / "checkpoints" / name).exists()

        check = ("import sys; from pipelines.config import load_config; from pipelines.cluster.connect import init_ray;"
                 "init_ray(load_config('smoke', sys.argv[1:])); print('every node sees it')")
        out = subprocess.run([sys.executable, "-c", check, f"storage={shared}", f"data.dataset={shared}/dataset"],
                             env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0 and "every node sees it" in out.stdout, out.stderr[-4000:]
    finally:
        cluster.lose_node("node_private")  # gone before the next test trains on `trainer` nodes


# ----------------------------------------------------------------------------- a named job: driver, then head, lost


def _checkpoint_iterations(cluster, name: str) -> list[int]:
    keys = [k for k in cluster.s3_keys(f"{name}/checkpoints/") if k.endswith("/checkpoint.pt")]
    return sorted(_state(f"s3://{cluster.bucket}/{k.rsplit('/', 1)[0]}")["iteration"] for k in keys)


def _job_drivers(name: str) -> list[int]:
    """PIDs of the Python driver of the named job (not the `ray job submit` client, nor the
    shell the job supervisor runs it in)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except (FileNotFoundError, ProcessLookupError):
            continue
        if argv[1:3] == [b"-m", b"pipelines.steps.train"] and f"train.run_name={name}".encode() in argv:
            pids.append(int(proc.name))
    return pids


def test_a_named_job_continues_when_submitted_again_after_its_driver_then_its_head_node_is_lost(cluster, uninterrupted):
    """`ray job submit` of a named training run; its driver SIGKILLed (the head kept), the same
    command submitted again; later the head node lost, the head started again, the same command
    submitted a third time. Nothing else is done by hand: the run ends at its last iteration
    with every metric step once in one MLflow run and the weights of the uninterrupted run."""
    name = "named-job"
    command = ["ray", "job", "submit", "--", "python", "-m", "pipelines.steps.train",
               *_train_args(cluster, name, *TWO_NODES, f"train.run_name={name}")]

    def submit(attempt: int) -> subprocess.Popen:
        out = open(cluster.tmp / f"{name}-{attempt}.log", "wb")
        return subprocess.Popen(command, env=cluster.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)

    first = submit(1)
    _first_checkpoint(cluster, name, first)
    (driver,) = wait_until(lambda: _job_drivers(name), 30, "the job's driver process")
    os.kill(driver, 9)  # the driver alone: the head and the worker nodes stay
    first.wait(timeout=120)
    assert first.returncode != 0, cluster.log(f"{name}-1.log")[-4000:]
    done_before = max(_checkpoint_iterations(cluster, name))
    assert done_before < ITERATIONS, "the first job was over before its driver was lost"

    second = submit(2)
    wait_until(lambda: second.poll() is None and [i for i in _checkpoint_iterations(cluster, name) if i > done_before],
               400, f"{name}: a checkpoint after the relaunch", every=0.5)
    log = cluster.log(f"{name}-2.log")
    assert f"continuing run '{name}'" in log and f"resumed at iteration {done_before}" in log, log[-4000:]
    nodes = cluster.lose_head()
    second.wait(timeout=120)
    assert max(_checkpoint_iterations(cluster, name)) < ITERATIONS, "the second job was over before the head was lost"
    cluster.restart_head(nodes)

    third = submit(3)
    log = _finish(cluster, f"{name}-3", third, timeout=900)
    assert third.returncode == 0 and "succeeded" in log, log[-6000:]
    assert f"continuing run '{name}'" in log and "resumed at iteration" in log, log[-4000:]

    client, run = _train_run(cluster, name)
    _every_step_once(client, run, ITERATIONS)
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_at_iteration")]
    assert len(resumed) == 2 and resumed[0] == done_before and resumed[0] < resumed[1] < ITERATIONS, resumed
    _same_weights_as_uninterrupted(uninterrupted, run)


# ----------------------------------------------------------------------------- last: MLflow gone for good


def test_mlflow_away_past_the_deadline_stops_after_a_checkpoint_naming_the_uri(cluster):
    name = "outage"
    proc = cluster.driver("pipelines.steps.train", _train_args(cluster, name, "tracking.outage_timeout_s=4",
                                                               "train.checkpoint_every=10", "train.iterations=100000"),
                          name + ".log")
    _first_checkpoint(cluster, name, proc)
    cluster.stop_mlflow()  # for good: this is the module's last test
    log = _finish(cluster, name, proc, timeout=300)
    assert proc.returncode != 0, log[-4000:]
    assert f"MLflow tracking server {cluster.tracking_uri} did not answer" in log, log[-4000:]
    ckpt = log.split("continue with train.resume_from=")[1].split()[0]
    state = _state(ckpt)
    assert 10 <= state["iteration"] < 100000 and state["pending_metrics"], "the final checkpoint keeps the metrics"
