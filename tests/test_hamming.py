"""Multi-index hashing (gan/hamming.py) finds exactly the pairs an exhaustive search finds.

The reference is the exhaustive search the project used before: every pair's distance
from a float matmul of +-1 codes, in blocks. Codes are random 128-bit hashes with
planted neighbours at every distance 0..r, and at r + 1 (which must not be found), plus
the hard cases for bucketing: many identical codes, and many distinct codes that
share half their bits (one huge bucket in half of the blocks).
"""

import time

import numpy as np
import pytest
import torch

from gan.hamming import candidate_count, near_duplicate_labels, pairs_within_radius
from gan.memorization import CODE_BITS, DEFAULT_RADIUS, duplicates_to_drop, near_duplicate_clusters

RADII = (0, 1, 4, DEFAULT_RADIUS)  # DEFAULT_RADIUS (8): the audit's and the largest the tests use


def exhaustive_pairs(bits: np.ndarray, radius: int, chunk: int = 4096) -> np.ndarray:
    """All pairs i < j within ``radius`` from blocked pairwise distances: O(N^2 / chunk) matmuls."""
    signs = torch.from_numpy(np.asarray(bits, bool)).float().mul_(2).sub_(1)
    nbits, found = bits.shape[1], []
    for a in range(0, len(bits), chunk):
        for b in range(a, len(bits), chunk):
            d = (nbits - signs[a:a + chunk] @ signs[b:b + chunk].T) / 2
            ii, jj = torch.nonzero(d <= radius, as_tuple=True)
            keep = ii + a < jj + b
            found.append(torch.stack([ii[keep] + a, jj[keep] + b], 1))
    pairs = torch.cat(found).numpy().astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def exhaustive_clusters(bits: np.ndarray, radius: int) -> list[list[int]]:
    parent = list(range(len(bits)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in exhaustive_pairs(bits, radius).tolist():
        ri, rj = find(i), find(j)
        parent[max(ri, rj)] = min(ri, rj)
    groups = {}
    for i in range(len(bits)):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def flip(code: np.ndarray, distance: int, rng) -> np.ndarray:
    out = code.copy()
    out[rng.choice(len(code), distance, replace=False)] ^= True
    return out


def planted_codes(n_random: int, max_radius: int, seed: int = 0) -> tuple[np.ndarray, dict[int, list[tuple[int, int]]]]:
    """Random codes, then neighbours of some of them at every distance 0..max_radius + 1
    (``planted[d]``: those pairs), chains (a neighbour of a neighbour), 150 identical
    copies of one code and 1,500 distinct codes sharing their first 64 bits; shuffled."""
    rng = np.random.default_rng(seed)
    codes = list(rng.random((n_random, CODE_BITS)) < 0.5)
    planted: dict[int, list[tuple[int, int]]] = {}
    for d in range(max_radius + 2):
        for base in rng.choice(n_random, 20, replace=False):
            codes.append(flip(codes[base], d, rng))
            planted.setdefault(d, []).append((int(base), len(codes) - 1))
            if d:  # a chain: the neighbour's own neighbour, up to 2d from the base
                codes.append(flip(codes[-1], d, rng))
    codes += [codes[0].copy() for _ in range(150)]
    shared = rng.random(64) < 0.5
    codes += [np.r_[shared, rng.random(CODE_BITS - 64) < 0.5] for _ in range(1500)]
    perm = rng.permutation(len(codes))
    where = np.argsort(perm)  # old index -> new index
    bits = np.stack(codes)[perm]
    return bits, {d: [tuple(sorted((int(where[a]), int(where[b])))) for a, b in p] for d, p in planted.items()}


@pytest.fixture(scope="module")
def codes():
    return planted_codes(20_000, max(RADII))


def _both_searches(bits, radius):
    """(multi-index pairs, its seconds, exhaustive pairs, its seconds)."""
    start = time.perf_counter()
    fast = pairs_within_radius(bits, radius)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = exhaustive_pairs(bits, radius)
    return fast, fast_s, slow, time.perf_counter() - start


@pytest.mark.parametrize("radius", RADII)
def test_multi_index_hashing_finds_exactly_the_exhaustive_pairs(codes, radius):
    bits, planted = codes
    fast, fast_s, slow, slow_s = _both_searches(bits, radius)
    print(f"\nN={len(bits)} r={radius}: multi-index {fast_s:.2f} s ({len(fast)} pairs, "
          f"{candidate_count(bits, radius) if radius else 'exact keys'} candidates), exhaustive {slow_s:.2f} s")
    assert np.array_equal(fast, slow)
    found = set(map(tuple, fast.tolist()))
    for d, pairs in planted.items():
        inside = d <= radius
        assert all((p in found) == inside for p in pairs), f"planted pairs at distance {d}, radius {radius}"
    assert len(found) == len(fast)  # no pair twice
    assert len(fast) >= 150 * 151 // 2  # the identical copies, at least


@pytest.mark.parametrize("radius", (0, DEFAULT_RADIUS))
def test_clusters_are_the_exhaustive_search_clusters(codes, radius):
    bits, _ = codes
    clusters = near_duplicate_clusters(bits, radius)
    assert clusters == exhaustive_clusters(bits, radius)
    assert len(duplicates_to_drop(clusters)) == sum(len(g) - 1 for g in clusters)


def test_when_buckets_are_huge_every_pair_is_checked_once_instead():
    """500 codes within a few bits of one another: every block is one bucket, so the
    candidates ((r + 1) x all pairs) exceed all pairs and the search checks each pair once."""
    rng = np.random.default_rng(3)
    centre = rng.random(CODE_BITS) < 0.5
    bits = np.stack([flip(centre, int(d), rng) for d in rng.integers(0, 6, 500)])
    assert candidate_count(bits, DEFAULT_RADIUS) > 500 * 499 // 2
    for radius in (1, 4, DEFAULT_RADIUS):
        assert np.array_equal(pairs_within_radius(bits, radius, max_pairs=1000), exhaustive_pairs(bits, radius))
    assert near_duplicate_clusters(bits, DEFAULT_RADIUS) == exhaustive_clusters(bits, DEFAULT_RADIUS)


def test_small_chunks_and_edge_cases():
    bits, _ = planted_codes(2_000, 4, seed=5)
    for radius in (0, 4):
        assert np.array_equal(pairs_within_radius(bits, radius, max_pairs=7), exhaustive_pairs(bits, radius))
    assert pairs_within_radius(bits[:1], 4).shape == (0, 2)
    assert near_duplicate_labels(bits[:0], 4).shape == (0,)
    assert near_duplicate_clusters(bits[:0], 4) == []
    same = np.zeros((4, CODE_BITS), bool)
    assert near_duplicate_clusters(same, 0) == [[0, 1, 2, 3]]
    assert pairs_within_radius(same, 3).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    with pytest.raises(ValueError, match="radius"):
        pairs_within_radius(same, -1)


@pytest.mark.parametrize("n", (5_000, 10_000))
def test_print_times_at_a_few_sizes(n):
    """Timing, printed (-s), not asserted: multi-index hashing vs the exhaustive search at r = 8."""
    bits = np.random.default_rng(n).random((n, CODE_BITS)) < 0.5
    fast, fast_s, slow, slow_s = _both_searches(bits, DEFAULT_RADIUS)
    print(f"\nN={n} r={DEFAULT_RADIUS}: multi-index {fast_s:.3f} s, exhaustive {slow_s:.2f} s")
    assert np.array_equal(fast, slow)


def test_a_search_within_a_radius_says_its_candidate_pairs_and_projected_time_first():
    """The line near_duplicate_keys prints before searching: the exact candidate count (the
    search's own), its share of all pairs and the projected seconds."""
    from pipelines.evaluation.cache import CANDIDATES_PER_S, near_duplicate_projection

    rng = np.random.default_rng(3)
    bits = rng.random((3000, 128)) < 0.3
    count = candidate_count(bits, 8)
    line = near_duplicate_projection(bits, 8)
    assert f"{count:,} candidate pairs" in line and "3,000 images" in line
    assert f"{count / (3000 * 2999 // 2):.2%} of all pairs" in line
    assert f"about {count / CANDIDATES_PER_S:,.0f} s" in line
