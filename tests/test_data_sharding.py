"""Training input on a real 2-worker Ray Train TorchTrainer (gloo DDP on CPU).

Each worker walks its shard for two epochs, with either feed the training loop uses
(epoch_batches streaming through Ray Data, or its rows read once by read_shard and fed by
gan.feed), turns every image it got back into its pixel hash and writes what it saw to
a file; the test maps hashes to dataset keys.
"""

import hashlib
import json

import numpy as np
import pytest
import ray
import torch

from gan.synthetic import synthetic_bedrooms
from pipelines.config import load_config
from gan.feed import make_feed
from gan.images import normalize, to_uint8
from pipelines.dataset.streaming import epoch_batches, train_dataset
from pipelines.dataset.rows import read_shard
from pipelines.dataset.format import read_manifest
from pipelines.dataset.format import IMAGE, KEY, PIXEL_SHA256, content_hash, decode_images, read_columns
from pipelines.dataset.ingestion import ensure_dataset

WORKERS, BATCH, EPOCHS, RES = 2, 8, 2, 32


def _stored_pixel_hash(batch) -> list[str]:
    pixels = batch.permute(0, 2, 3, 1).numpy()  # uint8 NCHW -> the stored NHWC pixels
    return [hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest() for p in pixels]


def _train_loop(config):
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seen = {}
    for name in ("divisible", "remainder"):
        shard = ray.train.get_dataset_shard(name)
        if config["feed"] == "memory":
            images, keys = read_shard(config["uris"][name], RES, rank, world)
            held = make_feed(images, keys, BATCH, seed=3, rank=rank)[0]
            feed = held.epoch_batches
        else:
            feed = lambda epoch: epoch_batches(shard, BATCH, RES, epoch, seed=3, shuffle_buffer=16)  # noqa: E731
        for epoch in range(EPOCHS):
            order, batches = [], 0
            for batch in feed(epoch):
                assert batch.shape == (BATCH, 3, RES, RES) and batch.dtype == torch.uint8  # floats on the device
                order += _stored_pixel_hash(batch)
                batches += 1
            # The all-reduce DDP does after every step: it only returns if every rank gets here.
            total = torch.tensor([batches])
            dist.all_reduce(total)
            seen[f"{name}/{epoch}"] = {"hashes": order, "batches": batches, "all_ranks": int(total)}
    with open(f"{config['out']}/rank-{rank}.json", "w") as f:
        json.dump(seen, f)


def _dataset(tmp_path, images: int) -> tuple[str, dict[str, str]]:
    # No held-out images: every row is a training row, which is what these tests count.
    cfg = load_config("smoke", [f"storage={tmp_path}", f"data.synthetic_images={images}", f"model.resolution={RES}",
                                "data.holdout=0"])
    manifest = ensure_dataset(cfg, progress=False)
    table = read_columns(cfg.dataset_uri, [KEY, PIXEL_SHA256])
    assert manifest["count"] == images == table.num_rows
    return cfg.dataset_uri, dict(zip(table.column(PIXEL_SHA256).to_pylist(), table.column(KEY).to_pylist()))


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["stream", "memory"])
def test_two_workers_get_disjoint_equal_shards_covering_the_dataset_each_epoch(tmp_path, ray_local, feed):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    divisible_uri, divisible = _dataset(tmp_path / "a", WORKERS * BATCH * 3)  # 48: nothing to drop
    remainder_uri, remainder = _dataset(tmp_path / "b", WORKERS * BATCH * 3 + 5)  # 53: 5 rows cannot be used
    out = tmp_path / "seen"
    out.mkdir()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"out": str(out), "feed": feed, "uris": {"divisible": divisible_uri, "remainder": remainder_uri}},
        # Half a CPU each: the other CPU is left to Ray Data's read tasks.
        scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 0.5}),
        datasets={"divisible": train_dataset(divisible_uri, read_manifest(divisible_uri)), "remainder": train_dataset(remainder_uri, read_manifest(remainder_uri))},
        run_config=RunConfig(storage_path=str(tmp_path / "train"), name=f"sharding-{feed}"),
    )
    trainer.fit()
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(WORKERS)]

    for epoch in range(EPOCHS):
        # Exactly once: the two shards are disjoint and together are the whole dataset.
        keys = [[divisible[h] for h in rank[f"divisible/{epoch}"]["hashes"]] for rank in ranks]
        assert len(keys[0]) == len(keys[1]) == len(divisible) // WORKERS
        assert not set(keys[0]) & set(keys[1])
        assert sorted(keys[0] + keys[1]) == sorted(divisible.values())

        # 53 rows: each rank still runs the same number of steps (3 batches of 8), disjoint rows.
        counts = [rank[f"remainder/{epoch}"]["batches"] for rank in ranks]
        assert counts == [3, 3] and all(rank[f"remainder/{epoch}"]["all_ranks"] == 6 for rank in ranks)
        got = [set(remainder[h] for h in rank[f"remainder/{epoch}"]["hashes"]) for rank in ranks]
        assert len(got[0]) == len(got[1]) == 24 and not got[0] & got[1]

    # Reshuffled every epoch: the same images, in another order.
    first, second = (ranks[0][f"divisible/{e}"]["hashes"] for e in range(EPOCHS))
    assert first != second


@pytest.mark.slow
def test_synthetic_source_is_the_embedded_bedrooms_and_round_trips_to_model_input(tmp_path, ray_local):
    uri, by_hash = _dataset(tmp_path, 16)
    manifest = read_manifest(uri)
    expected = synthetic_bedrooms(16, RES, 0)
    table = read_columns(uri, [KEY, IMAGE]).sort_by(KEY)
    stored = decode_images(table.column(IMAGE), RES)
    np.testing.assert_array_equal(stored, expected)
    assert manifest["content_hash"] == content_hash(hashlib.sha256(x.tobytes()).hexdigest() for x in expected)
    assert manifest["source"].startswith("synthetic-bedrooms") and manifest["skipped"] == []

    # The feed delivers exactly those pixels (uint8), and as [-1, 1] floats they round-trip.
    batches = list(epoch_batches(train_dataset(uri, read_manifest(uri), shuffle_files=False).iterator(), 16, RES, epoch=0))
    assert len(batches) == 1
    assert sorted(_stored_pixel_hash(batches[0])) == sorted(by_hash)
    floats = normalize(batches[0])
    assert float(floats.min()) >= -1.0 and float(floats.max()) <= 1.0
    assert torch.equal(to_uint8(floats), batches[0].permute(0, 2, 3, 1))

    # A second ensure_dataset reuses the complete dataset. Another recipe gets its own default
    # location; pointed at this dataset's location it is refused, naming both recipes.
    cfg = load_config("smoke", [f"storage={tmp_path}", "data.synthetic_images=16", f"model.resolution={RES}", "data.holdout=0"])
    assert cfg.dataset_uri == uri
    assert ensure_dataset(cfg, progress=False)["content_hash"] == manifest["content_hash"]
    other = load_config("smoke", [f"storage={tmp_path}", "data.synthetic_images=17", f"model.resolution={RES}", "data.holdout=0"])
    assert other.dataset_uri != uri
    pinned = load_config("smoke", [f"storage={tmp_path}", "data.synthetic_images=17", f"model.resolution={RES}", "data.holdout=0",
                                   f"data.dataset={uri}"])
    with pytest.raises(RuntimeError, match="synthetic_images.*17"):
        ensure_dataset(pinned, progress=False)
