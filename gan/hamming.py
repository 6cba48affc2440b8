"""Pairs of binary codes within a Hamming radius, without comparing every pair.

Multi-index hashing (Norouzi, Punjani, Fleet 2012): split the B-bit codes into r + 1
blocks of contiguous bits. Two codes at most r bits apart differ in at most r blocks,
so they agree exactly on at least one (pigeonhole). For each block, the codes are
sorted by that block's value; only codes in the same bucket (equal block value) are
candidates, and every candidate's full distance is checked with a popcount of the XOR
of the packed codes. A pair is kept only from the first block its two codes agree on,
so each pair comes out once without a set of seen pairs.

Cost. Keys and sorts: O((r + 1) N log N). Candidates: C = the sum over blocks of
s (s - 1) / 2 over bucket sizes s. For codes whose bits look random, a block of B / (r + 1)
bits has 2^(B / (r + 1)) buckets and C ~ (r + 1) N^2 / 2^(B / (r + 1) + 1): at B = 128,
r = 8 (blocks of 14 and 15 bits), about 4 million candidates for N = 128k, against the 8.2
billion pairs an exhaustive search compares. The audit's hashes are not that even (their
bits are on for 36-49% of images): for 3,000 LSUN photos (autoencoder of 200 steps), r = 8
gave 31,542 candidates, 0.7% of the 4.5 million pairs. Buckets are more uneven when many codes
share block values (a dataset of near-identical images, biased code bits); in the
worst case - every code in one bucket of every block - C reaches (r + 1) N^2 / 2.
The search therefore counts C first (from the bucket sizes, before any pair exists)
and, when C exceeds N (N - 1) / 2, checks every pair once instead: the work is never
more than min(C, N (N - 1) / 2) popcounts. Memory is O((r + 1) N) for the keys plus
one chunk of candidates (``max_pairs``, or N when one code alone has more partners),
however large a bucket is; the output itself can be quadratic (all pairs of a big
cluster), which is why :func:`near_duplicate_labels` collapses identical codes first
and needs only the edges between distinct ones.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

MAX_PAIRS = 1 << 21  # candidate pairs checked at once (~100 MB of temporaries at 128 bits)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def packed_words(bits: np.ndarray) -> np.ndarray:
    """bool (N, B) -> uint64 (N, ceil(B / 64)): the codes for XOR and popcount (bit order is irrelevant)."""
    packed = np.packbits(np.asarray(bits, bool), axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint64 (P, W) array: int64 (P,)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return _POPCOUNT8[np.ascontiguousarray(words).view(np.uint8)].sum(axis=1, dtype=np.int64)


def block_keys(bits: np.ndarray, blocks: int) -> np.ndarray:
    """uint64 (N, blocks): each code's value on each of ``blocks`` contiguous, near-equal bit ranges."""
    bits = np.asarray(bits, bool)
    edges = np.linspace(0, bits.shape[1], blocks + 1).round().astype(int)
    if np.diff(edges).max() > 64:
        raise ValueError(f"{blocks} blocks of {bits.shape[1]} bits leave a block wider than 64 bits")
    keys = np.empty((len(bits), blocks), np.uint64)
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        keys[:, b] = packed_words(bits[:, lo:hi])[:, 0]
    return keys


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order that sorts ``keys``, partners after each sorted position within its run of equal keys)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    n = len(keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], n]
    after = np.repeat(ends, ends - starts) - 1 - np.arange(n)
    return order, after


def _bucket_pairs(order: np.ndarray, after: np.ndarray, max_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair of rows in one run of equal keys, as (rows, rows) chunks of about ``max_pairs``."""
    n = len(order)
    done = np.cumsum(after)
    start = 0
    while start < n:
        before = done[start - 1] if start else 0
        stop = min(n, max(start + 1, int(np.searchsorted(done, before + max_pairs, side="right"))))
        counts = after[start:stop]
        total = int(counts.sum())
        if total:
            left = np.repeat(np.arange(start, stop), counts)
            offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + 1
            yield order[left], order[left + offset]
        start = stop


def candidate_count(bits: np.ndarray, radius: int) -> int:
    """How many candidate pairs multi-index hashing checks for these codes (before falling back)."""
    keys = block_keys(bits, radius + 1)
    return sum(int(_runs(keys[:, b])[1].sum()) for b in range(keys.shape[1]))


def pairs_within_radius(bits: np.ndarray, radius: int, max_pairs: int = MAX_PAIRS) -> np.ndarray:
    """Every pair (i, j), i < j, of codes at most ``radius`` bits apart: int64 (P, 2), sorted by i then j.

    ``bits`` is bool (N, B). Radius 0 groups identical codes by sorting; above 0,
    multi-index hashing (see the module's docstring for the cost and its worst case).
    """
    bits = np.asarray(bits, bool)
    n = len(bits)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if n < 2:
        return np.zeros((0, 2), np.int64)
    words = packed_words(bits)
    if radius == 0 or radius >= bits.shape[1]:
        keys = np.zeros((n, 1), np.uint64) if radius else _exact_keys(words)[:, None]
    else:
        keys = block_keys(bits, radius + 1)
    runs = [_runs(keys[:, b]) for b in range(keys.shape[1])]
    if sum(int(after.sum()) for _, after in runs) > n * (n - 1) // 2:
        keys, runs = np.zeros((n, 1), np.uint64), [_runs(np.zeros(n, np.uint64))]  # every pair once is cheaper
    found = []
    for b, (order, after) in enumerate(runs):
        for i, j in _bucket_pairs(order, after, max_pairs):
            near = popcount(words[i] ^ words[j]) <= radius
            i, j = i[near], j[near]
            if b:  # found already from an earlier block the two agree on
                first = ~(keys[i, :b] == keys[j, :b]).any(axis=1)
                i, j = i[first], j[first]
            found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def _exact_keys(words: np.ndarray) -> np.ndarray:
    """One integer per distinct code (its rank among the distinct codes)."""
    return np.unique(words, axis=0, return_inverse=True)[1].reshape(-1).astype(np.uint64)


def near_duplicate_labels(bits: np.ndarray, radius: int, max_pairs: int = MAX_PAIRS) -> np.ndarray:
    """int64 (N,): the smallest index of each code's cluster, clusters being the connected
    components of "at most ``radius`` bits apart". Identical codes are collapsed first, so
    only edges between distinct codes are searched (none at radius 0)."""
    words = packed_words(bits)
    n = len(words)
    if n == 0:
        return np.zeros(0, np.int64)
    _, first, inverse = np.unique(words, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    labels = np.arange(len(first))
    if radius > 0 and len(first) > 1:
        edges = pairs_within_radius(np.asarray(bits, bool)[first], radius, max_pairs)
        if len(edges):
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(len(first),) * 2)
            labels = connected_components(graph, directed=False)[1]
    component = labels[inverse]
    smallest = np.full(component.max() + 1, n, np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]
