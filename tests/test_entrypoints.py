"""Every entry point fails the same way on bad input: before Ray starts or anything is
written, with a message that names what is wrong, and exit status 2 (no traceback).

Each case runs the real command in a fresh process, in an empty folder, with storage
pointed at a folder that must still not exist afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9"  # discard: nothing listens there

STEPS = {
    "run": ["-m", "pipelines.steps.run", "--config", "demo"],
    "train": ["-m", "pipelines.steps.train", "--config", "demo"],
    "ingest": ["-m", "pipelines.steps.ingest"],
    "sweep": ["-m", "tune.sweep", "--config", "sweep-demo"],
}
# (name, argv after `python`, what the message must name)
CASES = [
    # a missing path
    *[(f"{step}-missing-source", argv + [("pipeline." if step == "sweep" else "") + "data.source=/nonexistent/lsun"],
       "/nonexistent/lsun") for step, argv in STEPS.items()],
    ("evaluate-missing-checkpoint", ["-m", "pipelines.steps.evaluate", "--network", "/nonexistent/checkpoint"],
     "/nonexistent/checkpoint"),
    ("generate-missing-model", ["-m", "pipelines.steps.generate", "--network", "/nonexistent/ckpt", "--out", "x.png"],
     "/nonexistent/ckpt"),
    ("fid-missing-folder", ["-m", "pipelines.steps.fid", "/nonexistent/a", "/nonexistent/b"], "/nonexistent/a"),
    ("latent-missing-model", ["-m", "pipelines.steps.latent", "sheet", "--network", "/nonexistent/ckpt"],
     "/nonexistent/ckpt"),
    # a wrong key
    *[(f"{step}-wrong-key", argv + [("pipeline." if step == "sweep" else "") + "train.lr_gee=1e-4"], "train.lr_gee")
      for step, argv in STEPS.items()],
    ("evaluate-wrong-key", ["-m", "pipelines.steps.evaluate", "--network", "/nonexistent/checkpoint", "eval.fid_sample=5"],
     "eval.fid_sample"),
    # an unreachable s3:// prefix
    *[(f"{step}-unreachable-s3", argv + [("pipeline." if step == "sweep" else "") + "data.source=s3://bucket/lsun"],
       "s3://bucket/lsun") for step, argv in STEPS.items()],
    ("evaluate-unreachable-s3", ["-m", "pipelines.steps.evaluate", "--network", "s3://bucket/checkpoint"],
     "s3://bucket/checkpoint"),
    ("generate-unreachable-s3", ["-m", "pipelines.steps.generate", "--network", "s3://bucket/ckpt", "--out", "x.png"],
     "s3://bucket/ckpt"),
]


def _run(case, tmp_path: Path):
    name, argv, named = case
    workdir = tmp_path / name
    workdir.mkdir()
    storage = workdir / "store"
    prefix = "pipeline." if argv[1] == "tune.sweep" else ""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    env.update(AWS_ENDPOINT_URL=CLOSED_PORT_ENDPOINT, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               PYTHONPATH=str(ROOT))
    takes_overrides = argv[1] in ("pipelines.steps.run", "pipelines.steps.train", "pipelines.steps.ingest",
                                  "pipelines.steps.evaluate", "tune.sweep")
    command = [sys.executable, *argv] + ([f"{prefix}storage={storage}"] if takes_overrides else [])
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    return name, named, proc, storage, workdir


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("entrypoints")
    with ThreadPoolExecutor(2) as pool:  # two at a time: the machine has two cores
        return list(pool.map(lambda c: _run(c, tmp), CASES))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_bad_input_fails_before_any_work(outcomes, index):
    name, named, proc, storage, workdir = outcomes[index]
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert named in proc.stderr, f"{name}: the message does not name {named!r}: {proc.stderr}"
    assert not storage.exists(), f"{name}: created {storage}"
    leftovers = sorted(p.name for p in workdir.iterdir())
    assert leftovers == [], f"{name}: wrote {leftovers} (runs/, an MLflow database...) before failing"
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_the_issue_example_fails_with_one_line(outcomes):
    """`python -m pipelines.steps.run --config demo data.source=/nonexistent/lsun`: one line."""
    _, _, proc, _, _ = outcomes[0]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("dcgan run: ") and "/nonexistent/lsun" in lines[0], proc.stderr
