"""Host batches onto the device ahead of the step: pinned memory, non-blocking copies.

A background thread gathers each batch on the host into pinned (page-locked) memory;
the copy to the GPU is issued ``non_blocking`` on a side CUDA stream, ``depth``
batches ahead, and handed to the step's stream with an event, so the step never waits
on a copy it could have overlapped. On a CPU only the thread runs.
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Any, Iterable, Iterator

import torch

PREFETCH_DEPTH = 2  # batches in flight ahead of the step: one being copied, one ready


_DONE = object()


def as_uint8_tensor(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        tensor = images
    else:  # numpy or anything array-like, wrapped without a copy
        with warnings.catch_warnings():
            # A read-only array (decoded Parquet) makes torch warn that writes would be
            # undefined; the feed only ever reads it, and copying a shard of GBs would hurt.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C) or (N, C, H, W), got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor


def _background(source: Iterable[Any], depth: int) -> Iterator[Any]:
    """Items of ``source`` produced by a daemon thread, at most ``depth`` ahead.

    The host work (gathering rows, pinning) releases the GIL inside torch, so it overlaps
    with the training step. Errors in the thread are re-raised here; closing this
    generator stops the thread.
    """
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            put(error)

    thread = threading.Thread(target=produce, name="image-feed-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def prefetch_to_device(host_batches: Iterable[Any], device: str | torch.device,
                       depth: int = PREFETCH_DEPTH) -> Iterator[torch.Tensor]:
    """uint8 host batches (numpy or torch) -> the same batches on ``device``, ``depth`` ahead.

    A background thread pulls from ``host_batches`` and pins each batch (unless already
    pinned); the copies to the GPU are issued ``non_blocking`` on a side stream up to
    ``depth`` batches before the step asks for them, and the step's stream waits for a
    batch's copy only when it takes that batch. On a CPU device there is nothing to
    copy: the thread's prefetch is all there is. Normalise with :func:`gan.images.normalize` on
    the device, after the copy: uint8 moves 4x fewer bytes than float32.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"

    def pinned(batches: Iterable[Any]) -> Iterator[torch.Tensor]:
        for batch in batches:
            batch = as_uint8_tensor(batch) if not isinstance(batch, torch.Tensor) else batch
            yield batch.pin_memory() if cuda and not batch.is_pinned() else batch

    ready = _background(pinned(host_batches), depth)
    try:
        if cuda:
            yield from _copied_ahead(ready, device, depth)
        else:
            yield from (b.to(device) for b in ready)
    finally:
        ready.close()  # stops the thread now, not when the generator is collected


def _copied_ahead(ready: Iterator[torch.Tensor], device: torch.device, depth: int) -> Iterator[torch.Tensor]:
    copy_stream = torch.cuda.Stream(device=device)
    in_flight: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def issue(host: torch.Tensor) -> None:
        with torch.cuda.stream(copy_stream):
            on_device = host.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(copy_stream)
        in_flight.append((on_device, done))

    for host in ready:
        issue(host)
        if len(in_flight) > depth:
            yield _hand_over(*in_flight.pop(0), device)
    while in_flight:
        yield _hand_over(*in_flight.pop(0), device)


def _hand_over(on_device: torch.Tensor, copied: torch.cuda.Event, device: torch.device) -> torch.Tensor:
    consumer = torch.cuda.current_stream(device)
    consumer.wait_event(copied)  # the step's kernels start only after the bytes are there
    # The tensor was allocated on the copy stream; tell the caching allocator that the
    # step's stream uses it, or its memory could be handed out again while still in use.
    on_device.record_stream(consumer)
    return on_device


