"""What every Ray Train worker runs: Algorithm 1 on its shard, with G and D under DDP.

:func:`train_loop_per_worker` reads top to bottom as a short sequence of named steps.
Ray's seams are the numbered ones, as in Ray's own TorchTrainer examples:

    (1) ray.train.torch.prepare_model   G and D wrapped in DDP          build_worker
    (2) ray.train.get_checkpoint        resume after a lost worker      restore
    (3) ray.train.get_dataset_shard     this worker's share of the data build_feed
    (4) ray.train.report(..., checkpoint)  metrics and state, rank 0    checkpoint_and_report

Resuming repeats no iteration: the data position and every iteration's noise are
restored exactly (the noise of iteration i on rank r is a pure function of
(seed, r, i)). Metrics go to MLflow from rank 0 only, committed together with each
checkpoint, so a replay after a lost checkpoint logs nothing twice; beside them, one
worker a node samples the node's system metrics (:func:`node_system_metrics`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from gan.adversarial import AdversarialStep, DataPosition, make_optimizers, unwrap
from gan.ema import GeneratorEMA
from gan.images import grid
from pipelines.cluster import storage
from pipelines.config import PipelineConfig
from pipelines.records import tracking
from pipelines.training import outages, reporting, stopping
from pipelines.training.checkpoints import build_networks, load_state, newest_checkpoint_file, save_state
from pipelines.training.distributed import convert_sync_batchnorm, ddp_kwargs, first_rank_on_node, replica_divergence
from pipelines.training.hardware import step_options
from pipelines.training.worker import Worker, build_feed

# A logger, not print: Ray Train tees a worker's print to its logger *and* stdout, which
# shows every line twice on the driver's console.
log = logging.getLogger("dcgan.train")
SAMPLE_GRID_SIZE = 64
FIXED_NOISE_SEED = 1234
SAMPLES_KEY = "samples"  # the MLflow image key of the sample grids


def iteration_seed(seed: int, rank: int, iteration: int) -> int:
    """Noise of iteration i on rank r is a pure function of (seed, r, i): exact resume."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1, dtype=np.uint64)[0] >> 1)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    worker = build_worker(loop_config)                        # (1)
    restore(worker, ray.train.get_checkpoint())               # (2)
    with node_system_metrics(worker):  # one worker a node samples it into the run (system/<node id>/...)
        open_metrics(worker, loop_config)
        if worker.start >= worker.cfg.train.iterations:
            report_final_checkpoint_again(worker)
            return
        batches = build_feed(worker, ray.train.get_dataset_shard("train"))  # (3)
        worker.t_start = time.perf_counter()
        total, epoch_seen = worker.cfg.train.iterations, worker.position.epoch
        window: list[dict[str, torch.Tensor]] = []
        last: dict[str, float] = {}
        t_window = time.perf_counter()
        for iteration in range(worker.start + 1, total + 1):
            window.append(train_iteration(worker, batches, iteration))
            if iteration % worker.cfg.train.log_every == 0 or iteration == total:
                last = log_window(worker, window, iteration, t_window)
                window, t_window = [], time.perf_counter()
            new_epoch, epoch_seen = worker.position.epoch != epoch_seen, worker.position.epoch
            if sample_due(worker.cfg, iteration, new_epoch):
                outages.best_effort(worker, log_sample_grid, worker, iteration)
            scores = measure_fid(worker, iteration)
            if iteration % worker.cfg.train.checkpoint_every == 0 or iteration == total or scores or worker.stopping:
                outages.wait_for_storage(worker, iteration)
                checkpoint_and_report(worker, iteration, last | scores)  # (4)
                if outages.after_checkpoint(worker, iteration):
                    return
            if worker.stopping:  # the job was stopped (see pipelines/training/stopping.py)
                return


# ----------------------------------------------------------------------------- set-up


def prepare_networks(cfg: PipelineConfig, device: torch.device, world: int):
    """G and D (DDP-wrapped when world > 1), their optimizers, and the device options.

    Call inside a Ray Train worker: ``prepare_model`` wraps in DDP (it returns the bare
    module for a single worker, which ``gan.adversarial.unwrap`` handles alike)."""
    import ray.train.torch

    opts = step_options(device, cfg.train.mixed_precision, cfg.train.channels_last)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)  # CUDA also needs CUBLAS_WORKSPACE_CONFIG (set below)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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


def build_worker(loop_config: dict[str, Any]) -> Worker:
    """This worker's networks under DDP (:func:`prepare_networks`), the adversarial step and
    the fixed noise of the sample grids."""
    import ray.train
    import ray.train.torch

    cfg = PipelineConfig.model_validate(loop_config["pipeline"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    g, d, opt_g, opt_d, opts = prepare_networks(cfg, device, world)
    noise = torch.Generator(device=device)
    step = AdversarialStep(generator=g, discriminator=d, opt_g=opt_g, opt_d=opt_d, latent_dim=cfg.model.latent_dim,
                           discriminator_steps=cfg.train.discriminator_steps, generator_loss=cfg.train.generator_loss,
                           discriminator_loss=cfg.train.discriminator_loss, augment=cfg.train.augment, hflip=cfg.train.hflip,
                           autocast_dtype=opts["autocast_dtype"], channels_last=opts["channels_last"],
                           noise_generator=noise, compile=cfg.train.compile, cuda_graphs=cfg.train.cuda_graphs)
    fixed_noise = torch.randn(SAMPLE_GRID_SIZE, cfg.model.latent_dim, 1, 1,
                              generator=torch.Generator().manual_seed(FIXED_NOISE_SEED))
    return Worker(cfg=cfg, manifest=loop_config["manifest"], rank=rank, world=world, g=g, d=d, opt_g=opt_g, opt_d=opt_d, step=step, noise=noise,
                  fixed_noise=fixed_noise.to(device), tracking_uri=loop_config.get("tracking_uri"),
                  run_id=loop_config.get("mlflow_run_id"), evaluator=loop_config.get("evaluator"),
                  stop_signal=loop_config.get("stop_signal"),
                  ema=GeneratorEMA(unwrap(g), cfg.train.ema_decay, cfg.train.ema_rampup) if cfg.train.ema_decay else None)


def restore(worker: Worker, ray_checkpoint) -> None:
    """Ray's checkpoint after a failure, else a checkpoint named by hand (``train.resume_from``).

    A named run (``train.run_name``) takes the newest whole checkpoint in its folder when
    Ray's is older or missing: a driver lost between a checkpoint's upload and Ray
    registering it leaves one that Ray's record does not list."""
    state = None
    newest = newest_of_named_run(worker.cfg)
    if ray_checkpoint is not None and not _newer(newest, ray_checkpoint.path):
        with ray_checkpoint.as_directory() as ckpt_dir:
            state = load_state(ckpt_dir)
    elif newest or worker.cfg.train.resume_from:
        state = load_state(newest or worker.cfg.train.resume_from)
    if state is None:
        return
    worker.g_bare.load_state_dict(state["generator"])
    worker.d_bare.load_state_dict(state["discriminator"])
    worker.opt_g.load_state_dict(state["opt_g"])
    worker.opt_d.load_state_dict(state["opt_d"])
    worker.fixed_noise = state["fixed_noise"].to(worker.fixed_noise.device)
    worker.start = state["iteration"]
    worker.position = DataPosition(*state["data_position"])
    if worker.ema is not None and state.get("generator_ema"):
        worker.ema.load_state_dict(state["generator_ema"])
    worker.restored = state
    if worker.rank == 0:
        log.info(f"[train] resumed at iteration {worker.start} (epoch {worker.position.epoch}, "
                 f"batch {worker.position.batch})")


def newest_of_named_run(cfg) -> str | None:
    """The newest whole checkpoint (its checkpoint.pt) of a named run's folder, if any."""
    if not cfg.train.run_name:
        return None
    newest = newest_checkpoint_file(storage.join(cfg.checkpoints_uri, cfg.train.run_name))
    return newest if storage.exists(newest) else None


def _newer(checkpoint_file: str | None, ray_path: str) -> bool:
    """Whether checkpoint_file's folder (``checkpoint_<time>``) is newer than Ray's checkpoint folder."""
    if not checkpoint_file:
        return False
    return checkpoint_file.rsplit("/", 2)[-2] > ray_path.rstrip("/").rsplit("/", 1)[-1]


def node_system_metrics(worker: Worker):
    """On each Ray node, its lowest-ranked worker samples the node's CPU, memory, disk,
    network and GPUs into the training run, as ``system/<Ray node id>/...``
    (:mod:`pipelines.records.system_metrics`); the other workers do nothing. A collective."""
    import ray

    from pipelines.records.system_metrics import node_monitor

    node = ray.get_runtime_context().get_node_id()
    if not first_rank_on_node(node, worker.rank):
        return contextlib.nullcontext()
    return node_monitor(worker.tracking_uri, worker.run_id, node, worker.cfg.tracking.system_metrics_interval_s,
                        gpus_expected=worker.fixed_noise.device.type == "cuda", resume=worker.restored is not None)


def open_metrics(worker: Worker, loop_config: dict[str, Any]) -> None:
    """Rank 0's metric buffer, first committing what a crash kept from the last checkpoint."""
    pending = (worker.restored or {}).get("pending_metrics", [])
    worker.metrics = tracking.MetricBuffer(worker.tracking_uri if worker.rank == 0 else None, worker.run_id, pending,
                                           outage_timeout_s=worker.cfg.tracking.outage_timeout_s)
    if worker.rank == 0:
        worker.metrics.flush()
        if worker.restored is not None and worker.metrics.client is not None and worker.metrics.down_since is None:
            # An event users see in MLflow: where this run (re)started from a checkpoint.
            worker.metrics.client.log_metric(worker.run_id, "resumed_at_iteration", worker.start, step=worker.start)


# ----------------------------------------------------------------------------- one iteration and its window


def train_iteration(worker: Worker, batches: Iterator[torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
    cfg = worker.cfg
    if cfg.train.fail_at_iteration == iteration and worker.restored is None and worker.rank == worker.world - 1:
        log.info(f"[train] fault injection: rank {worker.rank} exits at iteration {iteration}")
        os._exit(1)
    worker.noise.manual_seed(iteration_seed(cfg.train.seed, worker.rank, iteration))
    metrics = worker.step(batches)
    if worker.ema is not None:
        worker.ema.update(worker.g)  # identical on every rank: DDP keeps the replicas equal
    return metrics


def log_window(worker: Worker, window: list[dict[str, torch.Tensor]], iteration: int, t_window: float) -> dict[str, float]:
    """Buffer the window's per-iteration metrics (one host sync per window, not per
    iteration) and print a progress line; returns the last iteration's metrics."""
    cfg = worker.cfg
    stacked = {k: torch.stack([m[k] for m in window]).float().cpu() for k in window[0]}
    now = time.perf_counter()
    rate = len(window) * worker.world * cfg.train.batch_size * cfg.train.discriminator_steps / (now - t_window)
    for i, it in enumerate(range(iteration - len(window) + 1, iteration + 1)):
        worker.metrics.add(it, {k: v[i].item() for k, v in stacked.items()})
    last = {k: v[-1].item() for k, v in stacked.items()}
    devices = reporting.device_metrics(worker.fixed_noise.device, worker.rank, worker.world)  # a collective on GPUs
    worker.metrics.add(iteration, {"images_per_second": rate, "epoch": float(worker.position.epoch), **devices})
    worker.stopping = stopping.worker_stop_requested(worker.stop_signal, worker.rank, worker.world,
                                                     worker.fixed_noise.device)
    if worker.rank == 0:
        total = cfg.train.iterations
        eta = (total - iteration) * (now - worker.t_start) / max(1, iteration - worker.start)
        log.info(f"[train] iter {iteration}/{total} epoch {worker.position.epoch} loss_d {last['loss_d']:.3f} "
                 f"loss_g {last['loss_g']:.3f} D(x) {last['d_real']:.2f} D(G(z)) {last['d_fake']:.2f}/"
                 f"{last['d_fake_g']:.2f} {rate:.0f} img/s ETA {eta:.0f}s")
    return last


def sample_due(cfg: PipelineConfig, iteration: int, new_epoch: bool) -> bool:
    """A grid every ``train.sample_every`` iterations (0: once per epoch), and at the end."""
    every = cfg.train.sample_every
    return (every and iteration % every == 0) or (not every and new_epoch) or iteration == cfg.train.iterations


def log_sample_grid(worker: Worker, iteration: int) -> None:
    """Rank 0: G on the fixed noise, as an MLflow image with key ``samples`` at step
    ``iteration`` (the run page's image slider walks through them)."""
    if worker.rank != 0 or not (worker.tracking_uri and worker.run_id):
        return
    g = worker.g_eval
    was_training = g.training
    g.eval()
    with torch.no_grad():
        images = g(worker.fixed_noise)
    g.train(was_training)
    worker.metrics.client.log_image(worker.run_id, grid(images, nrow=8), key=SAMPLES_KEY, step=iteration,
                                    synchronous=True)


def measure_fid(worker: Worker, iteration: int) -> dict[str, float]:
    """FID/KID every ``eval.fid_every`` iterations and at the end, when an evaluator is given.

    Every rank takes part: each generates and embeds its slice of the samples, and the
    feature statistics are summed across workers. The scores go out in the same report
    as a checkpoint, so every FID a scheduler sees belongs to a checkpoint that can be
    registered."""
    cfg = worker.cfg
    every = cfg.eval.fid_every
    if worker.evaluator is None or not every or not (iteration % every == 0 or iteration == cfg.train.iterations):
        return {}
    t_eval = time.perf_counter()
    scores = worker.evaluator(worker.g_eval, iteration)
    worker.eval_seconds += time.perf_counter() - t_eval
    if worker.rank == 0 and scores:
        worker.metrics.add(iteration, scores)
        log.info(f"[train] iter {iteration} " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return scores


def timing(worker: Worker) -> dict[str, float]:
    """Where this worker's time went so far: set-up (networks, data, resume), evaluation, training."""
    return {"setup_seconds": worker.t_start - worker.t_enter, "eval_seconds": worker.eval_seconds,
            "train_seconds": time.perf_counter() - worker.t_start - worker.eval_seconds}


# ----------------------------------------------------------------------------- checkpoints


def training_state(worker: Worker, iteration: int, report: dict[str, float]) -> dict[str, Any]:
    """Everything a resume needs, and the metrics MLflow has not committed yet."""
    return {
        "generator": worker.g_bare.state_dict(), "discriminator": worker.d_bare.state_dict(),
        "generator_ema": worker.ema.state_dict() if worker.ema is not None else None,
        "opt_g": worker.opt_g.state_dict(), "opt_d": worker.opt_d.state_dict(),
        "iteration": iteration, "data_position": (worker.position.epoch, worker.position.batch),
        "fixed_noise": worker.fixed_noise.cpu(), "config": worker.cfg.model_dump(),
        "mlflow_run_id": worker.run_id, "pending_metrics": list(worker.metrics.pending),
        "world_size": worker.world, "report": report,
    }


def checkpoint_and_report(worker: Worker, iteration: int, metrics: dict[str, float]) -> None:
    import ray.train

    spent = timing(worker)
    worker.metrics.add(iteration, spent)
    divergence = replica_divergence(worker.g_bare, worker.d_bare)  # a collective: every rank calls it
    if divergence and worker.rank == 0:
        log.warning(f"[train] replicas differ by {divergence:g} at iteration {iteration}")
    report = {"iteration": iteration, "epoch": worker.position.epoch, "replica_divergence": divergence, **metrics, **spent}
    if worker.rank != 0:
        ray.train.report(report, checkpoint=None)
        return
    # MLflow first: a Tune scheduler may stop the trial as soon as it sees this report.
    # flush() logs only steps above those MLflow has, so if this checkpoint is lost and
    # the run replays from the one before, nothing is logged twice.
    worker.metrics.flush()
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, training_state(worker, iteration, report))
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    # Ray Train registers a reported checkpoint only when its controller next polls the
    # workers: a worker lost before then loses the checkpoint, and the run resumes from the
    # one before. Go on only once it is committed.
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    if worker.metrics.down_since is None:  # while MLflow is away its client would retry for minutes: no plots
        outages.best_effort(worker, reporting.log_training_plots, worker.metrics.client, worker.run_id)


def report_final_checkpoint_again(worker: Worker) -> None:
    """Resumed from the final checkpoint (the run was lost after committing it, before its
    caller saw the result): nothing to train, but report that checkpoint again so the
    caller - a Tune trial restored with its sweep - gets the final result."""
    import ray.train

    state = worker.restored
    report = state.get("report") or {"iteration": worker.start}
    if worker.rank != 0:
        ray.train.report(report, checkpoint=None)
        return
    log.info(f"[train] the checkpoint at iteration {worker.start} is final: reporting it again")
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, {**state, "pending_metrics": []})
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
