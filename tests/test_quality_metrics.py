"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020)
on known cases, and the blocked computation against a brute-force reference."""

import numpy as np
import pytest

from gan.quality_metrics import (
    density_coverage,
    knn_radii,
    manifold_metrics,
    nearest_neighbours,
    precision_recall,
)


def _cluster(n, centre, dim=32, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, scale, (n, dim)) + centre).astype(np.float32)


def _brute(real, fake, k=3):
    """The papers' definitions written out with full distance matrices (float64)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))

    rr, ff, fr = dist(real, real), dist(fake, fake), dist(fake, real)
    r_rad = np.sort(rr, axis=1)[:, k]
    f_rad = np.sort(ff, axis=1)[:, k]
    inside = fr <= r_rad[None, :]
    return {
        "precision": inside.any(1).mean(),
        "recall": (fr <= f_rad[:, None]).any(0).mean(),
        "density": inside.sum() / (k * len(fake)),
        "coverage": inside.any(0).mean(),
        "radii": r_rad,
    }


def test_a_set_against_itself_has_full_precision_recall_and_coverage():
    x = _cluster(300, 0.0)
    pr = precision_recall(x, x)
    assert (pr.precision, pr.recall) == (1.0, 1.0)
    assert (pr.real_count, pr.fake_count, pr.k) == (300, 300, 3)
    dc = density_coverage(x, x)
    assert dc.coverage == 1.0
    # each real ball holds its own centre and its k nearest: density (k + 1) / k
    assert dc.density == pytest.approx(4 / 3, abs=0.02)


def test_disjoint_modes_give_zero():
    real, fake = _cluster(200, 0.0, seed=1), _cluster(200, 50.0, seed=2)
    m = manifold_metrics(real, fake)
    assert (m.precision, m.recall, m.density, m.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_mode_dropping_lowers_recall_not_precision():
    real = np.concatenate([_cluster(200, 0.0, dim=8, seed=3), _cluster(200, 40.0, dim=8, seed=4)])
    both = np.concatenate([_cluster(100, 0.0, dim=8, seed=5), _cluster(100, 40.0, dim=8, seed=6)])
    one = _cluster(200, 0.0, dim=8, seed=5)  # covers only the first mode
    full, dropped = manifold_metrics(real, both), manifold_metrics(real, one)
    assert dropped.precision >= 0.9 * full.precision
    # the dropped mode's half of the real images is neither recalled nor covered
    assert full.recall > 0.7 and dropped.recall <= 0.5 and dropped.coverage <= 0.5
    # samples crowded into one tight spot: all inside the real manifold, yet they cover little of it
    tight = manifold_metrics(real, _cluster(200, 0.0, dim=8, scale=0.1, seed=7))
    assert tight.precision == 1.0 and tight.density > 2 * full.density and tight.coverage < 0.2


def test_same_distribution_scores_near_the_independent_sample_values():
    real, fake = _cluster(500, 0.0, dim=8, seed=7), _cluster(500, 0.0, dim=8, seed=8)
    m = manifold_metrics(real, fake)
    assert m.precision > 0.7 and m.recall > 0.7
    # Naeem et al.: density about 1, coverage about 1 - 2^-k = 0.875 for identical distributions
    assert 0.8 < m.density < 1.2 and 0.8 < m.coverage < 0.95


def test_blocked_computation_matches_brute_force():
    real = np.concatenate([_cluster(150, 0.0, dim=16, seed=9), _cluster(90, 3.0, dim=16, seed=10)])
    fake = _cluster(170, 1.0, dim=16, scale=1.3, seed=11)
    expected = _brute(real, fake)
    for batch_size in (7, 64, 10_000):
        m = manifold_metrics(real, fake, batch_size=batch_size)
        for name in ("precision", "recall", "density", "coverage"):
            assert getattr(m, name) == pytest.approx(expected[name], abs=1e-9), (name, batch_size)
        np.testing.assert_allclose(knn_radii(real, batch_size=batch_size), expected["radii"], rtol=1e-4)
    pr, dc = precision_recall(real, fake, batch_size=13), density_coverage(real, fake, batch_size=13)
    assert (pr.precision, pr.recall) == pytest.approx((expected["precision"], expected["recall"]))
    assert (dc.density, dc.coverage) == pytest.approx((expected["density"], expected["coverage"]))


def test_nearest_neighbours_matches_brute_force():
    q, r = _cluster(50, 0.0, seed=12), _cluster(400, 0.0, seed=13)
    d, i = nearest_neighbours(q, r, batch_size=9)
    full = np.sqrt(((q[:, None, :].astype(np.float64) - r[None]) ** 2).sum(-1))
    assert np.array_equal(i, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-4)


def test_large_sets_run_in_blocks():
    # 6k x 6k distances in blocks of 512 rows: ~12 MB a block instead of 144 MB at once
    real, fake = _cluster(6000, 0.0, dim=16, seed=14), _cluster(6000, 0.0, dim=16, seed=15)
    m = manifold_metrics(real, fake, batch_size=512)
    assert m.real_count == m.fake_count == 6000
    assert m.precision > 0.7 and m.recall > 0.7 and 0.8 < m.density < 1.2


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.full((10, 4), np.nan), np.zeros(10)])
def test_bad_features_are_refused(bad):
    with pytest.raises(ValueError):
        precision_recall(bad, np.zeros((10, 4)))
