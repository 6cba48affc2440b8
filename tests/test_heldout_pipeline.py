"""The held-out split through the pipeline, on real LSUN photos: recorded at ingest, stable
across re-ingests, never read by training, and behind the promotion gate that registers a
generator copying its training photos but never makes it champion."""

import shutil

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from gan.models import Generator
from pipelines.records import registry, tracking
from pipelines.config import load_config
from pipelines.dataset.streaming import train_dataset
from pipelines.dataset.format import IMAGE, KEY, PIXEL_SHA256, decode_images, read_columns, read_manifest
from pipelines.dataset.ingestion import ensure_dataset
from pipelines.dataset.rows import read_shard, split_rows
from pipelines.evaluation.generator_eval import evaluate_generator
from pipelines.steps.run import register_step

pytestmark = pytest.mark.slow
N, RES, HELD = 48, 32, 12


def _config(tmp_path, source, *overrides):
    return load_config("smoke", [f"storage={tmp_path}", f"data.source={source}", f"model.resolution={RES}",
                                 f"data.holdout={HELD}", *overrides])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, lsun_files, ray_local):
    root = tmp_path_factory.mktemp("heldout")
    photos = root / "photos"
    photos.mkdir()
    for f in lsun_files[:N]:
        shutil.copy(f, photos / f.name)
    cfg = _config(root, photos)
    return cfg, ensure_dataset(cfg, progress=False)


def _table(uri):
    table = read_columns(uri, [KEY, IMAGE, PIXEL_SHA256])
    return table.column(KEY).to_pylist(), decode_images(table.column(IMAGE), RES), table.column(PIXEL_SHA256).to_pylist()


def test_holdout_is_recorded_stable_and_never_trained_on(dataset, tmp_path):
    cfg, manifest = dataset
    assert manifest["holdout"]["images"] == HELD and manifest["holdout"]["train_images"] == N - HELD
    assert manifest["recipe"]["holdout"] == HELD
    train, held = split_rows(cfg.dataset_uri)
    assert len(held) == HELD and not set(train) & set(held) and sorted([*train, *held]) == list(range(N))
    keys, _, hashes = _table(cfg.dataset_uri)
    held_hashes = {hashes[i] for i in held}

    # Training workers: two equal shards of the training rows, no held-out image in either.
    shards = [read_shard(cfg.dataset_uri, RES, rank, 2)[1] for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == (N - HELD) // 2 and not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == {keys[i] for i in train}
    # The stream a too-big shard would use holds the training rows only, too.
    streamed = train_dataset(cfg.dataset_uri, read_manifest(cfg.dataset_uri), shuffle_files=False).take_all()
    assert len(streamed) == N - HELD
    assert {hashes[keys.index(k)] for k in shards[0] + shards[1]}.isdisjoint(held_hashes)

    # Re-ingested from another source (the dataset itself, read back in another order of
    # shards and keys): the same images are held out, by content.
    again = _config(tmp_path, cfg.dataset_uri)
    manifest_again = ensure_dataset(again, progress=False)
    _, held_again = split_rows(again.dataset_uri)
    _, _, hashes_again = _table(again.dataset_uri)
    assert manifest_again["content_hash"] == manifest["content_hash"]
    assert {hashes_again[i] for i in held_again} == held_hashes


class PhotoGenerator(nn.Module):
    """A stand-in generator that returns stored photos (uint8 NHWC) as G would: float NCHW in [-1, 1]."""

    def __init__(self, photos: np.ndarray, latent_dim: int):
        super().__init__()
        self.latent_dim, self.resolution, self.width, self.channels = latent_dim, RES, 8, 3
        self.register_buffer("photos", torch.from_numpy(photos).permute(0, 3, 1, 2).float().div(127.5).sub(1))

    def forward(self, z):
        idx = torch.arange(len(z)) % len(self.photos)
        return self.photos[idx]


def test_a_copier_is_registered_but_never_champion(dataset, tmp_path):
    cfg, manifest = dataset
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "fid_samples": HELD, "audit_samples": HELD, "batch_size": HELD, "reference_images": None,
        "audit_autoencoder_steps": 50}), "tracking": cfg.tracking.model_copy(update={"uri": uri})})
    _, photos, _ = _table(cfg.dataset_uri)
    train, held = split_rows(cfg.dataset_uri)
    copier = PhotoGenerator(photos[train[:HELD]], cfg.model.latent_dim)  # its training photos, as they are
    honest = PhotoGenerator(photos[held], cfg.model.latent_dim)  # photos it never trained on

    results = {}
    for name, g in (("copier", copier), ("honest", honest)):
        result = evaluate_generator(g, cfg.dataset_uri, cfg, manifest=manifest, out_dir=tmp_path / name, progress=False)
        results[name] = result
        assert {f"fid_heldout_{HELD}", f"precision_{HELD}", f"recall_{HELD}", f"coverage_{HELD}"} <= set(result.metrics)
    assert results["copier"].copying["copying"] and not results["honest"].copying["copying"]
    assert results["copier"].metrics["copying_reference_coverage"] == 1.0  # every training image compared
    # Capped (eval.reference_images): the report says how much of the training set the
    # nearest-neighbour audit saw, so how much of a copier it can catch.
    capped = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reference_images": HELD})})
    coverage = evaluate_generator(copier, cfg.dataset_uri, capped, manifest=manifest, out_dir=tmp_path / "capped",
                                  progress=False).copying["reference_coverage"]
    assert coverage["compared"] == HELD and coverage["training_images"] == N - HELD
    assert coverage["fraction"] == pytest.approx(HELD / (N - HELD), abs=1e-6) and "hash audit" in coverage["note"]
    assert "copying" in results["copier"].grids  # the closest sample/training pairs, for MLflow

    # Registration logs a real G of the same shape (the stand-ins hold photos, not weights);
    # what the gate decides from is each one's evaluation.
    stand_in = Generator(resolution=RES, latent_dim=cfg.model.latent_dim, width=8)
    with tracking.run(uri, cfg.tracking.experiment, run_name="gate"):
        for name in ("copier", "honest"):  # the copier first: even with no champion yet it is refused
            r = results[name]
            registered = register_step(cfg, stand_in, manifest, r.metrics | {"audit": r.audit, "copying": r.copying})
            version = mlflow.MlflowClient().get_model_version(registered["name"], registered["version"])
            if name == "copier":
                assert not registered["champion"] and "closer to a training image" in version.tags[registry.BLOCKED_TAG]
            else:
                assert registered["champion"] and registry.BLOCKED_TAG not in version.tags
                assert version.tags["fid_metric"] == f"fid_heldout_{HELD}"
