"""The held-out split by content hash: stable, disjoint, the size asked for."""

import hashlib
import random

import numpy as np
import pytest

from gan.splits import Holdout, holdout_key, is_heldout, split


def _hashes(n, seed=0):
    rng = random.Random(seed)
    return [hashlib.sha256(rng.randbytes(16)).hexdigest() for _ in range(n)]


def test_same_image_same_side_across_calls_orders_and_datasets():
    hashes = _hashes(3000)
    first = {h for h in hashes if is_heldout(h, 0.1)}
    shuffled = hashes[:]
    random.Random(1).shuffle(shuffled)
    assert {h for h in shuffled if is_heldout(h, 0.1)} == first
    # another "source" holding only part of the images (plus others) puts the shared ones on the same side
    other = shuffled[:1000] + _hashes(500, seed=7)
    assert {h for h in other if is_heldout(h, 0.1)} & set(hashes) == first & set(other)
    # a count: the same held-out set whatever the order of the list
    rule_a, rule_b = Holdout.resolve(200, hashes), Holdout.resolve(200, shuffled)
    assert rule_a == rule_b
    assert [rule_a(h) for h in hashes[:20]] == [is_heldout(h, 200, hashes) for h in hashes[:20]]


def test_fraction_is_respected_approximately_and_disjoint_from_training():
    hashes = _hashes(20000)
    train, held = split(hashes, 0.1)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(hashes)
    # binomial: sd = sqrt(0.1 * 0.9 / 20000) = 0.0021; 4 sd
    assert abs(len(held) / len(hashes) - 0.1) < 0.0085
    small = split(hashes, 0.01)[1]
    assert set(small) <= set(held)  # a smaller fraction holds out a subset: keys below a lower cutoff
    assert abs(len(small) / len(hashes) - 0.01) < 0.003


def test_count_is_exact_and_takes_the_smallest_keys():
    hashes = _hashes(1000)
    train, held = split(hashes, 37)
    assert len(held) == 37 and set(train).isdisjoint(held) and len(train) == 963
    keys = np.array([holdout_key(h) for h in hashes])
    assert set(held) == set(np.argsort(keys)[:37].tolist())
    assert split(hashes, 0)[1] == []


def test_key_is_a_function_of_the_hash_only():
    h = "a" * 64
    assert holdout_key(h) == holdout_key("a" * 64) == int.from_bytes(
        hashlib.sha256(b"dcgan-holdout-v1:" + h.encode()).digest()[:8], "big")
    assert holdout_key(h) != holdout_key("b" * 64)
    # the manifest round trip keeps the rule
    rule = Holdout.resolve(25, _hashes(300))
    assert Holdout.from_manifest(rule.to_manifest()) == rule


@pytest.mark.parametrize("bad", [-0.1, 1.5, 1.0, 2.0, -3, True, "0.1", None])
def test_impossible_holdouts_are_refused(bad):
    with pytest.raises(ValueError):
        Holdout.resolve(bad, _hashes(10))


def test_count_needs_the_hashes_and_room_to_train():
    with pytest.raises(ValueError, match="needs every image"):
        is_heldout("ab", 5)
    with pytest.raises(ValueError, match="nothing to train"):
        Holdout.resolve(10, _hashes(10))
