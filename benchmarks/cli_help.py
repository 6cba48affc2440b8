"""How long `dcgan <command> --help` takes: each in a fresh process, as a user types it.

    python benchmarks/cli_help.py [--repeat 3] [--tiny] [--out result.json]

Times `python -m pipelines.steps.cli <command> --help` for every command (and `dcgan --help`,
`dcgan --version`), the best of --repeat runs, next to a bare `python -c pass` (the
interpreter's own start-up). The step modules import torch, Ray and MLflow only inside their
functions, so these should stay well under a second on an idle machine; the numbers are
printed, not asserted (a busy machine makes them longer). --tiny times two commands once.
Progress on stderr, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["run", "ingest", "train", "evaluate", "generate", "latent", "fid", "sweep", "config"]


def seconds(argv: list[str], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``python argv``, in seconds (it must exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest counts")
    ap.add_argument("--tiny", action="store_true", help="two commands, once each (for the test suite)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    commands, repeat = (["latent", "generate"], 1) if args.tiny else (COMMANDS, args.repeat)
    cli = ["-m", "pipelines.steps.cli"]
    python = seconds(["-c", "pass"], repeat)
    timed = {"dcgan --help": cli + ["--help"], "dcgan --version": cli + ["--version"]} if not args.tiny else {}
    timed |= {f"dcgan {c} --help": cli + [c, "--help"] for c in commands}
    results = {}
    for name, command in timed.items():
        results[name] = round(seconds(command, repeat), 3)
        print(f"{name:<24} {results[name]:.3f} s", file=sys.stderr, flush=True)
    summary = {"benchmark": "cli_help", "python_startup_s": round(python, 3), "seconds": results,
               "slowest": max(results, key=results.get), "max_s": max(results.values()), "repeat": repeat,
               "load_average": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M:%S"), "tiny": args.tiny}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
