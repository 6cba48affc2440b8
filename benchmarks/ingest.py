"""Ingest and feed throughput, each against this machine's own limit, in one run.

ingest_img_s  the shared LSUN JPEGs -> 64x64 Parquet dataset with ``pipelines.dataset.ingestion``
              (Ray Data: list, read, decode/crop/resize, hash, drop duplicates, write,
              manifest), on a warm local Ray cluster using every core.
limit_img_s   the same per-image work - ``decode_square``, the very function ingest
              runs - over a plain ``ProcessPoolExecutor`` with one process per core,
              reading the files and nothing else: no hashing, no writing.
feed_img_s    how fast one Ray Train worker's shard (``get_dataset_shard`` +
              ``epoch_batches``, batch 64, local shuffle) delivers float NCHW batches.
step_img_s    what one DCGAN training step (Algorithm 1, k=1, 64x64, batch 64, the
              paper's networks) consumes on this machine's CPU, all cores.

ingest_marginal_img_s, limit_marginal_img_s, marginal_ratio: each side's rate per
              image without its fixed cost per job (from a full and a quarter-size
              run in every round), which is what a 3-million-image ingest runs at.

Ingest and limit alternate in rounds and the medians are reported (and the median of
the per-round ratios), so load from other processes hits both alike. Ray's workers run at the pool's priority (niceness
0; Ray's default is 15, reported separately as ``ratio_at_default_niceness``).
``--tiny``: the same rounds on 24 photos (one round, one feed epoch, one step, a warm-up
of 8): every code path but the round at Ray's default niceness (a second Ray start; its
keys are null), mostly Ray's start-up; measures nothing.

Prints progress, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.dataset.decode import decode_square  # noqa: E402

LSUN = Path(os.environ.get("DCGAN_LSUN_SAMPLE") or ROOT.parent / "shared" / "data" / "lsun-bedroom" / "images")


def _decode_files(paths: list[str], resolution: int) -> int:
    for p in paths:
        with open(p, "rb") as f:
            decode_square(f.read(), resolution)
    return len(paths)


def limit_rate(files: list[str], resolution: int, workers: int) -> float:
    """Plain PIL decode-crop-resize over a process pool (pool start included, as a job would pay it)."""
    chunk = max(1, len(files) // (workers * 8))
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        done = sum(pool.map(_decode_files, chunks, [resolution] * len(chunks)))
    return done / (time.perf_counter() - start)


def limit_rate_in_fresh_process(images: int, resolution: int, workers: int) -> float:
    """limit_rate in a new Python process: forking this one, which holds Ray's gRPC
    connections, breaks them (Ray then fails with 'Missing :authority header')."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure-limit", "--images", str(images), "--resolution", str(resolution),
         "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["limit_img_s"]


def ingest_rate(source: str, out: str, resolution: int, limit: int | None = None) -> tuple[float, dict]:
    from pipelines.dataset.ingestion import ingest

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = ingest(source, out, resolution, limit=limit, progress=False)
    return manifest["source_images"] / (time.perf_counter() - start), manifest


def fixed_and_marginal(n: int, rate: float, n_small: int, rate_small: float) -> tuple[float, float]:
    """From a job's rate at two sizes (time = fixed + images / marginal): (fixed seconds, marginal img/s)."""
    t, t_small = n / rate, n_small / rate_small
    marginal = (n - n_small) / (t - t_small)
    return t - n / marginal, marginal


def feed_rate(dataset: str, resolution: int, batch: int, epochs: int, shuffle_buffer: int, workdir: str) -> float:
    """Images/s of one worker's shard inside a real TorchTrainer, over the last epoch
    (the first ones include worker start-up and Ray Data warming up)."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.dataset.format import read_manifest
    from pipelines.dataset.streaming import train_dataset

    def loop(config):
        from pipelines.dataset.streaming import epoch_batches

        shard = ray.train.get_dataset_shard("train")
        rate = 0.0
        for epoch in range(config["epochs"]):
            start, images = time.perf_counter(), 0
            for b in epoch_batches(shard, config["batch"], config["resolution"], epoch, shuffle_buffer=config["buffer"]):
                images += b.shape[0]
            rate = images / (time.perf_counter() - start)
            print(f"feed epoch {epoch}: {images} images, {rate:.0f} img/s", flush=True)
        Path(config["result"]).write_text(json.dumps({"feed_img_s": rate}))

    trainer = TorchTrainer(
        loop,
        train_loop_config={"epochs": epochs, "batch": batch, "resolution": resolution, "buffer": shuffle_buffer,
                           "result": f"{workdir}/feed.json"},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        datasets={"train": train_dataset(dataset, read_manifest(dataset))},
        run_config=RunConfig(storage_path=workdir, name="feed"),
    )
    trainer.fit()
    return json.loads(Path(workdir, "feed.json").read_text())["feed_img_s"]


def step_rate(batch: int, resolution: int, iters: int) -> float:
    import torch

    from gan.models import Discriminator, Generator
    from gan.adversarial import AdversarialStep, make_optimizers
    from pipelines.training.hardware import step_options

    assert resolution == 64, "the paper's networks are 64x64"
    options = step_options(torch.device("cpu"))
    g, d = Generator(), Discriminator()
    if options["channels_last"]:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, fused=options["fused_adam"])
    step = AdversarialStep(g, d, opt_g, opt_d, discriminator_steps=1,
                           autocast_dtype=options["autocast_dtype"], channels_last=options["channels_last"])
    real = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    step(iter([real]))  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        step(iter([real]))
    return iters * batch / (time.perf_counter() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8000, help="how many of the shared LSUN JPEGs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--feed-epochs", type=int, default=3)
    ap.add_argument("--shuffle-buffer", type=int, default=1024)
    ap.add_argument("--step-iters", type=int, default=8)
    ap.add_argument("--warm-up", type=int, default=400, help="images ingested to start Ray's workers before timing")
    ap.add_argument("--tiny", action="store_true", help="24 photos, one round: runs in seconds, measures nothing")
    ap.add_argument("--measure-limit", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the limit (all cores)")
    args = ap.parse_args(argv)
    if args.tiny:
        vars(args).update(images=24, rounds=1, batch=8, feed_epochs=1, shuffle_buffer=16, step_iters=1, warm_up=8)
    files = sorted(str(p) for p in LSUN.glob("*.jpg"))[: args.images]
    if args.measure_limit:
        print(json.dumps({"limit_img_s": limit_rate(files, args.resolution, args.workers)}))
        return

    import ray

    cores = args.workers
    if len(files) < args.images:
        sys.exit(f"need {args.images} JPEGs in {LSUN}, found {len(files)} (see its NOTICE.md)")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    source = work / "images"
    source.mkdir()
    for f in files:  # symlinks: the source folder holds exactly the files under test
        (source / Path(f).name).symlink_to(f)

    def start_ray(niceness: str | None):
        # Ray runs its workers at niceness 15 by default (so its own daemons stay responsive);
        # the pool runs at 0. On a machine shared with other work that alone decides the race,
        # so the headline numbers give Ray's workers the pool's priority.
        if niceness is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = niceness
        # The project's local start: its workers know its address, so Ray Train's placement-group
        # cleaner (feed_rate) does not fail on a machine where another Ray instance runs.
        from pipelines.cluster.connect import start_local_ray

        start_local_ray(num_cpus=cores, logging_level="ERROR")
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        from pipelines.dataset.ingestion import ingest

        ingest(str(source), str(work / "warm"), args.resolution, limit=args.warm_up, progress=False)  # starts the workers
        shutil.rmtree(work / "warm")

    def round_pair(label: str, images: int | None = None) -> tuple[float, float, dict]:
        limit = limit_rate_in_fresh_process(images or len(files), args.resolution, cores)
        rate, manifest = ingest_rate(str(source), str(work / "dataset"), args.resolution, limit=images)
        print(f"{label}: limit {limit:.0f} img/s, ingest {rate:.0f} img/s ({manifest['count']} stored, "
              f"{manifest['duplicates']} duplicates, {len(manifest['skipped'])} skipped, "
              f"{len(manifest['shards'])} shards)", flush=True)
        return limit, rate, manifest

    print(f"warm-up: ingest of {args.warm_up} images on {cores} cores (Ray workers at niceness 0)", flush=True)
    start_ray("0")
    try:
        limits, ingests, small_limits, small_ingests = [], [], [], []
        small = len(files) // 4
        for r in range(args.rounds):
            # A quarter-size pair too: the two sizes separate each side's fixed cost per
            # job (Ray: the ledger actor, planning, listing, the read-back check; the pool:
            # its start) from its rate per image, which is what a 3-million-image ingest sees.
            limit, rate, _ = round_pair(f"round {r + 1}/{args.rounds}, {small} images", small)
            small_limits.append(limit)
            small_ingests.append(rate)
            limit, rate, manifest = round_pair(f"round {r + 1}/{args.rounds}")
            limits.append(limit)
            ingests.append(rate)
        feed = feed_rate(str(work / "dataset"), args.resolution, args.batch, args.feed_epochs, args.shuffle_buffer,
                         str(work / "train"))
    finally:
        ray.shutdown()
    default_limit = default_rate = None
    if not args.tiny:
        print("Ray's default worker niceness (15), one round", flush=True)
        start_ray(None)
        try:
            default_limit, default_rate, _ = round_pair("default niceness")
        finally:
            ray.shutdown()
    step = step_rate(args.batch, args.resolution, args.step_iters)
    print(f"training step: {step:.1f} img/s", flush=True)
    ingest_img_s, limit_img_s = statistics.median(ingests), statistics.median(limits)
    ingest_fixed, ingest_marginal = fixed_and_marginal(len(files), ingest_img_s, small, statistics.median(small_ingests))
    limit_fixed, limit_marginal = fixed_and_marginal(len(files), limit_img_s, small, statistics.median(small_limits))
    shard_mb = sum(s["bytes"] for s in manifest["shards"]) / 2**20
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "ingest_img_s": round(ingest_img_s, 1),
        "limit_img_s": round(limit_img_s, 1),
        "ratio": round(ingest_img_s / limit_img_s, 3),
        "feed_img_s": round(feed, 1),
        "step_img_s": round(step, 1),
        "feed_ratio": round(feed / step, 1),
        "ingest_fixed_seconds": round(ingest_fixed, 2),
        "ingest_marginal_img_s": round(ingest_marginal, 1),
        "limit_fixed_seconds": round(limit_fixed, 2),
        "limit_marginal_img_s": round(limit_marginal, 1),
        "marginal_ratio": round(ingest_marginal / limit_marginal, 3),
        "ratio_paired_median": round(statistics.median(i / l for i, l in zip(ingests, limits)), 3),
        "ray_worker_niceness": 0,
        "ratio_at_default_niceness": round(default_rate / default_limit, 3) if default_rate else None,
        "ingest_img_s_default_niceness": round(default_rate, 1) if default_rate else None,
        "images": len(files),
        "stored": manifest["count"],
        "duplicates": manifest["duplicates"],
        "skipped": len(manifest["skipped"]),
        "shards": len(manifest["shards"]),
        "dataset_mib": round(shard_mb, 1),
        "ingest_rounds": [round(x, 1) for x in ingests],
        "limit_rounds": [round(x, 1) for x in limits],
        "resolution": args.resolution,
        "batch": args.batch,
        "shuffle_buffer": args.shuffle_buffer,
        "cores": cores,
        "tiny": args.tiny,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
