"""Every benchmark runs: its ``--tiny`` mode, as a user runs it, prints its JSON line.

Benchmarks are never timed tests (DESIGN.md); this only keeps them from rotting (an
import of a moved module, a renamed function). Each benchmark runs as a subprocess
from the repository root (``python benchmarks/X.py --tiny``), all at once from the
first test that needs one (those that start a Ray cluster 15 s apart): most of a tiny
run is process and Ray start-up, which overlaps well on 2 cores. A file in benchmarks/
that is neither tested here, tested elsewhere nor listed as a helper fails
:func:`test_every_benchmark_is_tested`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LSUN_ENV, find_lsun_sample

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIR = ROOT / "benchmarks"
TIMEOUT_S = 480  # one tiny run; the longest (scale.py, scaling.py) took ~250 s with all running at load 16-20


@dataclass(frozen=True)
class Case:
    keys: tuple[str, ...]  # in the last line's JSON object
    lsun: bool = False  # reads the LSUN photos (tests/conftest.py: skips without them)
    ray: bool = False  # starts a local Ray cluster: these start RAY_STAGGER_S apart (ray.init fails when
    # its raylet takes over 30 s to register, which several starting at once on 2 busy cores can cause)


CASES = {  # the Ray ones start in this order: the longest first
    "scale.py": Case(("sizes", "stages"), ray=True),
    "scaling.py": Case(("plain_img_s", "ray1_img_s", "ray2_img_s", "ray1_vs_plain", "ray2_vs_ray1"), ray=True),
    "ingest.py": Case(("ingest_img_s", "limit_img_s", "ratio", "feed_img_s", "step_img_s", "feed_ratio",
                       "marginal_ratio", "stored"), lsun=True, ray=True),
    "train_step.py": Case(("project_img_s", "plain_img_s", "ratio")),
    "fid.py": Case(("project_img_s", "reference_img_s", "ratio", "fid_halves"), lsun=True),
    "quality.py": Case(("heldout_fid_default", "heldout_fid_paper", "iterations", "resolution", "wall_s"), lsun=True),
    "generate_memory.py": Case(("config", "resolution", "runs")),
    "cli_help.py": Case(("python_startup_s", "seconds", "slowest", "max_s")),
    "copying_coverage.py": Case(("training_images", "heldout_images", "rows"), lsun=True, ray=True),
}
TESTED_ELSEWHERE = {"gpu.py": "tests/test_benchmark_gpu.py"}  # its tiny mode, through benchmarks/gpu_check.sh
HELPERS = {
    "plain_dcgan.py": "pytorch/examples' loop, which the benchmarks import; nothing to run",
    "gpu_kit.py": "writes the Inception weights' fp16 copy for a bare GPU box; measures nothing",
}
SCALE_STAGES = {"ingest", "audit_index", "near_dup_r0", "near_dup_r8", "reference_stats", "feed_startup", "evaluation"}
RAY_STAGGER_S = 15


class Run:
    """One ``--tiny`` run in its own session, started after ``delay`` seconds by a thread
    that also notes when it ends."""

    def __init__(self, name: str, log: Path, env: dict, delay: float):
        self.name, self.log, self.env, self.delay = name, log, env, delay
        self.proc: subprocess.Popen | None = None
        self.seconds: float | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._cancelled.wait(self.delay):
            return
        start = time.monotonic()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, str(BENCHMARKS_DIR / self.name), "--tiny"], cwd=ROOT,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.proc.wait()
        self.seconds = time.monotonic() - start

    def kill(self) -> None:
        self._cancelled.set()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the benchmark and its Ray processes
        self._thread.join()

    def wait(self) -> tuple[int, str]:
        self._thread.join(timeout=self.delay + TIMEOUT_S)
        if self._thread.is_alive():
            self.kill()
            pytest.fail(f"{self.name} --tiny ran over {TIMEOUT_S} s; log:\n{self.log.read_text()[-3000:]}")
        return self.proc.returncode, self.log.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every tiny run, started together but for the Ray ones' stagger (those needing LSUN
    only when the photos are there)."""
    lsun, _ = find_lsun_sample()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **({LSUN_ENV: str(lsun)} if lsun else {})}
    logs = tmp_path_factory.mktemp("benchmarks")
    wanted = [name for name, case in CASES.items() if lsun or not case.lsun]
    ray_order = [name for name in wanted if CASES[name].ray]
    started = {name: Run(name, logs / f"{name}.log", env,
                         RAY_STAGGER_S * ray_order.index(name) if name in ray_order else 0.0) for name in wanted}
    yield started
    for run in started.values():
        run.kill()
    print("\ntiny runs (seconds from their start; Ray ones started 15 s apart): "
          + ", ".join(f"{n} {r.seconds:.0f}" for n, r in started.items() if r.seconds is not None))


def test_every_benchmark_is_tested():
    files = {p.name for p in BENCHMARKS_DIR.glob("*.py")} - {"__init__.py"}
    listed = set(CASES) | set(TESTED_ELSEWHERE) | set(HELPERS)
    assert not files - listed, (f"benchmarks without a test of their --tiny mode: {sorted(files - listed)}; "
                                "add them to CASES in tests/test_benchmarks.py")
    assert not listed - files, f"listed here but not in benchmarks/: {sorted(listed - files)}"
    for name, test in TESTED_ELSEWHERE.items():
        assert name in (ROOT / test).read_text() or "gpu_check.sh" in (ROOT / test).read_text(), (name, test)
    for name in HELPERS:
        assert "--tiny" not in (BENCHMARKS_DIR / name).read_text(), f"{name} has a tiny mode: test it in CASES"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_mode_prints_its_json(name, runs, request):
    if CASES[name].lsun:
        request.getfixturevalue("lsun_dir")  # skips, or fails under CI_REQUIRE_LSUN=1, without the photos
    rc, log = runs[name].wait()
    assert rc == 0, f"{name} --tiny exited {rc}:\n{log[-4000:]}"
    last = json.loads(log.strip().splitlines()[-1])
    missing = [k for k in CASES[name].keys if k not in last]
    assert not missing, f"{name}: its JSON lacks {missing}: {sorted(last)}"
    assert last.get("tiny") is True, f"{name}: its JSON does not say tiny: true"
    check = CHECKS.get(name)
    if check:
        check(last)


def _generate_memory(result: dict) -> None:
    assert result["runs"] and all(r["rc"] == 0 and r["files"] == r["images"] for r in result["runs"]), result["runs"]


def _scale(result: dict) -> None:
    assert set(result["stages"]) == SCALE_STAGES
    for stage, row in result["stages"].items():
        assert {"time_exponent", "driver_bytes_per_image", "points"} <= set(row), stage
        assert [p["n"] for p in row["points"]] == result["sizes"] and len(result["sizes"]) >= 2, stage
    assert all(p["bytes_written"] > 0 for p in result["stages"]["ingest"]["points"])


CHECKS = {"generate_memory.py": _generate_memory, "scale.py": _scale}
