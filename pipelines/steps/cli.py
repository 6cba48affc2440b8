"""`dcgan`: one command, one subcommand per pipeline step.

Each subcommand is a module with ``main(argv)``; this file only dispatches, so
steps stay independent (``dcgan ingest ...`` == ``python -m pipelines.steps.ingest ...``).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "run": ("pipelines.steps.run", "the whole pipeline: ingest, train, evaluate, audit, register"),
    "ingest": ("pipelines.steps.ingest", "turn LSUN LMDB / image folders / s3:// into the canonical Parquet dataset"),
    "train": ("pipelines.steps.train", "distributed DCGAN training on Ray Train"),
    "evaluate": ("pipelines.steps.evaluate", "FID, KID and the memorization audit of a run or checkpoint"),
    "fid": ("pipelines.steps.fid", "FID (and KID) between two image folders or statistics files"),
    "generate": ("pipelines.steps.generate", "sample images from a registered model or checkpoint"),
    "latent": ("pipelines.steps.latent", "latent walks, vector arithmetic and forgetting feature maps"),
    "sweep": ("tune.sweep", "Ray Tune sweep over learning rates and k"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dcgan <command> [options]\n\ncommands:")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<10} {help_text}")
        print("\n'dcgan <command> --help' for a command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"dcgan: unknown command '{name}'. Commands: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
