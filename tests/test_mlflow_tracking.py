"""What MLflow users look for, against a real MLflow (SQLite store): the dataset as a run
input with its content hash, sample grids as step-indexed images, FID linked to the
logged model and shown on its registered version, system metrics, and plots."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from gan.models import Generator
from pipelines.records import lineage, registry, tracking
from pipelines.records.plots import run_histories, training_plots
from pipelines.training.reporting import log_training_plots

MANIFEST = {"content_hash": "0123456789abcdef" * 4, "count": 256, "resolution": 32, "source": "synthetic",
            "format": "dcgan-parquet-v1"}


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_dataset_images_model_metrics_and_system_metrics(uri, tmp_path):
    dataset_uri = str(tmp_path / "synthetic-256-s0-32px")
    torch.manual_seed(0)
    g = Generator(resolution=32, latent_dim=8, width=8)
    with tracking.run(uri, "lineage", run_name="parent") as parent:
        with tracking.run(uri, "lineage", run_name="train", parent_run_id=parent.info.run_id,
                          system_metrics=True) as child:
            lineage.log_dataset(MANIFEST, dataset_uri, "training")
            client = MlflowClient(uri)
            for step in (5, 10):
                client.log_image(child.info.run_id, np.full((8, 8, 3), step, np.uint8), key="samples", step=step,
                                 synchronous=True)
            time.sleep(1.0)  # a few samples of the system metrics
        version, promoted, _ = registry.register_and_promote(
            g, "dcgan-test", 12.5, "fid_32", MANIFEST["content_hash"], {"resolution": 32},
            metrics={"kid_32": 0.01, "audit_exact_collisions_32": 0.0},
            dataset=lineage.mlflow_dataset(MANIFEST, dataset_uri), step=10)

    run = client.get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id  # start_run(parent_run_id=...)
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "synthetic-256-s0-32px"
    assert used.dataset.digest == MANIFEST["content_hash"][:32]
    assert '"content_hash": "' + MANIFEST["content_hash"] in used.dataset.profile
    assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "training"

    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    steps = sorted({int(m.group(1)) for p in images if (m := re.search(r"samples[+%]step[+%](\d+)[+%]", p))})
    assert steps == [5, 10], images

    system = [k for k in run.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system, system

    assert promoted
    linked = registry.version_metrics(client.get_model_version("dcgan-test", version.version))
    assert linked["fid_32"] == 12.5 and linked["kid_32"] == 0.01
    model = client.get_logged_model(registry.version_model_id(version))
    metric = next(m for m in model.metrics if m.key == "fid_32")
    assert metric.dataset_digest == MANIFEST["content_hash"][:32] and metric.step == 10
    assert float(client.get_model_version("dcgan-test", version.version).tags["fid"]) == 12.5  # tags kept
    assert client.get_run(parent.info.run_id).data.metrics["fid_32"] == 12.5


def test_a_node_monitor_logs_under_its_node_id_and_says_once_when_its_gpus_cannot_be_read(uri, caplog):
    """What one training node's monitor does (pipelines.records.system_metrics): its
    samples reach the run under system/<node id>/; asked for GPUs that NVML cannot read
    (here: no nvidia-ml-py, or no GPU), it says so in one line, with the reason."""
    from pipelines.records.system_metrics import node_monitor, reads_gpus

    with tracking.run(uri, "nodes", run_name="node") as active, caplog.at_level(logging.INFO, "dcgan.train"):
        with node_monitor(uri, active.info.run_id, "node-x", 0.2, gpus_expected=True, resume=False) as monitor:
            time.sleep(1.0)
    metrics = MlflowClient(uri).get_run(active.info.run_id).data.metrics
    assert "system/node-x/cpu_utilization_percentage" in metrics, sorted(metrics)
    assert not [k for k in metrics if k.startswith("system/") and not k.startswith("system/node-x/")]
    said = [r.getMessage() for r in caplog.records if "GPU system metrics of node node-x cannot be read" in r.getMessage()]
    if reads_gpus(monitor):
        assert not said and any("/gpu_0_" in k for k in metrics)
    else:
        assert len(said) == 1 and ("nvidia-ml-py" in said[0] or "NVML" in said[0]), said


def test_training_plots_from_a_run(uri, tmp_path):
    with tracking.run(uri, "plots", run_name="p") as active:
        client = MlflowClient(uri)
        for i in range(1, 41):
            client.log_metric(active.info.run_id, "loss_d", 1.0 / i, step=i)
            client.log_metric(active.info.run_id, "loss_g", 2.0 - 1.0 / i, step=i)
            client.log_metric(active.info.run_id, "d_real", 0.7, step=i)
            client.log_metric(active.info.run_id, "d_fake", 0.3, step=i)
        for i in (20, 40):
            client.log_metric(active.info.run_id, "fid_32", 100.0 / i, step=i)
        log_training_plots(client, active.info.run_id)
    plots = {a.path for a in client.list_artifacts(active.info.run_id, "plots")}
    assert plots == {"plots/losses.png", "plots/discriminator.png", "plots/fid.png"}
    # nothing measured, nothing drawn
    assert training_plots({"loss_d": []}, tmp_path / "none") == []
    assert set(run_histories(client, active.info.run_id)) == {"loss_d", "loss_g", "d_real", "d_fake", "fid_32"}
