"""A registered model, version or alias that does not exist: every command that takes a generator
(generate, evaluate, latent) exits 2 with one line naming what the registry has, before it reads
anything else. A real SQLite MLflow with a tiny generator registered twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gan.models import Generator
from pipelines.records.registry import ModelReferenceError, check_model_reference
from pipelines.steps import cli

ROOT = Path(__file__).resolve().parent.parent
NAME = "tiny-bedrooms"
BAD = {  # reference -> what the one line must say
    "models:/nonexistent@champion": ["no registered model 'nonexistent'", f"registered models: {NAME}"],
    f"models:/{NAME}/99": [f"'{NAME}' has no version 99", "versions: 1, 2", "champion -> 1"],
    f"models:/{NAME}@nosuchalias": [f"'{NAME}' has no alias 'nosuchalias'", "versions: 1, 2", "champion -> 1"],
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """(tracking URI, logged model id): NAME versions 1 and 2 of one tiny generator, champion -> 1."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.records import registry, tracking

    tmp = tmp_path_factory.mktemp("registry")
    uri = "sqlite:///" + str(tmp / "mlflow.db")
    tracking.configure(uri, "references")
    torch.manual_seed(0)
    with mlflow.start_run(experiment_id=tracking.configure(uri, "references")):
        info = registry.log_generator(Generator(resolution=32, latent_dim=16, width=8), example_batch=1)
        for _ in range(2):
            registry.register(info.model_uri, NAME, {"fid": 1.0})
    MlflowClient(uri).set_registered_model_alias(NAME, "champion", "1")
    return uri, info.model_id


def _argv(command: str, reference: str, uri: str, tmp_path: Path) -> list[str]:
    common = ["--network", reference, "--tracking-uri", uri]
    return {"generate": ["generate", *common, "--outdir", str(tmp_path / "out")],
            # a dataset that does not exist either: the reference is named first
            "evaluate": ["evaluate", *common, f"storage={tmp_path / 'store'}", f"data.dataset={tmp_path / 'nodata'}"],
            "latent": ["latent", "sheet", *common, "--out", str(tmp_path / "out")]}[command]


@pytest.mark.parametrize("reference", BAD)
@pytest.mark.parametrize("command", ["generate", "evaluate", "latent"])
def test_a_bad_reference_is_one_line_naming_what_exists(command, reference, registry, tmp_path, capfd):
    uri, _ = registry
    assert cli.main(_argv(command, reference, uri, tmp_path)) == 2
    out, err = capfd.readouterr()
    # The command's own lines: a Ray started in this process by an earlier test forwards its
    # workers' logs to the same stderr, prefixed "(" or coloured.
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.lstrip().startswith(("(", "\x1b["))]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"dcgan {command}") and reference in lines[0], lines[0]
    for fragment in BAD[reference]:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def test_good_references_pass_and_a_bare_name_asks_for_a_version(registry):
    uri, model_id = registry
    for good in (f"models:/{NAME}@champion", f"models:/{NAME}/2", f"models:/{model_id}", "/some/checkpoint"):
        check_model_reference(good, uri)
    with pytest.raises(ModelReferenceError, match=rf"name a version or an alias.*versions: 1, 2"):
        check_model_reference(f"models:/{NAME}", uri)


def test_a_missing_store_is_named_and_not_created(tmp_path):
    uri = "sqlite:///" + str(tmp_path / "nowhere" / "mlflow.db")
    with pytest.raises(ModelReferenceError, match="no model registry at .*does not exist"):
        check_model_reference(f"models:/{NAME}@champion", uri)
    assert not (tmp_path / "nowhere").exists()


def test_the_installed_command_says_it_in_one_line(registry, tmp_path):
    """A fresh process (MLflow's own logging included) prints the one line and nothing else."""
    uri, _ = registry
    done = subprocess.run([sys.executable, "-m", "pipelines.steps.cli", "generate", "--network",
                           "models:/nonexistent@champion", "--tracking-uri", uri, "--outdir", str(tmp_path / "o")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"registered models: {NAME}" in done.stderr, done.stderr
