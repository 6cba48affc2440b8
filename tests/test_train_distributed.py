"""Ray Train DDP training on a real local Ray cluster, 1 and 2 CPU workers (gloo)."""

import copy
import socket
import uuid

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from gan.adversarial import AdversarialStep, unwrap
from pipelines.records import tracking
from pipelines.training import loop, trainer as train
from pipelines.training.checkpoints import build_networks, load_state
from pipelines.config import load_config
from pipelines.driver.named_runs import unique_run_name
from tests.datasets import synthetic_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "synthetic-32px"
    synthetic_dataset(path, count=128, resolution=32)
    return str(path)


def smoke(tmp_path, dataset, *overrides):
    return load_config("smoke", [f"storage={tmp_path}", f"data.dataset={dataset}", "data.shuffle=false", *overrides])


NODE_METRICS = ("cpu_utilization_percentage", "system_memory_usage_megabytes", "disk_usage_percentage",
                "network_receive_megabytes")


def test_two_workers_keep_identical_replicas_and_their_node_logs_its_system_metrics_once(ray_local, tmp_path, dataset):
    """Bit-identical replicas; and the driver's training run gets the training node's CPU,
    memory, disk and network as system/<Ray node id>/..., sampled by one of the node's two
    workers (the lower rank): one monitor a node, so each sampling step is there once."""
    import ray

    cfg = smoke(tmp_path, dataset, "scaling.num_workers=2", "train.iterations=10", "train.checkpoint_every=5",
                "train.keep_checkpoints=1", "train.batch_size=16", "tracking.system_metrics_interval_s=0.5")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracking.run(uri, "system-metrics", run_name="nodes") as active:  # no driver sampling: only the node's
        result = train.fit(cfg, run_name=unique_run_name(cfg), tracking_uri=uri, mlflow_run_id=active.info.run_id)
    assert result.error is None
    assert result.metrics["iteration"] == 10
    assert result.metrics["replica_divergence"] == 0.0  # parameters bit-identical on both ranks
    state = load_state(result.checkpoint.path)
    assert state["iteration"] == 10 and state["world_size"] == 2
    assert set(state) >= {"generator", "discriminator", "opt_g", "opt_d", "fixed_noise", "config", "data_position"}
    # keep_checkpoints=1: only the last checkpoint is kept
    run_dir = tmp_path / "checkpoints" / result.path.split("/")[-1]
    assert len([p for p in run_dir.glob("checkpoint_2*") if p.is_dir()]) == 1

    node = ray.get_runtime_context().get_node_id()  # the one node of the local cluster
    client = MlflowClient(uri)
    run = client.get_run(active.info.run_id)
    system = sorted(k for k in run.data.metrics if k.startswith("system/"))
    assert {k.split("/")[1] for k in system} == {node}, system
    assert {f"system/{node}/{key}" for key in NODE_METRICS} <= set(system), system
    steps = [m.step for m in client.get_metric_history(run.info.run_id, f"system/{node}/cpu_utilization_percentage")]
    assert steps and len(steps) == len(set(steps)), f"a step logged twice: two monitors on one node? {steps}"
    assert run.data.tags[f"system_node.{node}"] == socket.gethostname()


def _one_d_step(config):
    """Ray Train worker: one D step of the project's DDP setup on this rank's slice."""
    import ray.train
    import ray.train.torch

    from pipelines.config import PipelineConfig

    cfg = PipelineConfig.model_validate(config["pipeline"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    g, d, opt_g, opt_d, opts = loop.prepare_networks(cfg, ray.train.torch.get_device(), world)
    step = AdversarialStep(g, d, opt_g, opt_d, cfg.model.latent_dim)
    b = config["images"].shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    step.discriminator_step(config["images"][sl], config["z"][sl])
    if rank == 0:
        torch.save(unwrap(d).state_dict(), config["out"])


@pytest.mark.parametrize("sync_batchnorm", [True, False])
def test_two_workers_batch_b_equal_one_worker_batch_2b(ray_local, tmp_path, sync_batchnorm):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Batch norm in D is what this compares (the default recipe has none there: spectral norm).
    cfg = load_config("smoke", [f"train.sync_batchnorm={sync_batchnorm}", "train.channels_last=off", "model.d_norm=batch"])
    torch.manual_seed(1)
    images = torch.rand(16, 3, 32, 32) * 2 - 1
    z = torch.randn(16, cfg.model.latent_dim, 1, 1)
    out = tmp_path / "d_two_workers.pt"
    TorchTrainer(
        _one_d_step,
        train_loop_config={"pipeline": cfg.model_dump(), "images": images, "z": z, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"eq-{uuid.uuid4().hex[:6]}", storage_path=str(tmp_path)),
    ).fit()
    two = torch.load(out)

    # The same step in one process on the whole batch of 2b.
    torch.manual_seed(cfg.train.seed)
    g, d = build_networks(cfg.model.model_dump())
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.train.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.train.lr_d, betas=(0.5, 0.999))
    d_before = copy.deepcopy(d.state_dict())
    AdversarialStep(g, d, opt_g, opt_d, cfg.model.latent_dim).discriminator_step(images, z)
    one = d.state_dict()

    changed = [k for k in one if k.endswith("weight") and not torch.equal(one[k], d_before[k])]
    assert changed, "the D step changed nothing"
    close = all(torch.allclose(two[k].float(), one[k].float(), atol=1e-5, rtol=1e-4) for k in one if k.endswith("weight"))
    # With per-worker batch norm (the paper's default) statistics come from b images, not 2b,
    # so the update differs; synchronised batch norm makes the two runs the same step.
    assert close is sync_batchnorm


def test_killed_worker_resumes_without_gaps_or_duplicates(ray_local, tmp_path, dataset):
    cfg = smoke(tmp_path, dataset, "scaling.num_workers=2", "train.iterations=10", "train.checkpoint_every=4",
                "train.log_every=2", "train.batch_size=16", "train.fail_at_iteration=7", "scaling.max_failures=2")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracking.run(uri, "failures", run_name="kill-test") as active:
        result = train.fit(cfg, run_name=unique_run_name(cfg), tracking_uri=uri, mlflow_run_id=active.info.run_id)
    assert result.error is None
    assert result.metrics["iteration"] == 10
    client = MlflowClient(uri)
    run = client.get_run(active.info.run_id)
    assert run.info.status == "FINISHED"
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, 11)), f"{key}: {steps}"
    # the failure really happened: the group restarted from the checkpoint at iteration 4
    resumed = client.get_metric_history(run.info.run_id, "resumed_at_iteration")
    assert [m.value for m in resumed] == [4.0]
    assert any("samples" in a.path for a in client.list_artifacts(run.info.run_id, "images"))  # log_image(key=, step=)


def test_checkpoints_to_s3_and_resume_by_hand(ray_local, tmp_path, dataset, s3_env):
    bucket = s3_env.create_bucket("ckpt-" + uuid.uuid4().hex[:8])
    cfg = smoke(tmp_path, dataset, f"storage=s3://{bucket}/dcgan", "train.iterations=4", "train.checkpoint_every=2")
    result = train.fit(cfg, run_name=unique_run_name(cfg))
    assert result.error is None
    ckpt = train.checkpoint_uri(result)
    assert ckpt.startswith(f"s3://{bucket}/dcgan/checkpoints/")
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("checkpoint.pt") for k in keys)

    more = smoke(tmp_path, dataset, f"storage=s3://{bucket}/dcgan", "train.iterations=6", "train.checkpoint_every=2",
                 f"train.resume_from={ckpt}")
    resumed = train.fit(more, run_name=unique_run_name(more))
    assert resumed.error is None and resumed.metrics["iteration"] == 6
    first, second = load_state(ckpt), load_state(train.checkpoint_uri(resumed))
    assert first["iteration"] == 4 and second["iteration"] == 6
    assert not torch.equal(first["generator"]["main.to_rgb.0.weight"], second["generator"]["main.to_rgb.0.weight"])


def test_a_run_resumed_from_its_final_checkpoint_reports_it_again(ray_local, tmp_path, dataset):
    # What a Tune trial restored with its sweep meets when it was lost after its last
    # checkpoint and before Tune saw it: the same Ray Train run again, nothing left to
    # train, and Tune waiting for the final result (its FID decides the sweep).
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = smoke(tmp_path, dataset, "train.iterations=4", "train.checkpoint_every=2")
    name = unique_run_name(cfg)
    first = train.fit(cfg, run_name=name)
    assert first.error is None

    def trial(config):
        result = train.fit(cfg, run_name=name, callbacks=[TuneReportCallback()])
        if result.error:
            raise result.error

    tuner = tune.Tuner(tune.with_resources(trial, {"CPU": 0.1}),
                       run_config=tune.RunConfig(name="again", storage_path=str(tmp_path / "tune")))
    (again,) = tuner.fit()
    assert again.error is None
    assert again.metrics["iteration"] == 4 and "loss_d" in again.metrics
    before, after = load_state(train.checkpoint_uri(first)), load_state(again.metrics["checkpoint_path"])
    assert after["iteration"] == 4
    assert torch.equal(before["generator"]["main.to_rgb.0.weight"], after["generator"]["main.to_rgb.0.weight"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_run_ends_with_the_weights_of_an_uninterrupted_one(ray_local, tmp_path, dataset, workers):
    """A worker dies mid-epoch; the group resumes from the last checkpoint and must see
    exactly the batches (and noise) the uninterrupted run saw: the same final G and D.
    With one worker, the recipe options beyond the paper are on too: spectral norm's
    power-iteration vectors, and the augmentations and flips drawn from each iteration's
    noise, must resume exactly as well."""
    common = ["data.shuffle=true", f"scaling.num_workers={workers}", "train.iterations=10", "train.checkpoint_every=4",
              "train.log_every=2", "train.batch_size=16", "train.deterministic=true", "train.ema_decay=0.999"]
    if workers == 1:
        common += ["model.d_norm=spectral", "train.discriminator_loss=hinge", "train.generator_loss=hinge",
                   "train.augment=color,translation,cutout", "train.hflip=true"]
    else:  # the paper's recipe: batch norm's running statistics across a resumed DDP group
        common += ["model.d_norm=batch", "train.discriminator_loss=cross_entropy",
                   "train.generator_loss=non_saturating", "train.augment="]
    clean_cfg = smoke(tmp_path / "clean", dataset, *common)
    clean = train.fit(clean_cfg, run_name=unique_run_name(clean_cfg))
    killed_cfg = smoke(tmp_path / "killed", dataset, *common, "train.fail_at_iteration=7", "scaling.max_failures=2")
    killed = train.fit(killed_cfg, run_name=unique_run_name(killed_cfg))
    assert clean.error is None and killed.error is None
    a, b = load_state(train.checkpoint_uri(clean)), load_state(train.checkpoint_uri(killed))
    assert a["iteration"] == b["iteration"] == 10 and a["data_position"] == b["data_position"]
    assert a["generator_ema"]["steps"] == b["generator_ema"]["steps"] == 10  # the running average resumed too
    assert b["config"]["model"]["d_norm"] == ("spectral" if workers == 1 else "batch")
    for net, weights, others in (("generator", a["generator"], b["generator"]),
                                 ("discriminator", a["discriminator"], b["discriminator"]),
                                 ("generator_ema", a["generator_ema"]["module"], b["generator_ema"]["module"])):
        for key, value in weights.items():
            other = others[key]
            if value.is_floating_point():
                assert torch.allclose(value, other, rtol=1e-6, atol=0), f"{net}.{key} differs after the resume"
            else:
                assert torch.equal(value, other), f"{net}.{key} differs after the resume"
    # the failure really happened: the killed run's second attempt started from iteration 4
    assert (tmp_path / "killed" / "checkpoints").exists()


def test_checkpoints_keep_the_running_average_of_g(ray_local, tmp_path, dataset):
    """train.ema_decay: the checkpoint holds G's running average beside G itself; evaluation,
    registration and `dcgan generate` load the average, and the paper's plain G stays there."""
    from pipelines.training.checkpoints import generator_from_state

    cfg = smoke(tmp_path / "ema", dataset, "train.iterations=4", "train.checkpoint_every=4", "train.ema_decay=0.5",
                "train.ema_rampup=null")
    state = load_state(train.checkpoint_uri(train.fit(cfg, run_name=unique_run_name(cfg))))
    assert state["generator_ema"]["steps"] == 4 and state["generator_ema"]["decay"] == 0.5
    plain, averaged = generator_from_state(state, ema=False), generator_from_state(state)
    key = "main.to_rgb.0.weight"
    assert torch.equal(plain.state_dict()[key], state["generator"][key])
    assert not torch.equal(averaged.state_dict()[key], plain.state_dict()[key])

    off = smoke(tmp_path / "off", dataset, "train.iterations=2", "train.checkpoint_every=2", "train.ema_decay=0")
    state = load_state(train.checkpoint_uri(train.fit(off, run_name=unique_run_name(off))))
    assert state["generator_ema"] is None
    assert torch.equal(generator_from_state(state).state_dict()[key], state["generator"][key])
