"""`dcgan`: one command tree (argparse subparsers), one subcommand per pipeline step.

    dcgan --version                     the package's version, with torch's, Ray's and MLflow's
    dcgan help <command>                the same as dcgan <command> --help
    dcgan <command> [options]           dcgan ingest ... == python -m pipelines.steps.ingest ...

Each step module declares its :class:`pipelines.steps.entrypoint.Command` (arguments and
what it runs); this file only puts them under one parser, so a step's options are the
same here and as ``python -m``. Step modules load torch, Ray and MLflow inside their
functions, so building the whole tree, and any ``--help``, stays well under a second
(``benchmarks/cli_help.py`` measures it).
"""

from __future__ import annotations

import argparse
import difflib
import sys

from pipelines.steps import config, evaluate, fid, generate, ingest, latent, run, train
from pipelines.steps.entrypoint import Command
from tune import sweep

PROG = "dcgan"
PACKAGE = "dcgan-ray"  # the distribution that installs `dcgan`
COMMANDS: tuple[Command, ...] = tuple(module.COMMAND for module in (
    run, ingest, train, evaluate, generate, latent, fid, sweep, config))


def version_text() -> str:
    """``dcgan 0.1.0 (dcgan-ray; Python 3.11.7; torch 2.7.1, ray 2.60.0, mlflow 3.3.2)``, read from
    the installed packages' metadata: nothing is imported."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    libraries = ", ".join(f"{name} {version(name)}" for name in ("torch", "ray", "mlflow"))
    return f"{PROG} {version(PACKAGE)} ({PACKAGE}; Python {python}; {libraries})"


class VersionAction(argparse.Action):
    """``--version``: the versions, looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="DCGAN on LSUN bedrooms with Ray and MLflow: one subcommand per pipeline step.",
        epilog=f"'{PROG} help <command>' or '{PROG} <command> --help' shows a command's options.")
    ap.add_argument("--version", action=VersionAction, help="show the versions of dcgan, torch, Ray and MLflow")
    sub = ap.add_subparsers(dest="dcgan_command", metavar="<command>", title="commands")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.summary, **command.parser_options())
        command.add_arguments(p)
        p.set_defaults(dcgan_run=command, dcgan_parser=p)
    p = sub.add_parser("help", help=f"show a command's options: {PROG} help <command>",
                       description=f"'{PROG} help <command>' is '{PROG} <command> --help'.")
    p.add_argument("topic", nargs="*", metavar="command", help="a command (and a subcommand: latent walk)")
    return ap


def unknown_command(name: str) -> str | None:
    """`dcgan trian`: the error, with the nearest commands (pip's habit); None for a known one."""
    names = [c.name for c in COMMANDS] + ["help"]
    if name.startswith("-") or name in names:
        return None
    near = difflib.get_close_matches(name, names, n=2)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    return f"{PROG}: unknown command '{name}'{hint}. Commands: {', '.join(names)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    if not argv:
        ap.print_help()
        return 0
    message = unknown_command(argv[0])
    if message:
        print(message, file=sys.stderr)
        return 2
    args = ap.parse_args(argv)
    if args.dcgan_command == "help":
        args = ap.parse_args([*args.topic, "--help"] if args.topic else ["--help"])  # exits with the help
    return args.dcgan_run.execute(args.dcgan_parser, args)


if __name__ == "__main__":
    sys.exit(main())
