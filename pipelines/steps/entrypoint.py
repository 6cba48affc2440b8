"""What every entry point shares: a command's description, the ``--config`` + ``key=value``
arguments, the generator reference, and one way to fail.

A step module declares one :class:`Command` (its arguments and what it runs). The same
object builds the step's own parser (``python -m pipelines.steps.<step>``, what ``ray job
submit`` runs) and its subparser of ``dcgan`` (:mod:`pipelines.steps.cli`), so the two
never drift apart. Step modules import torch, Ray, MLflow, pyarrow and pydantic only
inside functions: ``dcgan <command> --help`` answers without loading any of them.

Expected errors (:class:`pipelines.errors.PipelineError`: a wrong config key, a missing
path, a service that does not answer, a model the registry does not have; and ``gan``'s
FID errors) end the command with its message on stderr and exit status 2. Anything else
is a bug and keeps its traceback. SIGTERM (``ray job stop``, ``kill``) ends a command as
Ctrl-C does, with open MLflow runs ended KILLED; a training in progress first writes a
final checkpoint (:mod:`pipelines.training.stopping`). Entry points import the heavy
libraries only after their checks, so a wrong input fails in about a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

from pipelines.cluster.openmp import sleep_idle_threads
from pipelines.errors import PipelineError
from pipelines.training.stopping import install_sigterm_handler

DEFAULT_PRESET = "demo"  # every command that reads a config starts from it without --config
OVERRIDES_HELP = "key=value config overrides with dotted keys, e.g. train.lr_d=1e-4 (`dcgan config keys` lists them)"
TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the SQLite store under ./runs)"


@dataclass(frozen=True)
class Command:
    """A ``dcgan`` subcommand: how its arguments are declared and what it runs."""

    prog: str  # "dcgan train"
    summary: str  # its line in `dcgan --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None  # default: the summary
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None  # argument rules (ap.error)
    config: Callable[[argparse.Namespace], Any] | None = None  # the config it runs with, from the arguments alone
    raw_description: bool = False  # keep the description's line breaks

    @property
    def name(self) -> str:
        return self.prog.split()[-1]

    def parser_options(self) -> dict:
        return {"description": self.description or self.summary,
                **({"formatter_class": argparse.RawDescriptionHelpFormatter} if self.raw_description else {})}

    def parser(self) -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(prog=self.prog, **self.parser_options())
        self.add_arguments(ap)
        return ap

    def main(self, argv: list[str] | None = None) -> int:
        """The step as its own program: ``python -m pipelines.steps.<step> ...``."""
        ap = self.parser()
        return self.execute(ap, ap.parse_args(argv))

    def execute(self, ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
        if self.check is not None:
            self.check(ap, args)
        return run_command(getattr(args, "prog", None) or self.prog, lambda: self.run(args))


def add_config_arguments(ap: argparse.ArgumentParser, default_config: str | None = DEFAULT_PRESET,
                         tracking: bool = True, config_help: str | None = None,
                         overrides_help: str = OVERRIDES_HELP) -> None:
    """``--config`` (a preset name or a YAML path), ``--tracking-uri`` for a command that talks
    to MLflow, and the ``key=value`` overrides."""
    ap.add_argument("--config", default=default_config, metavar="PRESET_OR_YAML",
                    help=config_help or f"a preset name (`dcgan config presets`) or a YAML path (default: {default_config})")
    if tracking:
        ap.add_argument("--tracking-uri", help=TRACKING_URI_HELP + " (tracking.uri)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)


def config_parser(prog: str, description: str, default_config: str | None = DEFAULT_PRESET,
                  overrides_help: str = OVERRIDES_HELP, tracking: bool = True) -> argparse.ArgumentParser:
    """A standalone parser with the config arguments (for entry points outside ``dcgan``'s steps)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(ap, default_config, tracking, overrides_help=overrides_help)
    return ap


def overrides_of(args: argparse.Namespace, prefix: str = "") -> list[str]:
    """The ``key=value`` overrides, with ``--tracking-uri`` as ``tracking.uri`` (under ``prefix``)."""
    uri = getattr(args, "tracking_uri", None)
    return list(getattr(args, "overrides", None) or []) + ([f"{prefix}tracking.uri={json.dumps(uri)}"] if uri else [])


def preset_config(args: argparse.Namespace):
    """The config a command runs with: ``--config`` (default: the demo preset), its overrides and
    ``--tracking-uri``; for a command without a config (generate, latent), the demo preset's
    tracking settings, which follow $MLFLOW_TRACKING_URI and $MLFLOW_EXPERIMENT_NAME."""
    from pipelines.config import load_config

    return load_config(getattr(args, "config", None) or DEFAULT_PRESET, overrides_of(args))


class DeprecatedAlias(argparse.Action):
    """An old flag that still works, saying once on stderr which flag replaced it."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated, use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_network_argument(ap: argparse.ArgumentParser, old_flag: str, help_text: str) -> None:
    """``--network`` (StyleGAN's name for the generator to use); ``old_flag`` is its deprecated alias."""
    ap.add_argument("--network", metavar="REF", help=help_text + " (required)")
    ap.add_argument(old_flag, dest="network", action=DeprecatedAlias, replacement="--network", help=argparse.SUPPRESS)


def require_network(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.network:
        ap.error("the following arguments are required: --network")


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
