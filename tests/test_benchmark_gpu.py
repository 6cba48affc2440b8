"""benchmarks/gpu.py's tiny CPU mode, run as a user runs it (a subprocess), so CI covers
the script that a GPU machine will run once."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_tiny_on_cpu_prints_its_json(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == last
    for key in ("project_img_s", "plain_img_s", "ratio", "feed_ratio"):
        assert isinstance(last[key], (int, float)) and last[key] > 0, key
    assert "mfu" in last and last["mfu"] is None  # no bf16 peak for a CPU
    assert last["tiny"] and last["flops_per_image"]["16"]["project"] > 0
    ran = {r["variant"] for r in last["results"] if "img_s" in r}
    assert ran == {"plain", "eager_fp32", "eager_fast"}
    assert not [r for r in last["results"] if "error" in r]
    assert last["feed"]["device_img_s"] > 0 and last["feed"]["streaming_img_s"] > 0
