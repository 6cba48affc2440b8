"""Distributed DCGAN training on Ray Train (``TorchTrainer``, DDP over G and D).

    python -m pipelines.train --config configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m pipelines.train --config configs/demo.yaml

Without ``RAY_ADDRESS`` Ray starts in-process; ``ray job submit`` sets it for the job.
Every worker runs :func:`train_loop_per_worker`: Algorithm 1 from ``gan.training`` with
both networks under DDP (``broadcast_buffers=False``: D runs on a real and a fake batch
before one backward), its own shard of the Parquet dataset, and per-rank noise.
Checkpoints (G, D, both optimizers, counters, fixed noise, data position, config and
the metrics not yet committed to MLflow) go to ``<storage>/checkpoints/<run name>``,
local or S3; a dead worker restarts the group from the last one (``FailureConfig``),
and ``train.resume_from=<checkpoint>`` continues a previous run by hand, in the same
MLflow run. Resuming repeats no iteration: the data position and every iteration's
noise are restored exactly.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from gan.images import save_grid
from gan.training import AdversarialStep, make_optimizers, unwrap
from pipelines import storage, tracking
from pipelines.checkpoints import build_networks, load_state, save_state
from pipelines.cluster import init_ray
from pipelines.config import PipelineConfig, load_config
from pipelines.data import ShardInMemory, epoch_batches, read_manifest, train_dataset
from pipelines.distributed import convert_sync_batchnorm, ddp_kwargs, replica_divergence
from pipelines.hardware import step_options

# A logger, not print: Ray Train tees a worker's print to its logger *and* stdout, which
# shows every line twice on the driver's console.
log = logging.getLogger("dcgan.train")
SAMPLE_GRID_SIZE = 64
FIXED_NOISE_SEED = 1234


# ----------------------------------------------------------------------------- worker


def _iteration_seed(seed: int, rank: int, iteration: int) -> int:
    """Noise of iteration i on rank r is a pure function of (seed, r, i): exact resume."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _DataPosition:
    """Where this worker is in the data: (epoch, batches consumed in that epoch)."""

    def __init__(self, epoch: int = 0, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def batches(self, make_epoch: Callable[[int], Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
        skip = self.batch
        while True:
            seen = 0
            for i, batch in enumerate(make_epoch(self.epoch)):
                seen += 1
                if i < skip:
                    continue  # resume mid-epoch: the batches before the checkpoint were trained on
                self.batch = i + 1
                yield batch
            if seen == 0:
                raise RuntimeError("this worker's shard gave no batch: the dataset is smaller than num_workers x batch_size")
            skip = 0
            self.epoch, self.batch = self.epoch + 1, 0


def build_training(cfg: PipelineConfig, device: torch.device, world: int):
    """G and D (DDP-wrapped when world > 1), their optimizers, and the device options.

    Call inside a Ray Train worker: ``prepare_model`` wraps in DDP (it returns the bare
    module for a single worker, which ``gan.training.unwrap`` handles alike).
    """
    import ray.train.torch

    opts = step_options(device, cfg.train.mixed_precision, cfg.train.channels_last)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    g, d = build_networks(cfg.model.model_dump())
    if cfg.train.sync_batchnorm and world > 1:
        g, d = convert_sync_batchnorm(g, device), convert_sync_batchnorm(d, device)
    if opts["channels_last"]:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    g = ray.train.torch.prepare_model(g, parallel_strategy_kwargs=ddp_kwargs())
    d = ray.train.torch.prepare_model(d, parallel_strategy_kwargs=ddp_kwargs())
    opt_g, opt_d = make_optimizers(unwrap(g), unwrap(d), cfg.train.lr_g, cfg.train.lr_d,
                                   (cfg.train.beta1, cfg.train.beta2), fused=opts["fused_adam"])
    return g, d, opt_g, opt_d, opts


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    t_enter = time.perf_counter()
    cfg = PipelineConfig.model_validate(loop_config["pipeline"])
    tracking_uri, run_id = loop_config.get("tracking_uri"), loop_config.get("mlflow_run_id")
    evaluator = loop_config.get("evaluator")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()

    g, d, opt_g, opt_d, opts = build_training(cfg, device, world)
    g_bare, d_bare = unwrap(g), unwrap(d)
    fixed_noise = torch.randn(SAMPLE_GRID_SIZE, cfg.model.latent_dim, 1, 1,
                              generator=torch.Generator().manual_seed(FIXED_NOISE_SEED))

    # Resume: Ray's checkpoint after a failure, else a checkpoint named by hand.
    ray_checkpoint = ray.train.get_checkpoint()
    state = None
    if ray_checkpoint is not None:
        with ray_checkpoint.as_directory() as ckpt_dir:
            state = load_state(ckpt_dir)
    elif cfg.train.resume_from:
        state = load_state(cfg.train.resume_from)
    start, position, pending = 0, _DataPosition(), []
    if state is not None:
        g_bare.load_state_dict(state["generator"])
        d_bare.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        fixed_noise = state["fixed_noise"]
        start = state["iteration"]
        position = _DataPosition(*state["data_position"])
        pending = state.get("pending_metrics", [])
        if rank == 0:
            log.info(f"[train] resumed at iteration {start} (epoch {position.epoch}, batch {position.batch})")
    fixed_noise = fixed_noise.to(device)

    noise_gen = torch.Generator(device=device)
    step = AdversarialStep(g, d, opt_g, opt_d, cfg.model.latent_dim, cfg.train.discriminator_steps,
                           cfg.train.generator_loss, opts["autocast_dtype"], opts["channels_last"], noise_gen)
    shard = ray.train.get_dataset_shard("train")
    if loop_config.get("shard_in_memory"):
        held = ShardInMemory(shard, cfg.model.resolution)
        batches = position.batches(lambda epoch: held.epoch_batches(
            cfg.train.batch_size, epoch, cfg.train.seed + rank, cfg.data.shuffle))
    else:
        shuffle_buffer = 4 * cfg.train.batch_size if cfg.data.shuffle else None
        batches = position.batches(lambda epoch: epoch_batches(
            shard, cfg.train.batch_size, cfg.model.resolution, epoch, cfg.train.seed + rank, shuffle_buffer))

    metrics_buffer = tracking.MetricBuffer(tracking_uri if rank == 0 else None, run_id, pending)
    if rank == 0:
        metrics_buffer.flush()  # metrics a crash kept from being committed with the last checkpoint
        if state is not None and metrics_buffer.client is not None:
            # An event users see in MLflow: where this run (re)started from a checkpoint.
            metrics_buffer.client.log_metric(run_id, "resumed_at_iteration", start, step=start)

    def log_grid(iteration: int) -> None:
        if rank != 0 or not (tracking_uri and run_id):
            return
        g_bare.eval()
        with torch.no_grad():
            images = g_bare(fixed_noise)
        g_bare.train()
        with tempfile.TemporaryDirectory() as tmp:
            path = save_grid(images, Path(tmp) / f"iter_{iteration:07d}.png", nrow=8)
            tracking.log_artifact_file(tracking_uri, run_id, path, "samples")

    def checkpoint(iteration: int, last_metrics: dict[str, float]) -> None:
        divergence = replica_divergence(g_bare, d_bare)  # a collective: every rank calls it
        if divergence and rank == 0:
            log.warning(f"[train] replicas differ by {divergence:g} at iteration {iteration}")
        report = {"iteration": iteration, "epoch": position.epoch, "replica_divergence": divergence, **last_metrics}
        if rank != 0:
            ray.train.report(report, checkpoint=None)
            return
        # MLflow first: a Tune scheduler may stop the trial as soon as it sees this report.
        # flush() logs only steps above those MLflow has, so if this checkpoint is lost and
        # the run replays from the one before, nothing is logged twice.
        metrics_buffer.flush()
        with tempfile.TemporaryDirectory() as tmp:
            save_state(tmp, {
                "generator": g_bare.state_dict(), "discriminator": d_bare.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "iteration": iteration, "data_position": (position.epoch, position.batch),
                "fixed_noise": fixed_noise.cpu(), "config": cfg.model_dump(),
                "mlflow_run_id": run_id, "pending_metrics": list(metrics_buffer.pending),
                "world_size": world, "report": report,
            })
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        # Ray Train registers a reported checkpoint only when its controller next polls the
        # workers (every 2 s): a worker lost before then loses the checkpoint, and the run
        # resumes from the one before. Go on only once it is committed.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)

    total = cfg.train.iterations
    if state is not None and start >= total:
        # Resumed from the final checkpoint (the run was lost after committing it, before
        # its caller saw the result): nothing to train, but report that checkpoint again so
        # the caller - a Tune trial restored with its sweep - gets the final result.
        if rank == 0:
            log.info(f"[train] the checkpoint at iteration {start} is final: reporting it again")
            with tempfile.TemporaryDirectory() as tmp:
                save_state(tmp, {**state, "pending_metrics": []})
                ray.train.report(state.get("report") or {"iteration": start},
                                 checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(state.get("report") or {"iteration": start}, checkpoint=None)
        return
    images_per_iteration = world * cfg.train.batch_size * cfg.train.discriminator_steps
    window: list[dict[str, torch.Tensor]] = []
    last: dict[str, float] = {}
    t_start = t_window = time.perf_counter()
    eval_seconds = 0.0
    epoch_seen = position.epoch
    for iteration in range(start + 1, total + 1):
        if cfg.train.fail_at_iteration == iteration and state is None and rank == world - 1:
            log.info(f"[train] fault injection: rank {rank} exits at iteration {iteration}")
            os._exit(1)
        noise_gen.manual_seed(_iteration_seed(cfg.train.seed, rank, iteration))
        window.append(step(batches))

        if iteration % cfg.train.log_every == 0 or iteration == total:
            # One host sync per log window, not per iteration.
            stacked = {k: torch.stack([m[k] for m in window]).float().cpu() for k in window[0]}
            now = time.perf_counter()
            rate = len(window) * images_per_iteration / (now - t_window)
            for i, it in enumerate(range(iteration - len(window) + 1, iteration + 1)):
                metrics_buffer.add(it, {k: v[i].item() for k, v in stacked.items()})
            last = {k: v[-1].item() for k, v in stacked.items()}
            metrics_buffer.add(iteration, {"images_per_second": rate, "epoch": float(position.epoch)})
            if rank == 0:
                eta = (total - iteration) * (now - t_start) / max(1, iteration - start)
                log.info(f"[train] iter {iteration}/{total} epoch {position.epoch} loss_d {last['loss_d']:.3f} "
                         f"loss_g {last['loss_g']:.3f} D(x) {last['d_real']:.2f} D(G(z)) {last['d_fake']:.2f}/"
                         f"{last['d_fake_g']:.2f} {rate:.0f} img/s ETA {eta:.0f}s")
            window, t_window = [], time.perf_counter()

        new_epoch = position.epoch != epoch_seen
        epoch_seen = position.epoch
        final = iteration == total
        if (cfg.train.sample_every and iteration % cfg.train.sample_every == 0) or (
            not cfg.train.sample_every and new_epoch) or final:
            log_grid(iteration)
        # FID (when an evaluator is given) goes out in the same report as a checkpoint, so
        # every FID a scheduler sees belongs to a checkpoint that can be registered.
        evaluate = evaluator is not None and cfg.eval.fid_every and (iteration % cfg.eval.fid_every == 0 or final)
        # Every rank takes part: each generates and embeds its slice of the samples, and the
        # feature statistics are summed across workers before the FID is computed.
        t_eval = time.perf_counter()
        scores = evaluator(g_bare, iteration) if evaluate else {}
        eval_seconds += time.perf_counter() - t_eval
        if rank == 0 and scores:
            metrics_buffer.add(iteration, scores)
            log.info(f"[train] iter {iteration} " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        if iteration % cfg.train.checkpoint_every == 0 or final or evaluate:
            # Where this worker's time went so far: set-up (networks, data, resume), evaluation, training.
            timing = {"setup_seconds": t_start - t_enter, "eval_seconds": eval_seconds,
                      "train_seconds": time.perf_counter() - t_start - eval_seconds}
            metrics_buffer.add(iteration, timing)
            checkpoint(iteration, last | scores | timing)


# ----------------------------------------------------------------------------- driver


def unique_run_name(cfg: PipelineConfig) -> str:
    # Ray resumes silently from an existing run of the same name: never reuse one.
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def git_commit() -> str:
    if os.environ.get("DCGAN_GIT_COMMIT"):
        return os.environ["DCGAN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fit(cfg: PipelineConfig, *, run_name: str, tracking_uri: str | None = None, mlflow_run_id: str | None = None,
        evaluator: Callable | None = None, callbacks: list | None = None, keep_best_by: str | None = None):
    """Run the TorchTrainer; returns Ray Train's Result (result.checkpoint: the last one).

    ``evaluator(generator, iteration) -> {metric: value}`` runs on every rank every
    ``eval.fid_every`` iterations (it may use torch.distributed collectives); ``keep_best_by`` keeps the checkpoints with the lowest
    value of that metric instead of the latest ones (every checkpoint must report it).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg)
    manifest = read_manifest(cfg.dataset_uri)
    if manifest["resolution"] != cfg.model.resolution:
        raise ValueError(f"model.resolution is {cfg.model.resolution} but the dataset at {cfg.dataset_uri} holds "
                         f"{manifest['resolution']}px images: ingest it at {cfg.model.resolution}px or change model.resolution")
    fs, path = storage.filesystem(cfg.checkpoints_uri)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"pipeline": cfg.model_dump(), "tracking_uri": tracking_uri,
                           "mlflow_run_id": mlflow_run_id, "evaluator": evaluator,
                           "shard_in_memory": dataset_bytes(manifest) / cfg.scaling.num_workers <= SHARD_IN_MEMORY_BYTES},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=keep_best_by,
                                               checkpoint_score_order="min"),
            callbacks=callbacks or [],
        ),
        datasets={"train": _quiet(train_dataset(cfg.dataset_uri))},
    )
    return trainer.fit()


# A worker holds its shard in memory when it is at most this big (a dataset of 64 px
# images up to ~85k images per worker); bigger datasets stream from storage every epoch.
SHARD_IN_MEMORY_BYTES = 1 << 30


def dataset_bytes(manifest: dict) -> int:
    """The decoded pixels' size: what ShardInMemory holds (uint8 HWC)."""
    return manifest["count"] * 3 * manifest["resolution"] ** 2


def _quiet(dataset):
    """No Ray Data progress bars for the per-epoch feed: the training log says it all."""
    dataset.context.enable_progress_bars = False
    return dataset


def prepare(cfg: PipelineConfig) -> tuple[str, dict]:
    """Checks that fail fast (tracking, storage), then the dataset (ingested if missing)."""
    from pipelines.ingest import ensure_dataset

    uri = cfg.tracking_uri()
    tracking.check_tracking(uri)
    storage.check_writable(cfg.checkpoints_uri)
    return uri, ensure_dataset(cfg)


def make_evaluator(cfg: PipelineConfig, manifest: dict) -> Callable | None:
    """The in-training FID/KID evaluator (every ``eval.fid_every`` iterations), or None when off."""
    if not cfg.eval.fid_every:
        return None
    from pipelines.evaluate import TrainingEvaluator, reference_stats

    # Computed (or found in the cache) here, before training, not by rank 0 alone mid-run.
    reference_stats(cfg.dataset_uri, manifest, cfg)
    return TrainingEvaluator(cfg, manifest)


def run_training(cfg: PipelineConfig, parent_run_id: str | None = None):
    """The training step with its own MLflow run (nested under parent_run_id when given)."""
    tracking_uri, manifest = prepare(cfg)
    evaluator = make_evaluator(cfg, manifest)
    resumed_run_id = load_state(cfg.train.resume_from).get("mlflow_run_id") if cfg.train.resume_from else None
    run_name = unique_run_name(cfg)
    tags = {"dataset_hash": manifest["content_hash"], "dataset_uri": cfg.dataset_uri, "git_commit": git_commit(),
            "ray_run_name": run_name, "pipeline_step": "train"}
    with tracking.run(tracking_uri, cfg.tracking.experiment, run_name=run_name, run_id=resumed_run_id,
                      parent_run_id=parent_run_id, tags=tags) as active:
        import mlflow

        if resumed_run_id is None:
            mlflow.log_params(tracking.params_from_config(cfg.flat()))
        result = fit(cfg, run_name=run_name, tracking_uri=tracking_uri, mlflow_run_id=active.info.run_id,
                     evaluator=evaluator)
        if result.error:
            raise result.error
        mlflow.set_tag("checkpoint", checkpoint_uri(result) if result.checkpoint else "")
        return active.info.run_id, result, manifest


def checkpoint_uri(result) -> str:
    """The URI of a Result's last checkpoint (s3:// kept as such)."""
    path = result.checkpoint.path
    fs = result.checkpoint.filesystem
    import pyarrow.fs as pafs

    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dcgan train", description="Distributed DCGAN training on Ray Train.")
    ap.add_argument("--config", default="demo", help="a preset name (configs/*.yaml) or a YAML path")
    ap.add_argument("overrides", nargs="*", help="key=value with dotted keys, e.g. train.lr_d=1e-4")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run_id, result, _ = run_training(cfg)
    print(f"[train] done. MLflow run {run_id} at {cfg.tracking_uri()}; last checkpoint: {checkpoint_uri(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
