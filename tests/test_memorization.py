"""The memorization audit on real LSUN bedroom photos: the autoencoder learns, planted
copies of training images are found, unseen photos (what a generator that has not
memorised produces at best) are not, and the hashes group training near-duplicates."""

import json

import numpy as np
import pytest
import torch

from gan.memorization import (
    CODE_BITS,
    DEFAULT_RADIUS,
    DenoisingAutoencoder,
    audit,
    audit_grid_images,
    audit_views,
    duplicates_to_drop,
    near_duplicate_clusters,
    nearest_hashes,
    pack_bits,
    train_autoencoder,
    unpack_bits,
)
from tests.photos import add_noise, jpeg_reencode, load_squares, shift_one_pixel

N_TRAIN, N_UNSEEN, N_PLANTED = 1000, 300, 60
RESOLUTION = 64  # the paper's training resolution; views are 32x32


@pytest.fixture(scope="module")
def photos(lsun_files):
    images = load_squares(lsun_files[: N_TRAIN + N_UNSEEN], RESOLUTION)
    return images[:N_TRAIN], images[N_TRAIN:]


@pytest.fixture(scope="module")
def trained(photos):
    train, _ = photos
    views = audit_views(train)
    model, losses = train_autoencoder(views, steps=500, batch_size=64, seed=0, log_every=50)
    return model, losses, views, model.hash_bits(views)


@pytest.fixture(scope="module")
def planted(photos):
    train, _ = photos
    idx = np.random.default_rng(1).choice(N_TRAIN, N_PLANTED, replace=False)
    originals = train[idx]
    copies = {
        "exact": originals,
        "shift_1px": shift_one_pixel(originals),
        "noise": add_noise(originals, sigma=4.0, seed=2),
        "jpeg_q75": jpeg_reencode(originals, quality=75),
    }
    return idx, copies


def test_views_are_32x32_centre_crops_of_float_and_uint8_alike(photos):
    train, _ = photos
    views = audit_views(train[:4])
    assert views.shape == (4, 32, 32, 3) and views.dtype == np.uint8
    # 64 -> 32 is a 2x2 mean
    expected = train[:4].reshape(4, 32, 2, 32, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(views.astype(np.float64) - expected).max() <= 0.5
    as_float = torch.from_numpy(train[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.abs(audit_views(as_float).astype(int) - views.astype(int)).max() <= 1
    wide = np.concatenate([np.zeros((1, 64, 16, 3), np.uint8), train[:1], np.zeros((1, 64, 16, 3), np.uint8)], axis=2)
    assert np.array_equal(audit_views(wide), views[:1])  # the centre square of a wide image


def test_reconstruction_loss_falls_as_it_trains(trained, photos):
    model, losses, views, _ = trained
    assert len(losses) == 10
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(np.isfinite(losses))
    _, unseen = photos
    fresh = DenoisingAutoencoder()
    fresh.mean.copy_(model.mean)
    assert model.reconstruction_loss(audit_views(unseen)) < 0.5 * fresh.reconstruction_loss(audit_views(unseen))


def test_hash_is_128_bits_and_round_trips(trained):
    model, _, views, bits = trained
    assert bits.shape == (N_TRAIN, CODE_BITS) and bits.dtype == bool
    assert 0.2 < bits.mean() < 0.8  # informative bits, not a dead or saturated code
    assert np.array_equal(unpack_bits(pack_bits(bits)), bits)
    restored = DenoisingAutoencoder.from_bytes(model.to_bytes())
    assert np.array_equal(restored.hash_bits(views[:50]), bits[:50])


def test_nearest_hashes_matches_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.random((300, CODE_BITS)) < 0.5
    query = np.concatenate([ref[:5], rng.random((40, CODE_BITS)) < 0.5])
    dist, idx = nearest_hashes(query, ref, k=3, chunk=64)
    brute = (query[:, None, :] != ref[None, :, :]).sum(-1)
    expected_idx = np.argsort(brute, axis=1, kind="stable")[:, :3]
    assert np.array_equal(dist, np.take_along_axis(brute, expected_idx, 1))
    assert np.array_equal(idx, expected_idx)
    assert np.array_equal(idx[:5, 0], np.arange(5)) and (dist[:5, 0] == 0).all()


def test_audit_flags_planted_copies(trained, planted, photos):
    model, _, _, train_bits = trained
    train, _ = photos
    idx, copies = planted
    flagged, own_original = {}, {}
    for kind, images in copies.items():
        views = audit_views(images)
        bits = model.hash_bits(views)
        report = audit(views, bits, train_bits, lambda i: train[i]).report
        flagged[kind] = len(report["flagged_samples"]) / N_PLANTED
        _, nearest = nearest_hashes(bits, train_bits)
        own_original[kind] = float(np.mean(nearest[:, 0] == idx))
    assert flagged["exact"] == 1.0, flagged
    assert np.mean(list(flagged.values())) >= 0.9, flagged
    # what is found is the copy's own original, not some other bedroom
    assert np.mean(list(own_original.values())) >= 0.9, own_original


def test_audit_finds_almost_nothing_in_unseen_photos(trained, photos):
    model, _, _, train_bits = trained
    train, unseen = photos
    views = audit_views(unseen)
    report = audit(views, model.hash_bits(views), train_bits, lambda i: train[i]).report
    assert report["exact_collision_fraction"] == 0.0, report["closest_pairs"][:3]
    assert report["flagged_fraction"] <= 0.02, report["closest_pairs"][:5]
    assert report["hamming_to_nearest"]["quantiles"]["p50"] > 2 * DEFAULT_RADIUS


def test_audit_report_is_json_with_the_papers_quantities(trained, planted, photos):
    model, _, _, train_bits = trained
    train, unseen = photos
    idx, copies = planted
    samples = np.concatenate([copies["exact"][:10], unseen[:30]])
    views = audit_views(samples)
    result = audit(views, model.hash_bits(views), train_bits, lambda i: train[i], neighbours=3, closest=8)
    report = json.loads(json.dumps(result.report))
    assert report["samples"] == 40 and report["training_images"] == N_TRAIN
    assert report["exact_collision_fraction"] == pytest.approx(10 / 40)
    assert sum(report["hamming_to_nearest"]["histogram"]) == 40
    pairs = report["closest_pairs"]
    assert len(pairs) == 8 and [p["hamming"] for p in pairs] == sorted(p["hamming"] for p in pairs)
    exact = [p for p in pairs if p["sample"] < 10]
    assert exact and all(p["pixel_rmse"] == 0.0 and p["training_index"] == idx[p["sample"]] for p in exact)
    assert all(p["pixel_rmse"] > 5 for p in pairs if p["sample"] >= 10)  # unseen photos differ in pixels
    # the grid rows: each sample beside its 3 nearest training images
    s, nbs = result.pairs[0]
    rows = audit_grid_images(samples[[s]], train[np.array(nbs)][None])
    assert rows.shape == (4, RESOLUTION, RESOLUTION, 3) and np.array_equal(rows[1], train[nbs[0]])


def test_near_duplicate_clusters_in_training_data(trained, planted, photos):
    model, _, _, train_bits = trained
    train, _ = photos
    idx, copies = planted
    # A training set salted with copies of its own images, appended after the originals.
    salted = np.concatenate([train, copies["exact"][:20], copies["jpeg_q75"][20:40]])
    bits = model.hash_bits(audit_views(salted))
    exact_clusters = near_duplicate_clusters(bits, radius=0)
    assert all(any({int(idx[k]), N_TRAIN + k} <= set(g) for g in exact_clusters) for k in range(20))
    near_clusters = near_duplicate_clusters(bits, radius=DEFAULT_RADIUS)
    member_of = {i: tuple(g) for g in near_clusters for i in g}
    jpeg_found = sum(member_of.get(N_TRAIN + k) == member_of.get(int(idx[k])) and N_TRAIN + k in member_of
                     for k in range(20, 40))
    assert jpeg_found >= 18
    drop = set(duplicates_to_drop(near_clusters))
    assert {N_TRAIN + k for k in range(20)} <= drop  # the appended exact copies go ...
    assert not {int(idx[k]) for k in range(20)} & drop  # ... their originals (lower index) stay
    assert len(drop) < 0.1 * len(salted)  # and the clusters are not one big blob
