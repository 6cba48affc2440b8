"""The README's command lines are accounted for, one by one.

Every line of the README's indented command blocks is in exactly one table below: run
as printed by a named test (whose file holds the line verbatim), runnable only where this
machine cannot go (a cluster, a GPU, LSUN's LMDB, hours), or not yet run as printed (the
open part of the issue that asked for this contract, listed so that it stays visible).
A command line added to the README without an entry fails here, and so does an entry
whose line left the README. The `config` lines, which take a second, run here as printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMMANDS = ("python", ".venv/", "dcgan ", "ray ", "infra/", ". ", "docker ", "kubectl ", "export ", "bash ", "M=")

RUN_AS_PRINTED = {  # line -> the test file that runs it as printed (and holds it verbatim)
    ".venv/bin/python -m tune.sweep --config sweep-demo": "tests/test_sweep.py",
    ".venv/bin/python -m tune.sweep --resume runs/sweeps/<sweep run>      # after an interruption": "tests/test_sweep.py",
    "dcgan config show --config demo train.lr_g=1e-3 > my.yaml   # the resolved config; --config my.yaml loads it back":
        "tests/test_readme_commands.py",
    "dcgan config keys train.                                     # every key: type, default, description":
        "tests/test_readme_commands.py",
    "dcgan config presets": "tests/test_readme_commands.py",
    "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[test]' && .venv/bin/python -m pytest":
        ".ci/run",
}
NOT_ON_ONE_MACHINE = {  # line prefix -> why no test can run it here as printed
    ".venv/bin/python -m pipelines.steps.run --config demo data.source=/data/lsun": "needs LSUN's LMDB export",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m pipelines.steps.run --config lsun":
        "the full LSUN preset on GPU nodes",
    "ray job submit --no-wait --submission-id bedrooms-1": "the full LSUN preset on GPU nodes",
    "ray job logs -f bedrooms-1": "follows the LSUN job above",
    "ray job status bedrooms-1": "the LSUN job above",
    "ray job stop bedrooms-1": "the LSUN job above",
    "ray job list": "lists the cluster's jobs; job control runs in tests/test_e2e_cluster.py on the smoke preset",
    "ray job submit --working-dir . -- python -m pipelines.steps.train --config lsun-bedroom-64 train.resume_from":
        "an S3 checkpoint of the LSUN run",
    "docker build": "Docker and the Ray GPU base image",
    "kubectl ": "a Kubernetes cluster",
    "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=": "a Kubernetes cluster",
    "dcgan generate --network models:/dcgan-synthetic-4096-s0-32px/3 -n 50000 --batch 500 --device cuda": "a GPU",
    "bash benchmarks/gpu_check.sh": "a GPU machine",
    "python benchmarks/gpu.py": "a GPU machine",
    "python -m pytest tests/test_gpu.py -m gpu": "a GPU machine",
    ".venv/bin/python benchmarks/": "a benchmark (minutes to an hour); each one's --tiny runs in tests/test_benchmarks.py",
    "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && .venv/bin/python -m pipelines.steps.run":
        "the demo, 10-15 minutes; tests/test_package.py runs it (smaller) from the wheel",
    ".venv/bin/python -m tune.sweep --config sweep-demo num_samples=8": "8 trials of 200 iterations, ~15 minutes",
    "dcgan run --config demo train.iterations=2000": "a demo run, 10-15 minutes",
    "python docs/train_latent_demo.py": "trains the latent-space demo model, ~10 minutes",
}
NOT_YET_RUN_AS_PRINTED = {  # line prefix -> what is missing (issue 23, item 8: open)
    ".venv/bin/pip install -q -c constraints.txt -e '.[test]' && . .venv/bin/activate":
        "the mini cluster block: tests/test_e2e_cluster.py runs start.sh and reads the submit line, not the block",
    "infra/local/start.sh": "as above",
    ". runs/mini-cluster/env.sh": "as above",
    "ray job submit --working-dir . -- python -m pipelines.steps.run --config smoke": "read from here by test_e2e_cluster",
    "dcgan generate --network models:/dcgan-synthetic-256-s0-32px@champion": "the model name is checked, the line not run",
    "infra/local/stop.sh": "as above",
    "dcgan generate --network models:/dcgan-synthetic-4096-s0-32px@champion": "needs the demo's model",
    "dcgan generate --network runs/checkpoints/<run>/<checkpoint>": "needs a demo checkpoint",
    "dcgan latent ": "needs the latent demo's checkpoint",
    "M=runs/latent-demo64/checkpoint": "the latent demo block",
}


def readme_command_lines() -> list[str]:
    """Lines of the README's indented (4-space) blocks that are commands, not output."""
    lines, out, previous_blank, in_block = README.read_text().splitlines(), [], True, False
    for line in lines:
        if line.startswith("    ") and line.strip() and (previous_blank or in_block):
            in_block = True
            text = line.strip()
            if text.startswith(COMMANDS):
                out.append(text)
        elif line.strip():
            in_block = False
        previous_blank = not line.strip()
    return out


def _entry(line: str) -> str | None:
    if line in RUN_AS_PRINTED:
        return "run"
    for table, kind in ((NOT_ON_ONE_MACHINE, "elsewhere"), (NOT_YET_RUN_AS_PRINTED, "not yet")):
        if any(line.startswith(prefix) for prefix in table):
            return kind
    return None


def test_every_readme_command_line_is_accounted_for_and_every_entry_is_in_the_readme():
    lines = readme_command_lines()
    assert len(lines) > 30, f"the README's command blocks were not found ({len(lines)} lines)"
    missing = [line for line in lines if _entry(line) is None]
    assert not missing, f"README command lines with no test and no reason (add one to {__file__}): {missing}"
    for table in (NOT_ON_ONE_MACHINE, NOT_YET_RUN_AS_PRINTED):
        stale = [p for p in table if not any(line.startswith(p) for line in lines)]
        assert not stale, f"entries whose line left the README: {stale}"
    for line, test in RUN_AS_PRINTED.items():
        assert line in lines, f"no longer in the README: {line}"
        assert line.split("  #")[0].strip() in (ROOT / test).read_text(), f"{test} does not hold (so run) {line!r}"


def test_the_config_lines_run_as_printed(tmp_path):
    """`dcgan config ...` as the README prints it, in a shell, from an empty folder."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = {}
    for line in ("dcgan config show --config demo train.lr_g=1e-3 > my.yaml   # the resolved config; --config my.yaml "
                 "loads it back",
                 "dcgan config keys train.                                     # every key: type, default, description",
                 "dcgan config presets"):
        assert line in readme_command_lines(), line
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
        outputs[line.split()[2]] = done.stdout
    from pipelines.config import load_config

    assert load_config(str(tmp_path / "my.yaml")).train.lr_g == pytest.approx(1e-3)  # it loads back
    assert "train.lr_g" in outputs["keys"] and "model." not in outputs["keys"]
    assert {"demo", "smoke", "paper", "lsun-bedroom-64"} <= set(outputs["presets"].split())
