"""Steady-state training throughput: plain loop vs 1 and 2 Ray Train workers, one thread each.

All three train the paper's 64x64 networks (batch 64 per worker, k=1) on the same
synthetic dataset. The Ray runs are the product itself (``pipelines.training.trainer.fit``);
their rate is the ``images_per_second`` the training loop logs to MLflow per window,
so start-up (Ray, worker group, first batches) is excluded by skipping the first
windows, the same way the plain loop is warmed up before it is timed.

``--tiny`` runs the same code at 32x32, batch 16, on 128 images for a few iterations
(seconds of training; Ray's start-up dominates): a check that it runs, not a measurement.

Prints progress, then as its last line one JSON object:
  {"plain_img_s", "ray1_img_s", "ray2_img_s", "ray1_vs_plain", "ray2_vs_ray1", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.plain_dcgan import plain_loop  # noqa: E402
from gan.images import to_model_input  # noqa: E402
from gan.synthetic import synthetic_bedrooms  # noqa: E402
from pipelines.records import tracking  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.driver.named_runs import unique_run_name  # noqa: E402
from pipelines.training.trainer import fit  # noqa: E402
from tests.datasets import write_dataset  # noqa: E402

RESOLUTION, BATCH = 64, 64
TINY = {"iterations": 4, "window": 2, "skip_windows": 1, "images": 128, "resolution": 32, "batch": 16}


def plain_rate(images: torch.Tensor, iterations: int, warmup: int, batch: int) -> float:
    torch.set_num_threads(1)
    step = plain_loop(torch.device("cpu"), batch, resolution=images.shape[-1])
    batches = images.split(batch)
    for i in range(warmup):
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(iterations):
        step(batches[i % len(batches)])
    return iterations * batch / (time.perf_counter() - start)


def ray_rate(workers: int, dataset: str, root: Path, args) -> float:
    iterations, window = args.iterations, args.window
    cfg = load_config("demo", [
        f"name=scaling-{workers}w", f"storage={root}", f"data.dataset={dataset}", f"model.resolution={args.resolution}",
        f"train.batch_size={args.batch}", f"train.iterations={iterations}", f"train.log_every={window}",
        f"train.checkpoint_every={iterations}", f"scaling.num_workers={workers}", "scaling.cpus_per_worker=1",
        "scaling.torch_threads=1", "train.sample_every=100000",
    ])
    uri = f"sqlite:///{root}/mlflow.db"
    with tracking.run(uri, "scaling-benchmark", run_name=cfg.name) as active:
        result = fit(cfg, run_name=unique_run_name(cfg), tracking_uri=uri, mlflow_run_id=active.info.run_id)
    if result.error:
        raise result.error
    from mlflow import MlflowClient

    history = MlflowClient(uri).get_metric_history(active.info.run_id, "images_per_second")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)][args.skip_windows:]
    return statistics.median(rates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=48, help="per Ray run")
    ap.add_argument("--window", type=int, default=8, help="iterations per logged rate")
    ap.add_argument("--skip-windows", type=int, default=2, help="windows counted as warm-up")
    ap.add_argument("--images", type=int, default=2048, help="dataset size (epochs of 2048 / (workers x 64) iterations)")
    ap.add_argument("--resolution", type=int, default=RESOLUTION)
    ap.add_argument("--batch", type=int, default=BATCH, help="per worker")
    ap.add_argument("--tiny", action="store_true", help="a few iterations of small images: runs in seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        vars(args).update(TINY)

    root = Path(tempfile.mkdtemp(prefix="dcgan-scaling-"))
    images = synthetic_bedrooms(args.images, args.resolution, seed=0)
    dataset = str(root / "dataset")
    write_dataset(Path(dataset), images, shards=8)
    print(f"dataset: {len(images)} synthetic {args.resolution}px images at {dataset}", flush=True)

    timed = args.iterations - args.skip_windows * args.window
    plain = plain_rate(to_model_input(images), timed, warmup=1 if args.tiny else 3, batch=args.batch)
    print(f"plain loop, 1 thread: {plain:.1f} img/s", flush=True)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    import ray

    from pipelines.cluster.connect import start_local_ray

    start_local_ray(num_cpus=4, log_to_driver=False)
    ray1 = ray_rate(1, dataset, root, args)
    print(f"Ray Train, 1 worker x 1 thread: {ray1:.1f} img/s", flush=True)
    ray2 = ray_rate(2, dataset, root, args)
    print(f"Ray Train, 2 workers x 1 thread: {ray2:.1f} img/s", flush=True)
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "plain_img_s": round(plain, 2), "ray1_img_s": round(ray1, 2), "ray2_img_s": round(ray2, 2),
        "ray1_vs_plain": round(ray1 / plain, 3), "ray2_vs_ray1": round(ray2 / ray1, 3),
        "resolution": args.resolution, "batch_per_worker": args.batch, "cores": os.cpu_count(), "tiny": args.tiny,
    }))


if __name__ == "__main__":
    main()
