"""Both memorization audits on real LSUN photos: a "generator" that returns lightly edited
training photos is caught by the nearest-neighbour audit (gan/copying.py) and by the
paper's semantic-hash audit (gan/memorization.py); one that returns photos it never
trained on is flagged by neither.

The "generators" are modules that map latents to float images in [-1, 1], like G,
so both audits take the path generated samples take (quantisation included).
Inception runs at a few images/second here: 120 training, 60 held-out reference and
2 x 40 sample images are featurised once for the module.
"""

import numpy as np
import pytest
import torch
from torch import nn

from gan import memorization as mem
from gan.copying import CopyingThresholds, copying_audit, mann_whitney_z, pairs_grid
from gan.fid import InceptionFeatures
from gan.images import to_uint8
from gan.splits import split
from tests.photos import add_noise, jpeg_reencode, load_squares, shift_one_pixel

RESOLUTION = 64
N_TRAIN_HASH = 800  # the hash audit's training set (pixels only: cheap)
N_TRAIN_FEATURES = 120  # the part of it the nearest-neighbour audit featurises
N_HELDOUT_REF, N_SAMPLES = 60, 40


class PhotoGenerator(nn.Module):
    """A stand-in generator: returns its stored photos (uint8 NHWC) as G would, float NCHW in [-1, 1]."""

    def __init__(self, photos: np.ndarray):
        super().__init__()
        self.register_buffer("photos", torch.from_numpy(photos).permute(0, 3, 1, 2).float().div(127.5).sub(1))

    def forward(self, z):
        return self.photos[: len(z)]


def lightly_edited(images: np.ndarray) -> np.ndarray:
    """Each photo with one light edit, in turn: 1 px shift, 2 px shift, JPEG q75, noise, all three lightly."""
    edits = [
        shift_one_pixel,
        lambda x: shift_one_pixel(shift_one_pixel(x)),
        lambda x: jpeg_reencode(x, 75),
        lambda x: add_noise(x, 4.0, seed=1),
        lambda x: jpeg_reencode(add_noise(shift_one_pixel(x), 2.0, seed=2), 85),
    ]
    return np.stack([edits[i % len(edits)](im[None])[0] for i, im in enumerate(images)])


@pytest.fixture(scope="module")
def data(lsun_files):
    # the split the pipeline makes: by content hash (the file names are LSUN's hashes here)
    files = lsun_files[:2000]
    train_idx, held_idx = split([f.stem for f in files], 0.1)
    train = load_squares([files[i] for i in train_idx[:N_TRAIN_HASH]], RESOLUTION)
    held = load_squares([files[i] for i in held_idx[:N_HELDOUT_REF + N_SAMPLES]], RESOLUTION)
    originals = np.random.default_rng(0).choice(N_TRAIN_FEATURES, N_SAMPLES, replace=False)
    copier = PhotoGenerator(lightly_edited(train[originals]))
    honest = PhotoGenerator(held[N_HELDOUT_REF:])
    z = torch.randn(N_SAMPLES, 100)
    samples = {"copier": copier(z), "honest": honest(z)}
    extractor = InceptionFeatures()
    feats = {
        "train": extractor(train[:N_TRAIN_FEATURES]),
        "heldout": extractor(held[:N_HELDOUT_REF]),
        **{name: extractor(images) for name, images in samples.items()},
    }
    return {"train": train, "held": held, "originals": originals, "samples": samples, "features": feats}


@pytest.fixture(scope="module")
def hash_index(data):
    views = mem.audit_views(data["train"])
    model, _ = mem.train_autoencoder(views, steps=500, batch_size=64, seed=0)
    return model, model.hash_bits(views)


def test_nearest_neighbour_audit_catches_the_copier(data):
    f = data["features"]
    result = copying_audit(f["copier"], f["train"], f["heldout"])
    r = result.report
    assert result.copying and r["copying"] and r["reasons"]
    assert r["fraction_below_heldout_p1"] > 0.5
    assert r["median_ratio"] < 0.85 and r["mann_whitney_z"] < -3
    assert (r["samples"], r["training_images"], r["heldout_images"]) == (N_SAMPLES, N_TRAIN_FEATURES, N_HELDOUT_REF)
    # what it finds is each copy's own original
    assert np.mean(result.sample_nearest == data["originals"]) >= 0.9
    # the closest pairs come first, and are copies of what they are paired with
    d = [p["distance"] for p in r["closest_pairs"]]
    assert d == sorted(d) and len(d) == 16
    assert all(t == data["originals"][s] for s, t in result.pairs[:8])


def test_nearest_neighbour_audit_passes_unseen_photos(data):
    f = data["features"]
    result = copying_audit(f["honest"], f["train"], f["heldout"])
    r = result.report
    assert not result.copying, r["reasons"]
    assert r["fraction_below_heldout_p1"] <= 0.05
    assert 0.9 < r["median_ratio"] < 1.15 and abs(r["mann_whitney_z"]) < 2.5


def test_thresholds_decide_the_verdict(data):
    f = data["features"]
    honest = copying_audit(f["honest"], f["train"], f["heldout"]).report
    # a ratio threshold above what unseen photos score flags them: the verdict follows the threshold
    strict = CopyingThresholds(min_median_ratio=honest["median_ratio"] + 0.01)
    assert copying_audit(f["honest"], f["train"], f["heldout"], strict).copying
    with pytest.raises(ValueError):
        CopyingThresholds(max_fraction_below=1.5)


def test_hash_audit_catches_the_copier_and_passes_unseen_photos(data, hash_index):
    model, train_bits = hash_index
    train = data["train"]
    flagged = {}
    for name, images in data["samples"].items():
        views = mem.audit_views(images)  # float generator output, as evaluation feeds it
        report = mem.audit(views, model.hash_bits(views), train_bits, lambda i: train[i]).report
        flagged[name] = report["flagged_fraction"]
    assert flagged["copier"] >= 0.8, flagged
    assert flagged["honest"] <= 0.05, flagged


def test_grid_of_closest_pairs(data):
    f = data["features"]
    result = copying_audit(f["copier"], f["train"], f["heldout"], closest=6)
    samples = to_uint8(data["samples"]["copier"])
    s_idx, t_idx = [s for s, _ in result.pairs], [t for _, t in result.pairs]
    grid = pairs_grid(samples[s_idx], data["train"][t_idx], columns=3, padding=2)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    # 2 rows of 3 pairs; each pair is sample | 2 px | neighbour, pairs 6 px apart
    assert grid.shape[:2] == (6 + 2 * (RESOLUTION + 6), 6 + 3 * (2 * RESOLUTION + 2 + 6))
    assert np.array_equal(grid[6:6 + RESOLUTION, 6:6 + RESOLUTION], samples[s_idx[0]])
    assert np.array_equal(grid[6:6 + RESOLUTION, 8 + RESOLUTION:8 + 2 * RESOLUTION], data["train"][t_idx[0]])


def test_mann_whitney_z_against_scipy():
    from scipy.stats import mannwhitneyu, norm

    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 40).round(1), rng.normal(0.5, 1, 60).round(1)  # rounding makes ties
    p = mannwhitneyu(x, y, alternative="less", use_continuity=False, method="asymptotic").pvalue
    assert mann_whitney_z(x, y) == pytest.approx(norm.ppf(p), abs=1e-6)
    assert mann_whitney_z(y, x) == pytest.approx(-mann_whitney_z(x, y))
