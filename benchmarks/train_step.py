"""Training-step throughput: this project's Algorithm-1 step vs a plain DCGAN loop.

64x64 images, batch 64, k=1, the paper's networks (nz=100, ngf=ndf=64), on this
machine's CPU (or a GPU when there is one). The plain loop is written here the way
pytorch/examples' dcgan/main.py does it (BCELoss on a sigmoid, one G forward
reused for both updates, D gradients computed and thrown away in the G step).
Both run in the same process, alternating in rounds, so drift hits both alike.

``--tiny``: one round of one iteration at batch 4, in seconds: a check that it runs.

Prints progress lines, then as its last line one JSON object:
  {"project_img_s", "plain_img_s", "ratio", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.plain_dcgan import plain_loop  # noqa: E402
from gan.models import Discriminator, Generator  # noqa: E402
from gan.adversarial import AdversarialStep, make_optimizers  # noqa: E402
from pipelines.training.hardware import step_options  # noqa: E402


def project_step(device, batch, options):
    g, d = Generator().to(device), Discriminator().to(device)
    if options["channels_last"]:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, fused=options["fused_adam"])
    step = AdversarialStep(
        g, d, opt_g, opt_d, discriminator_steps=1,
        autocast_dtype=options["autocast_dtype"], channels_last=options["channels_last"],
    )

    def iteration(real):
        return step(iter([real]))

    return iteration


def measure(fn, batches, iters):
    start = time.perf_counter()
    for i in range(iters):
        out = fn(batches[i % len(batches)])
    if isinstance(out, dict):
        out = list(out.values())
    float(out[0])  # one host sync at the end (matters on GPUs)
    return iters * batches[0].shape[0] / (time.perf_counter() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=6, help="iterations per round per contender")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="one round of one iteration at batch 4: runs in seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        args.rounds, args.iters, args.batch = 1, 1, 4

    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [torch.rand(args.batch, 3, 64, 64, device=device) * 2 - 1 for _ in range(4)]
    options = step_options(device)
    contenders = {"plain": plain_loop(device, args.batch), "project": project_step(device, args.batch, options)}
    for fn in contenders.values():  # warm-up (allocator, kernels, autotuning)
        measure(fn, batches, 1 if args.tiny else 2)
    rates = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            rates[name].append(measure(fn, batches, args.iters))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.1f} img/s" for n, v in rates.items()), flush=True)
    project, plain = statistics.median(rates["project"]), statistics.median(rates["plain"])
    result = {
        "project_img_s": round(project, 2),
        "plain_img_s": round(plain, 2),
        "ratio": round(project / plain, 3),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "options": {k: str(v) for k, v in options.items()},
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "tiny": args.tiny,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
