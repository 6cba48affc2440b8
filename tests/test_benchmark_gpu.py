"""The GPU check a GPU machine will run once (benchmarks/gpu_check.sh), run here on the CPU
as a user runs it, so CI covers the script, the benchmark's tiny mode and the bodies of
tests/test_gpu.py (rehearsed on the CPU: they otherwise never run without a GPU)."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The quick GPU tests; the two that train 150 steps take 40-90 s each on 2 CPU cores.
REHEARSED = "feed or generation or fid or (ddp_path and eager)"


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DCGAN_GPU_TESTS_DEVICE": "cpu", "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "-k", REHEARSED],
                          cwd=tmp_path_factory.getbasetemp(), env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_gpu_benchmark_tiny_on_cpu_prints_its_json(gpu_check):
    proc, out = gpu_check
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = json.loads((out / "bench.log").read_text().strip().splitlines()[-1])
    assert json.loads((out / "gpu.json").read_text()) == last
    for key in ("project_img_s", "plain_img_s", "ratio", "feed_ratio"):
        assert isinstance(last[key], (int, float)) and last[key] > 0, key
    assert "mfu" in last and last["mfu"] is None  # no bf16 peak for a CPU
    assert last["tiny"] and last["flops_per_image"]["16"]["project"] > 0
    ran = {r["variant"] for r in last["results"] if "img_s" in r}
    assert ran == {"plain", "eager_fp32", "eager_fast"}
    assert not [r for r in last["results"] if "error" in r]
    assert last["feed"]["device_img_s"] > 0 and last["feed"]["streaming_img_s"] > 0


def test_gpu_check_rehearses_the_gpu_tests_on_cpu(gpu_check):
    proc, out = gpu_check
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    env = (out / "env.txt").read_text()
    assert "torch " in env and "NO CUDA" in env and "benchmark exit 0, tests exit 0" in env
    suite = ET.parse(out / "tests.xml").getroot().find("testsuite")
    ran = {case.get("name"): [child.tag for child in case] for case in suite.iter("testcase")}
    assert set(ran) == {"test_device_feed_yields_the_cpu_feeds_batches", "test_generation_on_cuda_equals_cpu",
                        "test_fid_features_on_cuda_equal_cpu", "test_one_rank_nccl_group_runs_the_ddp_path[eager]"}
    assert all(outcome == [] for outcome in ran.values()), ran  # passed: no failure, error or skip
