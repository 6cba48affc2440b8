"""The project as an installed package: a wheel, installed (not editable) into a fresh venv
outside the repository, runs `dcgan run --config demo` from an unrelated folder.

Offline and without downloads: the wheel is built with --no-build-isolation (setuptools
from this venv, not fetched into an isolated one), installed with --no-deps, and the fresh
venv sees the dependencies through a .pth file naming this venv's site-packages. A path
line in a .pth only adds that folder to sys.path (its own .pth files are not run), so this
venv's editable install of the project stays invisible: what runs is the wheel's copy,
presets (package data, importlib.resources) included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "gan", "pipelines", "tune"]  # what the wheel is built from
# The demo preset made small: a minute of work on two cores (ingest, train, FID, audit, register).
SMALL = ["data.synthetic_images=256", "train.iterations=20", "train.batch_size=32", "train.log_every=5",
         "train.checkpoint_every=10", "eval.fid_samples=32", "eval.reference_images=64", "eval.batch_size=16",
         "eval.kid_subsets=10", "eval.kid_subset_size=16", "eval.audit_samples=32",
         "eval.audit_autoencoder_steps=50", "scaling.cpus_per_worker=1"]


def _run(argv, cwd, env=None, timeout=600):
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv[:4]}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv (outside the repository) with the project's wheel installed; its bin folder."""
    import importlib.metadata
    import importlib.util

    # Its version from the metadata: importing setuptools here would clash with a distutils
    # that an earlier test's import already loaded from the standard library.
    version = importlib.metadata.version("setuptools")
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"building the wheel offline needs setuptools >= 70.1 (or the wheel package) in this venv; "
                    f"it has setuptools {version}: pip install -c constraints.txt setuptools")
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (ROOT / name).is_dir() else {}))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(source)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("dcgan_ray-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipelines/presets/demo.yaml" in names and "pipelines/steps/cli.py" in names

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "-c", str(ROOT / "constraints.txt"), str(wheel)], cwd=tmp)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the wheel's own
    return venv / "bin"


def _env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_", "AWS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HOME": str(work), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_demo_from_any_folder(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _env(work)
    where = _run([str(installed / "python"), "-c", "import pipelines, gan; print(pipelines.__file__, gan.__file__)"],
                 cwd=work, env=env).stdout
    assert str(ROOT) not in where and str(installed.parent) in where, where
    assert _run([str(installed / "dcgan"), "--version"], cwd=work, env=env).stdout.startswith("dcgan 0.1.0 ")
    assert "demo" in _run([str(installed / "dcgan"), "config", "presets"], cwd=work, env=env).stdout.split()

    done = _run([str(installed / "dcgan"), "run", "--config", "demo", *SMALL], cwd=work, env=env, timeout=900)
    assert "Done. Where to look" in done.stdout and "models:/dcgan-synthetic-256-s0-32px/1" in done.stdout, done.stdout
    assert (work / "runs" / "mlflow.db").is_file()  # the embedded defaults, in the folder it ran from
