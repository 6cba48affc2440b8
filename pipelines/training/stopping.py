"""Stopping a training cleanly when its job is stopped (``ray job stop``, a scheduler's SIGTERM).

``ray job stop`` sends SIGTERM to the job's driver and, ``RAY_JOB_STOP_WAIT_TIME_S``
seconds later (3 by default; set it in the job's runtime env), SIGKILL. While the driver
waits in ``TorchTrainer.fit`` (:func:`graceful_stop`), SIGTERM does not end it: it sets a
flag in a small Ray actor, :class:`StopSignal`. The workers look at that flag at each
log window's end (every ``train.log_every`` iterations, an iteration boundary every rank
reaches together), rank 0 asks the actor and tells the others, and all of them write one
final checkpoint and return. ``fit`` then returns as after a normal end, and the driver
raises :class:`TrainingStopped` (a ``SystemExit``), which ends its MLflow runs KILLED
(:func:`pipelines.records.tracking.run`). ``train.resume_from=<that checkpoint>`` continues the
run. Outside training, SIGTERM ends the command at once, its runs also KILLED
(:func:`pipelines.steps.entrypoint.run_command`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator

log = logging.getLogger("dcgan.train")
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class TrainingStopped(SystemExit):
    """The job was stopped from outside; training ended with a final checkpoint."""

    def __init__(self, checkpoint: str | None = None):
        super().__init__(SIGTERM_EXIT_STATUS)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return f"stopped; the final checkpoint is {self.checkpoint}"


def _stop_signal_class():
    import ray

    @ray.remote(num_cpus=0)
    class StopSignal:
        """Whether the driver was asked to stop; the workers ask it at window ends."""

        def __init__(self):
            self.requested = False

        def request(self) -> None:
            self.requested = True

        def is_requested(self) -> bool:
            return self.requested

    return StopSignal


class DriverStop:
    """The driver's side: the actor the workers ask, and whether a stop was requested."""

    def __init__(self):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: an actor on a worker node would die with that node, and the
        # workers that ask it would fail the run (tests/test_multinode.py loses nodes).
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.actor = _stop_signal_class().options(scheduling_strategy=here).remote()
        self.event = threading.Event()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def _forward(self) -> None:
        # A signal handler only sets the event; Ray is called from this thread, never
        # from inside the handler (which may interrupt Ray's own code on the main thread).
        self.event.wait()
        self.actor.request.remote()


_stopping: threading.Event | None = None  # while a training can stop gracefully: its DriverStop's event


def on_sigterm(signum, frame) -> None:
    """The process's one SIGTERM handler. During a training (:func:`graceful_stop`) it asks the
    workers to stop at their next window end; otherwise it ends the command as Ctrl-C does."""
    if _stopping is None:
        raise SystemExit(128 + signum)
    print("[train] SIGTERM: stopping at the next iteration boundary with a final checkpoint", flush=True)
    _stopping.set()


def install_sigterm_handler() -> bool:
    """Install :func:`on_sigterm` (the main thread only: elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not on_sigterm:
        signal.signal(signal.SIGTERM, on_sigterm)
    return True


@contextlib.contextmanager
def graceful_stop() -> Iterator[DriverStop | None]:
    """While inside, SIGTERM asks the workers to stop at their next window end with a final
    checkpoint. Outside the main thread (a Tune trial) signals cannot be caught: yields None."""
    global _stopping
    if not install_sigterm_handler():
        yield None
        return
    stop = DriverStop()
    threading.Thread(target=stop._forward, name="dcgan-stop", daemon=True).start()
    _stopping = stop.event
    try:
        yield stop
    finally:
        _stopping = None


def stop_requested(actor: Any) -> bool:
    """Whether the driver asked to stop; an actor that is gone (its driver with it) asked nothing."""
    import ray

    if actor is None:
        return False
    try:
        return bool(ray.get(actor.is_requested.remote(), timeout=30))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


def worker_stop_requested(actor: Any, rank: int, world: int, device) -> bool:
    """At a window end, on every rank: rank 0 asks the actor, and all ranks get its answer
    (a collective, so every rank stops at the same iteration)."""
    if actor is None:
        return False
    import torch

    flag = torch.zeros(1, dtype=torch.int32, device=device)
    if rank == 0:
        flag[0] = int(stop_requested(actor))
    if world > 1:
        import torch.distributed as dist

        dist.broadcast(flag, src=0)
    return bool(flag.item())
