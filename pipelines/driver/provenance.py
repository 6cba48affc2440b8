"""What a run records about where it came from: its unique name and the code's commit."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path


def unique_run_name(cfg) -> str:
    """``<cfg.name>-<timestamp>-<random>`` for a pipeline or sweep config: Ray resumes silently
    from an existing run of the same name, so a new run never reuses one."""
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def git_commit() -> str:
    """``$DCGAN_GIT_COMMIT`` (a submitted job's working dir has no .git), else ``git rev-parse HEAD``."""
    if os.environ.get("DCGAN_GIT_COMMIT"):
        return os.environ["DCGAN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
