"""How each stage of the pipeline grows with the dataset: time, driver memory, bytes written.

For each N (default 2k, 8k, 32k, 128k synthetic 32x32 bedrooms, written as PNG files
with 1% exact copies and 1% lightly noised copies planted), on one local Ray cluster:

ingest            ``pipelines.dataset.ingestion.ingest`` of the PNG folder: decode, crop/resize,
                  content hash, exact-duplicate drop, held-out split (10%), shards, manifest
audit_index       the memorization audit's autoencoder and every training image's hash
near_dup_r0       ``drop_near_duplicates`` at radius 0: clusters of equal hashes, a de-duplicated copy
near_dup_r8       the same at the audit's radius (8 bits, gan.memorization.DEFAULT_RADIUS)
reference_stats   Inception statistics of the training images (capped by eval.reference_images)
feed_startup      a training worker's start: ``read_shard`` (rank 0 of 2), ``make_feed``, first batch
evaluation        ``evaluate_generator`` of an untrained generator: FID/KID against the training and
                  held-out images, the copying audit, the hash audit (reference and index cached)

Each stage is timed on its own; a thread samples the resident memory of this process
(the driver) and of every Ray worker process under it every 20 ms. Bytes written are
the growth of the work folder. From the two largest N: ``time_exponent`` a of
time ~ N^a, and ``driver_bytes_per_image``: how much more the driver's resident memory
grows during the stage (its peak over its start) per added image. The caches of reference statistics and audit index count in
the stage that makes them; evaluation reuses them, as the pipeline does. One evaluation
pool (this process) serves every N, so the Inception network loads once, in the
smallest N's reference_stats.

``--tiny``: N = 200 and 400 with a 20-step autoencoder and a handful of samples: every
stage runs in seconds (Ray's start-up dominates); the exponents mean nothing there.

Prints progress, then as its last line one JSON object: ``sizes``, ``stages`` (per stage
``time_exponent``, ``driver_bytes_per_image`` and ``points``), ``tiny``, ``cores``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipelines.cluster.openmp  # noqa: E402,F401  (before torch loads)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from gan.memorization import DEFAULT_RADIUS  # noqa: E402

RESOLUTION = 32
SIZES = [2_000, 8_000, 32_000, 128_000]
TINY_SIZES = [200, 400]
MIB = 2**20


class Meter:
    """Peak resident memory of this process and of its largest Ray worker while a stage runs."""

    def __init__(self, interval: float = 0.02):
        self.me, self.interval = psutil.Process(), interval
        self.driver = self.worker = 0
        self._stop = threading.Event()

    def _workers(self) -> int:
        largest = 0
        for child in self.me.children(recursive=True):
            try:
                if child.name().startswith("ray::") or "default_worker.py" in " ".join(child.cmdline()[:3]):
                    largest = max(largest, child.memory_info().rss)
            except psutil.Error:
                pass
        return largest

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            self.worker = max(self.worker, self._workers())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_rss = self.me.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.driver = max(self.driver, self.me.memory_info().rss)


def folder_bytes(root: Path) -> int:
    """Bytes in the files under ``root``, but for the source images (written before any stage)."""
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.parent != root / "source")


def measure(stage: str, n: int, work: Path, fn, points: dict) -> object:
    before = folder_bytes(work)
    start = time.perf_counter()
    with Meter() as meter:
        out = fn()
    seconds = time.perf_counter() - start
    point = {"n": n, "seconds": round(seconds, 3), "driver_peak_rss_mib": round(meter.driver / MIB, 1),
             "driver_rss_growth_mib": round((meter.driver - meter.start_rss) / MIB, 1),
             "worker_peak_rss_mib": round(meter.worker / MIB, 1) if meter.worker else None,
             "bytes_written": folder_bytes(work) - before}
    points.setdefault(stage, []).append(point)
    print(f"N={n:>7} {stage:<16} {seconds:8.2f} s  driver peak {point['driver_peak_rss_mib']:7.1f} MiB  "
          f"worker peak {point['worker_peak_rss_mib']} MiB  wrote {point['bytes_written'] / MIB:.1f} MiB", flush=True)
    return out


def write_source(folder: Path, n: int, seed: int) -> None:
    """``n`` PNG files: synthetic bedrooms, 1% of them exact copies and 1% noised copies of others."""
    from gan.synthetic import synthetic_bedrooms

    rng = np.random.default_rng(seed)
    planted = max(1, n // 100)
    images = synthetic_bedrooms(n - 2 * planted, RESOLUTION, seed=seed)
    exact = images[rng.choice(len(images), planted, replace=False)]
    noisy = images[rng.choice(len(images), planted, replace=False)].astype(np.int16)
    noisy = np.clip(noisy + rng.normal(0, 2, noisy.shape), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True)
    for i, image in enumerate(np.concatenate([images, exact, noisy])):
        Image.fromarray(image).save(folder / f"img-{i:07d}.png", compress_level=1)


def stages_for(n: int, work: Path, cfg_for, pool, points: dict) -> None:
    """Every stage at one N, in the pipeline's order; ``pool`` (this process) keeps its Inception network."""
    import torch

    from gan.feed import make_feed
    from pipelines.training.checkpoints import build_networks
    from pipelines.dataset.ingestion import drop_near_duplicates, ingest
    from pipelines.dataset.rows import read_shard
    from pipelines.evaluation.cache import audit_index, reference_stats
    from pipelines.evaluation.generator_eval import evaluate_generator

    source, data = work / "source", str(work / "dataset")
    write_source(source, n, seed=n)
    cfg = cfg_for(data, 0)
    manifest = measure("ingest", n, work, lambda: ingest(str(source), data, RESOLUTION, holdout=0.1, progress=False),
                       points)
    steps = cfg.eval.audit_autoencoder_steps
    measure("audit_index", n, work, lambda: audit_index(data, manifest, pool=pool, steps=steps, progress=False), points)
    for radius in (0, DEFAULT_RADIUS):
        recipe = {**manifest["recipe"], "near_duplicate_radius": radius}
        measure(f"near_dup_r{radius}", n, work, lambda: drop_near_duplicates(
            data, str(work / f"dedup-r{radius}"), cfg_for(data, radius), manifest, recipe, progress=False), points)
    measure("reference_stats", n, work, lambda: reference_stats(data, manifest, cfg, pool=pool, progress=False), points)

    def feed_startup():
        images, keys = read_shard(data, RESOLUTION, rank=0, world=2)
        feed, _ = make_feed(images, keys, cfg.train.batch_size, cfg.train.seed, 0, "cpu", cfg.data.device_cache)
        return next(feed.epoch_batches(0))

    measure("feed_startup", n, work, feed_startup, points)
    torch.manual_seed(0)
    generator, _ = build_networks(cfg.model.model_dump())
    measure("evaluation", n, work, lambda: evaluate_generator(
        generator.eval(), data, cfg, manifest=manifest, out_dir=work / "eval", pool=pool, progress=False), points)
    shutil.rmtree(work)


def summary(points: dict) -> dict:
    """Per stage: time ~ N^a and the driver's memory growth per added image, from the two largest N."""
    stages = {}
    for stage, rows in points.items():
        a, b = rows[-2], rows[-1]
        exponent = math.log(max(b["seconds"], 1e-6) / max(a["seconds"], 1e-6)) / math.log(b["n"] / a["n"])
        per_image = (b["driver_rss_growth_mib"] - a["driver_rss_growth_mib"]) * MIB / (b["n"] - a["n"])
        stages[stage] = {"time_exponent": round(exponent, 2), "driver_bytes_per_image": round(per_image, 1),
                         "points": rows}
    return stages


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="dataset sizes, ascending (at least 2)")
    ap.add_argument("--autoencoder-steps", type=int, default=2000, help="the audit autoencoder's (the default config's)")
    ap.add_argument("--samples", type=int, default=1000, help="generated samples of the evaluation (FID and audit)")
    ap.add_argument("--reference-images", type=int, default=2000, help="eval.reference_images: the FID reference's cap")
    ap.add_argument("--tiny", action="store_true", help="N = 200 and 400, tiny models: runs in seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        args.sizes, args.autoencoder_steps, args.samples, args.reference_images = TINY_SIZES, 20, 8, 16
    if len(args.sizes) < 2:
        ap.error("--sizes needs at least two sizes (the exponent comes from the two largest)")
    from pipelines.config import load_config
    from pipelines.evaluation.pool import WorkerPool

    def cfg_for(dataset: str, radius: int):
        return load_config("demo", [
            f"data.dataset={dataset}", f"model.resolution={RESOLUTION}", "data.holdout=0.1",
            f"data.near_duplicate_radius={radius}", f"eval.audit_autoencoder_steps={args.autoencoder_steps}",
            f"eval.fid_samples={args.samples}", f"eval.audit_samples={args.samples}",
            f"eval.reference_images={args.reference_images}", f"eval.kid_subset_size={min(args.samples, 100)}",
        ])

    import ray

    cores = os.cpu_count() or 1
    # Ray Data only (no Ray Train, whose placement-group cleaner needs pipelines.cluster.connect.start_local_ray):
    # no dashboard, which takes seconds to start.
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    points: dict = {}
    pool = WorkerPool(0, progress=False)  # evaluation work in this process, as with one CPU training worker
    started = time.perf_counter()
    try:
        for n in sorted(args.sizes):
            stages_for(n, root / f"n{n}", cfg_for, pool, points)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"sizes": sorted(args.sizes), "stages": summary(points),
                      "resolution": RESOLUTION, "autoencoder_steps": args.autoencoder_steps, "samples": args.samples,
                      "reference_images": args.reference_images, "wall_s": round(time.perf_counter() - started, 1),
                      "tiny": args.tiny, "cores": cores}))


if __name__ == "__main__":
    main()
