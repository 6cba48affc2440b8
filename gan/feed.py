"""Training images as uint8 batches on the device, in an order resume can trust.

Why it exists: on a GPU the step consumes tens of thousands of 64x64 images a second.
A feed that converts to float32 on the CPU copies 4x the bytes from pageable memory and
becomes the bottleneck. Here pixels stay uint8 until they are on the device, and
:func:`gan.images.normalize` turns them into floats there.

Order. A shard (this rank's rows, chosen by the caller from (rank, world_size)) is
first put in key order, so nothing depends on the order its rows were read in. Epoch
``e`` then visits the sorted rows in the order ``argsort(hash(seed, e, rank, row))``,
where ``hash`` is splitmix64 done in int64 tensor arithmetic. The hash is a bijection
of 64-bit integers, so the keys are unique, ``argsort`` has no ties to break, and the
permutation is the same on a CPU and on any GPU. Resuming at (epoch, batch) therefore
just recomputes that epoch's permutation and starts at that batch.

Epoch length (``drop_last``). With ``drop_last=True`` (the default, what DDP needs
so that every rank runs the same number of steps) an epoch is ``len(shard) // batch_size``
full batches; the ``len(shard) % batch_size`` rows at the end of that epoch's
permutation sit the epoch out, and since the permutation changes every epoch, they are
different rows each time. With ``drop_last=False`` the epoch's last batch is the
smaller remainder and every row is visited exactly once.

Two feeds share that logic:

- :class:`DeviceImageFeed` holds the whole shard on the device as uint8 and gathers
  each batch there (no host work per batch at all);
- :class:`HostImageFeed` holds it in host memory, gathers each batch on the host in a
  background thread into pinned memory and copies it with ``non_blocking=True`` on a
  side CUDA stream, two batches ahead (:func:`prefetch_to_device`, usable on any
  iterator of host batches).

Both yield the same batches for the same (images, keys, seed, rank). :func:`make_feed`
picks one from ``data.device_cache: auto|on|off`` with :func:`fits_on_device`.

Batches are uint8 tensors shaped (N, C, H, W). From NHWC storage they are a permuted
view whose memory is already channels_last, which is what the step wants on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch

from gan.prefetch import PREFETCH_DEPTH, as_uint8_tensor, prefetch_to_device
DeviceCache = Literal["auto", "on", "off"]

# ------------------------------------------------------------------ the order
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (odd, so i * GOLDEN is a bijection)
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 with the same bits (torch has no uint64 arithmetic)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right_logical(x: torch.Tensor, bits: int) -> torch.Tensor:
    # int64 ``>>`` is arithmetic (copies the sign bit in); splitmix64 needs zeros shifted
    # in, so clear the top ``bits`` bits the arithmetic shift may have set.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on an int64 tensor, bit for bit as on uint64.

    int64 multiplication wraps modulo 2^64 in two's complement on CPUs and GPUs, which
    is exactly uint64 multiplication on the same bits; shifts are made logical by masking.
    The finaliser is a bijection, so distinct inputs give distinct outputs.
    """
    if x.dtype != torch.int64:
        raise TypeError(f"splitmix64 works on int64 tensors, got {x.dtype}")
    x = (x ^ _shift_right_logical(x, 30)) * _signed(_MIX1)
    x = (x ^ _shift_right_logical(x, 27)) * _signed(_MIX2)
    return x ^ _shift_right_logical(x, 31)


def splitmix64_int(x: int) -> int:
    """Reference splitmix64 finaliser on a Python int (unsigned 64-bit result)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def stream_key(seed: int, epoch: int, rank: int) -> int:
    """One 64-bit key per (seed, epoch, rank), chained so that no two triples collide by
    accident the way ``seed + epoch`` would (seed 1 epoch 0 == seed 0 epoch 1)."""
    key = splitmix64_int(seed)
    key = splitmix64_int(key ^ (epoch & _MASK64))
    return splitmix64_int(key ^ (rank & _MASK64))


def epoch_permutation(num_rows: int, seed: int, epoch: int, rank: int = 0,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """The order in which epoch ``epoch`` visits rows 0..num_rows-1 (key-sorted), made on ``device``.

    A pure function of (num_rows, seed, epoch, rank): the same int64 permutation on every device.
    """
    rows = torch.arange(num_rows, dtype=torch.int64, device=device)
    # (row + 1) * GOLDEN + key: distinct rows give distinct pre-images, hence distinct hashes.
    hashed = splitmix64((rows + 1) * _signed(_GOLDEN) + _signed(stream_key(seed, epoch, rank)))
    return torch.argsort(hashed)


# ---------------------------------------------------------------- the pixels
def channel_dim(shape: Sequence[int]) -> int:
    """1 for NCHW, 3 for NHWC, from a 4-d shape; square images with 1, 3 or 4 channels."""
    _, a, b, c = shape
    if a in (1, 3, 4) and b == c:
        return 1
    if c in (1, 3, 4) and a == b:
        return 3
    raise ValueError(f"cannot tell where the channels are in images of shape {tuple(shape)}: "
                     "expected (N, H, W, C) or (N, C, H, W) with square images and 1, 3 or 4 channels")


def _as_nchw(batch: torch.Tensor, channels_at: int) -> torch.Tensor:
    # A view: NHWC memory seen as NCHW is exactly the channels_last layout.
    return batch.permute(0, 3, 1, 2) if channels_at == 3 else batch


def key_order(keys: Sequence[Any] | torch.Tensor) -> torch.Tensor:
    """Row indices that put ``keys`` in ascending order (int64, CPU). Keys must be unique:
    with duplicates the order of equal keys would depend on the read order."""
    if isinstance(keys, torch.Tensor):
        keys = keys.tolist()
    keys = [k.item() if hasattr(k, "item") else k for k in keys]  # numpy scalars -> Python
    if len(set(keys)) != len(keys):
        raise ValueError("image keys must be unique: duplicates would make the order depend on the read order")
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.int64)


# ------------------------------------------------------------------ the feeds
@dataclass(frozen=True)
class FeedBatch:
    """One batch and where it sits: after it, a checkpoint stores ``(epoch, index + 1)``."""

    epoch: int
    index: int
    images: torch.Tensor  # uint8 (N, C, H, W) on the feed's device


class _KeyedShard:
    """What both feeds share: key order, epoch permutation, batch boundaries, resume."""

    def __init__(self, images: Any, keys: Sequence[Any] | torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, drop_last: bool = True, shuffle: bool = True):
        images = as_uint8_tensor(images)
        if len(keys) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(keys)} keys")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_rows = images.shape[0]
        self.channels_at = channel_dim(images.shape)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.drop_last, self.shuffle = drop_last, shuffle
        self._host_images = images  # subclasses move it where it lives
        self._sorted_rows = key_order(keys)  # position in key order -> row of `images`
        if self.batches_per_epoch == 0:
            raise ValueError(f"a shard of {self.num_rows} images gives no full batch of {batch_size} "
                             "(drop_last): use a smaller batch or fewer workers")

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def nbytes(self) -> int:
        return self._host_images.numel()

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(_as_nchw(self._host_images[:1], self.channels_at).shape[1:])

    def epoch_rows(self, epoch: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """Rows of ``images`` in the order epoch ``epoch`` visits them (int64, on ``device``)."""
        device = torch.device(device)
        if self._sorted_rows.device != device:  # moved once, not every epoch
            self._sorted_rows = self._sorted_rows.to(device)
        sorted_rows = self._sorted_rows
        if not self.shuffle:
            return sorted_rows
        return sorted_rows[epoch_permutation(self.num_rows, self.seed, epoch, self.rank, device)]

    def _batch_slices(self, start_batch: int) -> Iterator[tuple[int, slice]]:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"batch {start_batch} is outside an epoch of {self.batches_per_epoch} batches")
        for index in range(start_batch, self.batches_per_epoch):
            start = index * self.batch_size
            yield index, slice(start, min(start + self.batch_size, self.num_rows))

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def batches(self, epoch: int = 0, batch: int = 0) -> Iterator[FeedBatch]:
        """Endless batches from position (epoch, batch): exactly what an uninterrupted
        feed yields from there on."""
        while True:
            for index, images in enumerate(self.epoch_batches(epoch, batch), start=batch):
                yield FeedBatch(epoch, index, images)
            epoch, batch = epoch + 1, 0


class DeviceImageFeed(_KeyedShard):
    """The shard held on ``device`` as uint8; each batch is one gather on the device.

    ``images``: uint8 (N, H, W, C) or (N, C, H, W), numpy or torch, any device; ``keys``:
    one unique string or int per image (e.g. the content hash from ingest).
    """

    def __init__(self, images: Any, keys: Sequence[Any] | torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, device: str | torch.device = "cpu", drop_last: bool = True, shuffle: bool = True):
        super().__init__(images, keys, batch_size, seed, rank, drop_last, shuffle)
        self.device = torch.device(device)
        # One host -> device copy for the whole run; the rows keep their read order (no
        # second copy to sort them): `epoch_rows` maps batch positions to rows instead.
        self.images = self._host_images.to(self.device)
        self._host_images = self.images

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        rows = self.epoch_rows(epoch, self.device)
        for _, positions in self._batch_slices(start_batch):
            yield _as_nchw(self.images.index_select(0, rows[positions]), self.channels_at)


class HostImageFeed(_KeyedShard):
    """The shard held in host memory; batches are gathered there and streamed to ``device``
    through pinned memory, :data:`PREFETCH_DEPTH` ahead (see :func:`prefetch_to_device`).

    Same batches as :class:`DeviceImageFeed` for the same arguments: the permutation is
    computed on the CPU, which gives the same integers as on the device.
    """

    def __init__(self, images: Any, keys: Sequence[Any] | torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, device: str | torch.device = "cpu", drop_last: bool = True, shuffle: bool = True,
                 prefetch: int = PREFETCH_DEPTH):
        super().__init__(images, keys, batch_size, seed, rank, drop_last, shuffle)
        self.device = torch.device(device)
        self.images = self._host_images.cpu()
        self.prefetch = prefetch

    def _host_batches(self, epoch: int, start_batch: int) -> Iterator[torch.Tensor]:
        rows = self.epoch_rows(epoch, "cpu")
        pin = self.device.type == "cuda"
        for _, positions in self._batch_slices(start_batch):
            index = rows[positions]
            # Gather straight into page-locked memory: the copy to the GPU can then run
            # asynchronously (pageable memory would be staged through a pinned buffer,
            # synchronously, by the driver). PyTorch's caching host allocator reuses these
            # buffers and keeps each one alive until its asynchronous copy has finished.
            out = torch.empty((len(index), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
            torch.index_select(self.images, 0, index, out=out)
            yield out

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        for batch in prefetch_to_device(self._host_batches(epoch, start_batch), self.device, self.prefetch):
            yield _as_nchw(batch, self.channels_at)


ImageFeed = DeviceImageFeed | HostImageFeed


# -------------------------------------------------------- where the shard lives
@dataclass(frozen=True)
class CacheDecision:
    on_device: bool
    reason: str
    nbytes: int
    free_bytes: int | None
    budget_bytes: int | None


def _free_host_bytes() -> int | None:
    try:  # MemAvailable counts reclaimable page cache, unlike MemFree
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(device: str | torch.device) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``), or available host memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _free_host_bytes()


def fits_on_device(nbytes: int, device: str | torch.device, share: float = 0.5) -> CacheDecision:
    """Whether ``nbytes`` of images may live on ``device``: at most ``share`` of its free memory.

    Half by default, because the free memory measured before training must still hold
    the networks, optimizer state, activations and the allocator's slack, which grow
    with batch size and compile mode. On a CPU "device" means host memory.
    """
    device = torch.device(device)
    free = free_memory(device)
    where = f"{device} free memory" if device.type == "cuda" else "available host memory"
    if free is None:
        return CacheDecision(False, f"{where} is unknown: not caching {nbytes / 2**20:.0f} MiB", nbytes, None, None)
    budget = int(free * share)
    fits = nbytes <= budget
    verdict = "fits in" if fits else "exceeds"
    reason = (f"{nbytes / 2**20:.0f} MiB of images {verdict} {share:.0%} of {where} "
              f"({budget / 2**20:.0f} of {free / 2**20:.0f} MiB)")
    return CacheDecision(fits, reason, nbytes, free, budget)


def choose_device_cache(mode: DeviceCache, nbytes: int, device: str | torch.device, share: float = 0.5) -> CacheDecision:
    """``data.device_cache``: ``on`` holds the shard on the device (an error if it cannot
    fit at all), ``off`` streams it, ``auto`` holds it when :func:`fits_on_device`."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"device_cache must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return CacheDecision(False, "device_cache=off", nbytes, None, None)
    decision = fits_on_device(nbytes, device, share)
    if mode == "auto":
        return decision
    if decision.free_bytes is not None and nbytes > decision.free_bytes:
        raise MemoryError(f"device_cache=on, but {nbytes / 2**20:.0f} MiB of images exceed all of "
                          f"{device}'s {decision.free_bytes / 2**20:.0f} MiB free: use device_cache=auto or off, "
                          "or more workers (smaller shards)")
    return CacheDecision(True, f"device_cache=on ({decision.reason})", nbytes, decision.free_bytes, decision.budget_bytes)


def make_feed(images: Any, keys: Sequence[Any] | torch.Tensor, batch_size: int, seed: int, rank: int = 0,
              device: str | torch.device = "cpu", device_cache: DeviceCache = "auto", drop_last: bool = True,
              shuffle: bool = True, share: float = 0.5) -> tuple[ImageFeed, CacheDecision]:
    """The feed for this rank's shard, on the device when ``device_cache`` says so, else
    streamed from host memory; with the decision and its reason (worth logging)."""
    images = as_uint8_tensor(images)  # once: a read-only array would be copied each time
    nbytes = images.numel()
    decision = choose_device_cache(device_cache, nbytes, device, share)
    feed_type = DeviceImageFeed if decision.on_device else HostImageFeed
    return feed_type(images, keys, batch_size, seed, rank, device, drop_last, shuffle), decision
