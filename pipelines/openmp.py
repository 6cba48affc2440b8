"""Import first in command entry points: idle OpenMP threads sleep instead of spinning.

On shared cores (CI machines, laptops running other work) spinning OpenMP threads
made 2-thread Inception and autoencoder runs 2-30x slower (benchmarks/fid.py). The
OpenMP runtime reads OMP_WAIT_POLICY once, when torch loads it, so this only acts
when torch is not imported yet; an explicit OMP_WAIT_POLICY always wins.
"""

import os
import sys

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
