"""`dcgan config`: the config made visible.

    dcgan config show [--config demo] [key=value ...]   the resolved config as YAML
    dcgan config keys [PREFIX]                          every key: type, default, description
    dcgan config presets                                the presets --config takes by name

``show`` prints what a command given the same ``--config`` and overrides would run with
(environment included: $MLFLOW_EXPERIMENT_NAME, and the tracking URI it resolves to, as a
comment); saved to a file, ``--config FILE`` loads it back to the same config. ``keys``
reads the descriptions from the config's own fields (:mod:`pipelines.config`).
"""

from __future__ import annotations

import argparse

from pipelines.errors import PipelineError
from pipelines.steps.entrypoint import Command, add_config_arguments, overrides_of, preset_config

PROG = "dcgan config"


def show(args) -> int:
    from pipelines.config_keys import config_yaml

    cfg = preset_config(args)
    given = " ".join(["--config", str(args.config), *overrides_of(args)])
    print(f"# dcgan config show {given}\n# tracking URI (resolved): {cfg.tracking_uri()}")
    print(config_yaml(cfg.model_dump()), end="")
    return 0


def keys(args) -> int:
    from pipelines.config import PipelineConfig
    from pipelines.config_keys import config_keys, format_keys

    found = [k for k in config_keys(PipelineConfig) if k.key.startswith(args.prefix or "")]
    if not found:
        raise PipelineError(f"no config key starts with '{args.prefix}': `dcgan config keys` lists them all")
    print(format_keys(found))
    return 0


def presets(args) -> int:
    from pipelines.config import preset_names

    print("\n".join(preset_names()))
    return 0


ACTIONS = {"show": show, "keys": keys, "presets": presets}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    sub = ap.add_subparsers(dest="action", required=True, metavar="{show,keys,presets}")
    p = sub.add_parser("show", help="the resolved config as YAML (loads back with --config FILE)",
                       description="The config a command would run with, as YAML: --config and overrides applied.")
    add_config_arguments(p)
    p = sub.add_parser("keys", help="every config key with its type, default and description",
                       description="Every config key with its type, default and description.")
    p.add_argument("prefix", nargs="?", help="only the keys that start with this, e.g. train. or eval.fid")
    sub.add_parser("presets", help="the preset names --config takes", description="The preset names --config takes.")


def config_command(args) -> int:
    return ACTIONS[args.action](args)


def check_arguments(ap: argparse.ArgumentParser, args) -> None:
    args.prog = f"{ap.prog} {args.action}"


COMMAND = Command(PROG, "show the resolved config, every key with its description, the presets", add_arguments,
                  config_command, description=__doc__, check=check_arguments, raw_description=True)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
