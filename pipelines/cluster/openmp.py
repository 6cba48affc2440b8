"""Idle OpenMP threads sleep instead of spinning: called by every entry point first.

On shared cores (CI machines, laptops running other work) spinning OpenMP threads
made 2-thread Inception and autoencoder runs 2-30x slower (benchmarks/fid.py). The
OpenMP runtime reads OMP_WAIT_POLICY once, when torch loads it, so this only acts
when torch is not imported yet; an explicit OMP_WAIT_POLICY always wins. Ray workers
started by this process inherit the variable.
"""

import os
import sys


def sleep_idle_threads() -> None:
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
