"""The device feed's logic on the CPU (tests/test_gpu.py repeats the comparisons on CUDA)."""

import random

import numpy as np
import pytest
import torch

from gan.images import normalize
from gan.prefetch import prefetch_to_device
from gan.feed import (
    DeviceImageFeed,
    HostImageFeed,
    choose_device_cache,
    epoch_permutation,
    fits_on_device,
    make_feed,
    splitmix64,
    splitmix64_int,
)


def _shard(n=23, size=4, seed=0):
    """n distinct NHWC uint8 images; image i has the value i in its first pixel, so a
    batch names its rows. Keys are strings whose order differs from the row order."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    keys = [f"img-{(i * 7919) % 1000:04d}" for i in range(n)]
    return images, keys


def _ids(batch):
    return batch[:, 0, 0, 0].tolist()  # NCHW view: channel 0, pixel (0, 0)


def _epoch(feed, epoch, start=0):
    return [b.clone() for b in feed.epoch_batches(epoch, start)]


def test_splitmix64_tensor_matches_the_unsigned_reference():
    # Values that exercise wrap-around multiplication and the sign bit in the shifts.
    values = [0, 1, 2, 12345, 2**31, 2**32 + 7, 2**62 + 3, 2**63 - 1, 2**63, 2**63 + 5, 2**64 - 1]
    values += [random.Random(0).getrandbits(64) for _ in range(200)]
    signed = [v - 2**64 if v >= 2**63 else v for v in values]
    out = splitmix64(torch.tensor(signed, dtype=torch.int64)).tolist()
    assert [o % 2**64 for o in out] == [splitmix64_int(v) for v in values]


def test_permutation_is_a_pure_function_of_seed_epoch_rank():
    p = epoch_permutation(1000, seed=3, epoch=2, rank=1)
    assert sorted(p.tolist()) == list(range(1000))
    assert torch.equal(p, epoch_permutation(1000, seed=3, epoch=2, rank=1))
    others = [epoch_permutation(1000, 3, 3, 1), epoch_permutation(1000, 4, 2, 1), epoch_permutation(1000, 3, 2, 0)]
    assert all(not torch.equal(p, o) for o in others)
    # seed 1 / epoch 0 must not be seed 0 / epoch 1 (keys are chained, not summed)
    assert not torch.equal(epoch_permutation(100, 1, 0), epoch_permutation(100, 0, 1))


@pytest.mark.parametrize("drop_last", [True, False])
def test_each_epoch_covers_the_shard_once(drop_last):
    images, keys = _shard(23)
    feed = DeviceImageFeed(images, keys, batch_size=5, seed=0, drop_last=drop_last)
    for epoch in range(3):
        batches = _epoch(feed, epoch)
        ids = [i for b in batches for i in _ids(b)]
        assert len(batches) == feed.batches_per_epoch == (4 if drop_last else 5)
        assert len(set(ids)) == len(ids)  # no row twice in an epoch
        if drop_last:
            assert len(ids) == 20 and all(b.shape[0] == 5 for b in batches)
        else:
            assert sorted(ids) == list(range(23)) and batches[-1].shape[0] == 3
    if drop_last:  # the rows left out differ from epoch to epoch
        left_out = [set(range(23)) - {i for b in _epoch(feed, e) for i in _ids(b)} for e in range(4)]
        assert len({frozenset(s) for s in left_out}) > 1


def test_order_does_not_depend_on_the_read_order():
    images, keys = _shard(30)
    shuffled = list(range(30))
    random.Random(1).shuffle(shuffled)
    a = DeviceImageFeed(images, keys, batch_size=4, seed=7, rank=1)
    b = DeviceImageFeed(images[shuffled], [keys[i] for i in shuffled], batch_size=4, seed=7, rank=1)
    for epoch in range(2):
        assert all(torch.equal(x, y) for x, y in zip(_epoch(a, epoch), _epoch(b, epoch), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(_epoch(a, 0), _epoch(a, 1)))
    other_seed = DeviceImageFeed(images, keys, batch_size=4, seed=8, rank=1)
    assert not all(torch.equal(x, y) for x, y in zip(_epoch(a, 0), _epoch(other_seed, 0)))


def test_int_keys_and_nchw_input_give_the_same_batches_as_nhwc():
    images, _ = _shard(12)
    keys = [(i * 5) % 12 for i in range(12)]
    nhwc = DeviceImageFeed(images, keys, batch_size=3, seed=0)
    nchw = DeviceImageFeed(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), keys, batch_size=3, seed=0)
    for x, y in zip(_epoch(nhwc, 1), _epoch(nchw, 1), strict=True):
        assert x.shape == (3, 3, 4, 4) and torch.equal(x, y)
    assert nhwc.image_shape() == (3, 4, 4)


def test_duplicate_keys_are_refused():
    images, keys = _shard(5)
    with pytest.raises(ValueError, match="unique"):
        DeviceImageFeed(images, keys[:4] + keys[:1], batch_size=2, seed=0)


def test_resume_yields_exactly_the_remaining_batches():
    images, keys = _shard(23)
    feed = DeviceImageFeed(images, keys, batch_size=4, seed=5, rank=2)
    stream = feed.batches()
    uninterrupted = [next(stream) for _ in range(17)]  # crosses two epoch boundaries (5 a epoch)
    stop = uninterrupted[7]  # the checkpoint after this batch holds (epoch, index + 1)
    resumed_feed = DeviceImageFeed(images, keys, batch_size=4, seed=5, rank=2)  # a fresh process
    resumed = resumed_feed.batches(stop.epoch, stop.index + 1)
    for expected in uninterrupted[8:]:
        got = next(resumed)
        assert (got.epoch, got.index) == (expected.epoch, expected.index)
        assert torch.equal(got.images, expected.images)
    # resuming at the end of an epoch goes on with the next one
    at_end = next(feed.batches(0, feed.batches_per_epoch))
    assert (at_end.epoch, at_end.index) == (1, 0)


def test_streaming_path_yields_the_resident_paths_batches():
    images, keys = _shard(41, size=8)
    resident = DeviceImageFeed(images, keys, batch_size=6, seed=2, rank=1, drop_last=False)
    streamed = HostImageFeed(images, keys, batch_size=6, seed=2, rank=1, drop_last=False)
    for epoch in range(2):
        assert all(torch.equal(x, y) for x, y in zip(_epoch(resident, epoch), _epoch(streamed, epoch), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(_epoch(resident, 1, 3), _epoch(streamed, 1, 3), strict=True))


def test_prefetch_passes_every_batch_in_order_and_reraises_errors():
    batches = [np.full((2, 4, 4, 3), i, dtype=np.uint8) for i in range(9)]
    out = list(prefetch_to_device(iter(batches), "cpu"))
    assert [int(b[0, 0, 0, 0]) for b in out] == list(range(9))

    def failing():
        yield batches[0]
        raise OSError("shard file vanished")

    with pytest.raises(OSError, match="vanished"):
        list(prefetch_to_device(failing(), "cpu"))


def test_normalize_maps_0_to_minus_1_and_255_to_1():
    x = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).reshape(1, 1, 2, 3)
    y = normalize(x)
    assert y.dtype == torch.float32
    assert y.flatten()[0].item() == -1.0 and y.flatten()[-1].item() == 1.0
    assert torch.all(y.flatten().diff() > 0)
    assert normalize(x, torch.bfloat16).dtype == torch.bfloat16
    assert normalize(x, torch.bfloat16).flatten()[[0, -1]].tolist() == [-1.0, 1.0]
    # same numbers as the CPU path of pipelines (x / 127.5 - 1)
    assert torch.equal(y, x.float() / 127.5 - 1)
    images, keys = _shard(8)
    batch = next(DeviceImageFeed(images, keys, batch_size=4, seed=0).epoch_batches(0))
    assert normalize(batch, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_cache_decision_follows_the_share_of_free_host_memory():
    small = fits_on_device(1024, "cpu")
    assert small.on_device and small.free_bytes and small.budget_bytes == small.free_bytes // 2
    huge = fits_on_device(2**60, "cpu")
    assert not huge.on_device and "exceeds" in huge.reason
    assert not choose_device_cache("off", 1024, "cpu").on_device
    assert choose_device_cache("on", 1024, "cpu").on_device
    with pytest.raises(MemoryError, match="device_cache"):
        choose_device_cache("on", 2**60, "cpu")
    with pytest.raises(ValueError):
        choose_device_cache("sometimes", 1024, "cpu")


def test_make_feed_picks_the_path_and_both_give_the_same_batches():
    images, keys = _shard(16)
    on, decision_on = make_feed(images, keys, 4, seed=1, device="cpu", device_cache="auto")
    off, decision_off = make_feed(images, keys, 4, seed=1, device="cpu", device_cache="off")
    assert isinstance(on, DeviceImageFeed) and decision_on.on_device
    assert isinstance(off, HostImageFeed) and not decision_off.on_device
    assert all(torch.equal(x, y) for x, y in zip(_epoch(on, 0), _epoch(off, 0), strict=True))


def test_read_only_arrays_are_accepted():
    images, keys = _shard(8)
    images.setflags(write=False)  # what decoded Parquet gives
    feed = DeviceImageFeed(images, keys, batch_size=4, seed=0)
    assert feed.batches_per_epoch == 2
