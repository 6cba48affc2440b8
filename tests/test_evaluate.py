"""The evaluation step on a small real dataset (LSUN photos in the canonical Parquet format):
cached reference statistics, Ray-distributed statistics that merge exactly, the audit
inside the step, S3, and `python -m pipelines.steps.evaluate` logging into MLflow."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gan import fid
from gan.models import Generator
from pipelines.cluster import storage
from pipelines.training.checkpoints import save_state
from pipelines.config import load_config
from pipelines.dataset.rows import dataset_chunks, read_rows
from pipelines.evaluation.cache import near_duplicate_keys, reference_stats
from pipelines.evaluation.generator_eval import evaluate_generator
from pipelines.evaluation.in_training import TrainingEvaluator
from pipelines.evaluation.metrics import metric_key, sample_tag
from pipelines.evaluation.pool import LATENT_SEED_BLOCK, WorkerPool, sample_latents
from pipelines.steps.evaluate import main
from pipelines.records.tracking import CHECKPOINT_TAG
from tests.datasets import write_dataset
from tests.photos import load_squares

N_IMAGES, RESOLUTION = 24, 32
AE_STEPS = 200


@pytest.fixture(scope="module")
def photos(lsun_files):
    return load_squares(lsun_files[:N_IMAGES], RESOLUTION)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    uri = str(tmp_path_factory.mktemp("eval") / "dataset")
    write_dataset(uri, photos, shards=2, row_group_size=8)
    return uri


@pytest.fixture(scope="module")
def ray_pool(ray_local):
    """Two evaluation actors on the session's local Ray cluster (each loads Inception once)."""
    with WorkerPool(workers=2, progress=False) as pool:
        yield pool


def smoke_config(*overrides):
    return load_config("smoke", ["eval.fid_samples=16", "eval.audit_samples=16", "eval.batch_size=16",
                                 "eval.kid_subsets=10", *overrides])


def tiny_generator(seed=0):
    torch.manual_seed(seed)
    return Generator(resolution=RESOLUTION, latent_dim=16, width=8)


class CopyingGenerator(nn.Module):
    """A generator that memorised its training set: every sample is a training image."""

    def __init__(self, images_uint8, latent_dim=16):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("images", torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1)

    def forward(self, z):
        idx = (z.flatten(1)[:, 0].abs() * 1e4).long() % len(self.images)
        return self.images[idx]


def test_dataset_rows_are_read_in_one_global_order(dataset, photos):
    chunks = dataset_chunks(dataset, rows_per_chunk=7)
    assert sum(c.rows for c in chunks) == N_IMAGES and chunks[0].first == 0
    idx = np.array([23, 0, 13, 7, 8])
    np.testing.assert_array_equal(read_rows(chunks, idx, RESOLUTION), photos[idx])


def test_reference_statistics_are_cached_beside_the_dataset(dataset, photos, tmp_path):
    first = reference_stats(dataset, rows_per_chunk=16, kid_features=10, progress=False)
    assert not first.from_cache and first.stats.count == N_IMAGES and first.features.shape == (10, fid.FEATURE_DIM)
    assert first.cache_uri.startswith(storage.join(dataset, "_eval")) and storage.exists(first.cache_uri)
    again = reference_stats(dataset, rows_per_chunk=16, kid_features=10, progress=False)
    assert again.from_cache and again.cache_uri == first.cache_uri
    np.testing.assert_array_equal(again.stats.outer, first.stats.outer)
    np.testing.assert_array_equal(again.features, first.features)

    # A folder re-ingested with other images: its cache entry no longer applies.
    changed = str(tmp_path / "changed")
    write_dataset(changed, photos[:4], shards=1)
    before = reference_stats(changed, kid_features=4, progress=False)
    storage.delete_dir(changed)
    write_dataset(changed, photos[4:8], shards=1)
    after = reference_stats(changed, kid_features=4, progress=False)
    assert not after.from_cache and after.cache_uri != before.cache_uri
    assert not np.allclose(after.stats.total, before.stats.total)


def test_distributed_statistics_merge_exactly(dataset, photos, ray_pool):
    spread = reference_stats(dataset, pool=ray_pool, rows_per_chunk=9, kid_features=N_IMAGES, refresh=True)
    assert spread.stats.count == N_IMAGES and spread.features.shape == (N_IMAGES, fid.FEATURE_DIM)
    # Four chunks computed on two actors, merged as sums = the statistics of all features at once.
    whole = fid.FeatureStats.of(spread.features)
    np.testing.assert_allclose(spread.stats.total, whole.total, rtol=1e-13)
    np.testing.assert_allclose(spread.stats.outer, whole.outer, rtol=1e-12, atol=1e-12)
    # and the actors compute the features this process does
    local = fid.InceptionFeatures()(photos[:4])
    np.testing.assert_allclose(spread.features[:4], local, rtol=1e-4, atol=1e-4)


def test_generated_samples_do_not_depend_on_the_split():
    whole = sample_latents(0, LATENT_SEED_BLOCK + 200, seed=3, dim=4)
    parts = torch.cat([sample_latents(0, 120, 3, 4), sample_latents(120, LATENT_SEED_BLOCK, 3, 4),
                       sample_latents(LATENT_SEED_BLOCK + 120, 80, 3, 4)])
    assert torch.equal(whole, parts)
    assert not torch.equal(sample_latents(0, 10, seed=4, dim=4), whole[:10])
    assert sample_tag(10000) == "10k" and sample_tag(50000) == "50k" and sample_tag(200) == "200" and sample_tag(1500) == "1500"
    assert metric_key("fid", 10000) == "fid_10k"


def test_evaluation_reports_fid_kid_audit_and_grids(dataset, photos, tmp_path):
    cfg = smoke_config()
    untrained = evaluate_generator(tiny_generator(), dataset, cfg, out_dir=tmp_path / "untrained",
                                   autoencoder_steps=AE_STEPS, progress=False)
    assert set(untrained.metrics) == {"fid_16", "kid_16", "kid_16_std", "audit_exact_collisions_16",
                                      "audit_flagged_16", "audit_median_hamming_16"}
    assert untrained.metrics["fid_16"] > 100 and untrained.metrics["audit_exact_collisions_16"] == 0.0
    report = json.loads(json.dumps(untrained.audit))
    assert report["samples"] == 16 and report["training_images"] == N_IMAGES
    assert Image.open(untrained.grids["samples"]).size[0] > 4 * RESOLUTION
    assert Image.open(untrained.grids["audit"]).size[0] == 4 * RESOLUTION + 5 * 2  # sample + 3 neighbours, padded

    copier = evaluate_generator(CopyingGenerator(photos), dataset, cfg, out_dir=tmp_path / "copier",
                                autoencoder_steps=AE_STEPS, progress=False)
    assert copier.metrics["audit_exact_collisions_16"] == 1.0 and copier.metrics["audit_flagged_16"] == 1.0
    assert all(p["pixel_rmse"] == 0.0 for p in copier.audit["closest_pairs"])
    assert copier.metrics["fid_16"] < 0.5 * untrained.metrics["fid_16"]
    assert copier.metrics["kid_16"] < untrained.metrics["kid_16"]


def test_distributed_evaluation_equals_local(dataset, ray_pool, tmp_path):
    cfg = smoke_config("eval.audit=false")
    g = tiny_generator(1)
    local = evaluate_generator(g, dataset, cfg, samples=20, out_dir=tmp_path / "local", progress=False)
    spread = evaluate_generator(g, dataset, cfg, samples=20, out_dir=tmp_path / "ray", pool=ray_pool,
                                samples_per_task=8)  # three tasks over two actors
    assert set(spread.metrics) == {"fid_20", "kid_20", "kid_20_std"} and spread.audit is None
    assert spread.metrics["fid_20"] == pytest.approx(local.metrics["fid_20"], rel=1e-4)
    a = np.asarray(Image.open(local.grids["samples"]), np.int16)
    b = np.asarray(Image.open(spread.grids["samples"]), np.int16)
    assert np.abs(a - b).max() <= 1  # the same samples, generated on the actors


def test_reference_statistics_cached_in_s3(s3_env, photos):
    uri = "s3://eval-test/datasets/photos-32px"
    write_dataset(uri, photos[:6], shards=2, row_group_size=2)
    first = reference_stats(uri, kid_features=6, progress=False)
    assert first.cache_uri.startswith(uri + "/_eval/") and storage.exists(first.cache_uri)
    again = reference_stats(uri, kid_features=6, progress=False)
    assert again.from_cache and again.stats.count == 6
    np.testing.assert_array_equal(again.stats.total, first.stats.total)


def test_command_logs_into_mlflow(dataset, tmp_path, capsys):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = smoke_config(f"data.dataset={dataset}", f"tracking.uri={tracking}", "eval.fid_samples=8",
                       "eval.audit_samples=8", "eval.batch_size=8")
    g = Generator(resolution=RESOLUTION, latent_dim=cfg.model.latent_dim, width=cfg.model.g_width)
    checkpoint = tmp_path / "checkpoint-000020"
    save_state(checkpoint, {"generator": g.state_dict(), "config": cfg.model_dump(), "iteration": 20})

    assert main(["--run", str(checkpoint), "--out", str(tmp_path / "grids"), "--autoencoder-steps", str(AE_STEPS)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    client = mlflow.MlflowClient(tracking)
    run = client.get_run(printed["run_id"])
    assert run.data.metrics["fid_8"] == pytest.approx(printed["fid_8"]) and printed["step"] == 20
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fid_8")] == [20]
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/audit-8-step0000020.json" in artifacts
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/step0000020")}
    assert grids == {"evaluation/step0000020/samples-8.png", "evaluation/step0000020/audit-8.png"}

    # A training run that tagged its checkpoint: `--run <id>` evaluates it and logs into it.
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    training = client.create_run(experiment, tags={CHECKPOINT_TAG: str(checkpoint)}).info.run_id
    assert main(["--run", training, f"tracking.uri={tracking}", "--autoencoder-steps", str(AE_STEPS)]) == 0
    assert "fid_8" in client.get_run(training).data.metrics

    assert main(["--run", "0123456789abcdef", f"tracking.uri={tracking}"]) == 2
    assert "neither a checkpoint path nor an MLflow run" in capsys.readouterr().err


def test_near_duplicates_of_a_dataset_by_key(photos, tmp_path):
    from tests.photos import jpeg_reencode

    salted = np.concatenate([photos[:12], photos[[3]], jpeg_reencode(photos[[7]], quality=90)])
    uri = str(tmp_path / "salted")
    write_dataset(uri, salted, shards=2, row_group_size=4)
    exact = near_duplicate_keys(uri, radius=0, steps=AE_STEPS, progress=False)
    assert exact == [["img-000003", "img-000012"]]
    near = near_duplicate_keys(uri, radius=8, steps=AE_STEPS, progress=False)  # the cached index, another radius
    assert ["img-000007", "img-000013"] in near and ["img-000003", "img-000012"] in near


def _evaluate_on_rank(rank, world, port, samples, out):
    """One rank of a 2-process gloo group running the training loop's evaluator."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = smoke_config(f"data.dataset={out['dataset']}", "eval.batch_size=4", "eval.kid_subsets=5")
        metrics = TrainingEvaluator(cfg, samples=samples)(tiny_generator(2), iteration=10)
        (out["dir"] / f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_training_evaluator_merges_ranks_exactly(dataset, tmp_path):
    """What the training loop calls on every rank: two ranks' sums make the single process's FID."""
    import socket

    import torch.multiprocessing as mp

    samples = 12
    cfg = smoke_config(f"data.dataset={dataset}", "eval.batch_size=4", "eval.kid_subsets=5")
    reference_stats(dataset, cfg=cfg, progress=False)  # cached first, as the pipeline does before training
    alone = TrainingEvaluator(cfg, samples=samples)(tiny_generator(2), iteration=10)
    assert set(alone) == {"fid_12", "kid_12", "kid_12_std"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_evaluate_on_rank, args=(2, port, samples, {"dataset": dataset, "dir": tmp_path}), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank gets rank 0's metrics
    assert ranks[0]["fid_12"] == pytest.approx(alone["fid_12"], rel=1e-5)
    assert ranks[0]["kid_12"] == pytest.approx(alone["kid_12"], rel=1e-3, abs=1e-6)


def test_config_autoencoder_steps_reach_the_audit(dataset, tmp_path, capsys):
    """`eval.audit_autoencoder_steps` from the config (no --autoencoder-steps) trains the audit's
    autoencoder for that many steps: the audit cache beside the dataset records the recipe."""
    steps = 37  # no other test uses this count, so its cache entry is new
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = smoke_config(f"data.dataset={dataset}", f"tracking.uri={tracking}", "eval.fid_samples=8",
                       "eval.audit_samples=8", "eval.batch_size=8", f"eval.audit_autoencoder_steps={steps}")
    g = Generator(resolution=RESOLUTION, latent_dim=cfg.model.latent_dim, width=cfg.model.g_width)
    checkpoint = tmp_path / "checkpoint-000010"
    save_state(checkpoint, {"generator": g.state_dict(), "config": cfg.model_dump(), "iteration": 10})

    def audit_recipes() -> list[dict]:
        caches = storage.list_files(storage.join(dataset, "_eval"), ".npz")
        recipes = [json.loads(str(np.load(c)["recipe"])) for c in caches if Path(c).name.startswith("audit-")]
        return [r for r in recipes if r["steps"] == steps]

    assert audit_recipes() == []
    assert main(["--run", str(checkpoint), "--out", str(tmp_path / "grids")]) == 0
    capsys.readouterr()
    assert len(audit_recipes()) == 1
