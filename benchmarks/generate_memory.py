"""Peak memory of `dcgan generate` into a folder: flat in the image count when batched.

    python benchmarks/generate_memory.py [--config demo] [--counts 500 5000] [--batch 250] [--out result.json] [--tiny]

Each run is a fresh `python -m pipelines.steps.generate` process on a checkpoint of the
preset's (untrained) generator; its peak resident memory is the child's ru_maxrss
(resource.getrusage(RUSAGE_CHILDREN), measured alone in a wrapper process). For
comparison it also runs the largest count as one batch (what generate did before --batch).
``--tiny``: 8 images in batches of 4 and as one batch (two short processes); measures nothing.

Prints a JSON line per run, then as its last line the summary (``runs``: those lines).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRAPPER = """
import resource, subprocess, sys, json, time
t = time.time()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "peak_rss_mib": peak_kib / 1024, "seconds": time.time() - t,
                  "stderr": done.stderr[-500:] if done.returncode else ""}))
"""


def measure(checkpoint: str, count: int, batch: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "pipelines.steps.generate", "--network", checkpoint, "-n", str(count),
           "--batch", str(batch), "--device", "cpu", "--outdir", str(out)]
    done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result |= {"images": count, "batch": batch, "files": len(list(out.glob("*.png")))}
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", help="write the results as JSON here too")
    ap.add_argument("--tiny", action="store_true", help="8 images, batch 4: runs in seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        args.counts, args.batch = [8], 4
    import torch

    from pipelines.training.checkpoints import build_networks, save_state
    from pipelines.config import load_config

    cfg = load_config(args.config)
    torch.manual_seed(0)
    g, _ = build_networks(cfg.model.model_dump())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_state(Path(tmp) / "ckpt", {"generator": g.state_dict(), "config": cfg.model_dump()})
        runs = [(n, args.batch) for n in args.counts] + [(max(args.counts), max(args.counts))]
        for i, (count, batch) in enumerate(runs):
            rows.append(measure(str(Path(tmp) / "ckpt"), count, batch, Path(tmp) / f"out{i}"))
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    summary = {"config": args.config, "resolution": cfg.model.resolution, "g_width": cfg.model.g_width,
               "runs": rows, "tiny": args.tiny, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
