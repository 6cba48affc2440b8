"""What every entry point shares: the ``--config`` + ``key=value`` parser, and one way to fail.

Expected errors (:class:`pipelines.errors.PipelineError`: a wrong config key, a missing
path, a service that does not answer; and ``gan``'s FID errors) end the command with
its message on stderr and exit status 2. Anything else is a bug and keeps its
traceback. SIGTERM (``ray job stop``, ``kill``) ends a command as Ctrl-C does, with open
MLflow runs ended KILLED; a training in progress first writes a final checkpoint
(:mod:`pipelines.training.stopping`). Entry points import torch, Ray and MLflow only after their checks, so a
wrong input fails in about a second.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipelines.cluster.openmp import sleep_idle_threads
from pipelines.errors import PipelineError
from pipelines.training.stopping import install_sigterm_handler

OVERRIDES_HELP = "key=value config overrides with dotted keys, e.g. train.lr_d=1e-4"


def config_parser(prog: str, description: str, default_config: str | None = "demo",
                  overrides_help: str = OVERRIDES_HELP) -> argparse.ArgumentParser:
    """A parser with ``--config`` (a preset name from configs/ or a YAML path) and the overrides."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", default=default_config,
                    help="a preset name (configs/*.yaml) or a YAML path"
                    + (f" (default: {default_config})" if default_config else " (default: the embedded defaults)"))
    ap.add_argument("overrides", nargs="*", help=overrides_help)
    return ap


def is_expected(error: BaseException) -> bool:
    """An error the user can act on (its message says how), rather than a bug."""
    if isinstance(error, PipelineError):
        return True
    inception = sys.modules.get("gan.inception")  # gan knows nothing of pipelines: its error is checked by name
    return inception is not None and isinstance(error, inception.FIDError)


def run_command(prog: str, command: Callable[[], int | None]) -> int:
    """``command()``'s exit status; an expected error becomes its message and status 2."""
    sleep_idle_threads()
    install_sigterm_handler()
    try:
        return int(command() or 0)
    except Exception as e:  # noqa: BLE001 - re-raised unless expected
        if not is_expected(e):
            raise
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
