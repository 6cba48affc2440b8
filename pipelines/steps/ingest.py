"""`dcgan ingest`: any source of bedroom images -> the canonical Parquet dataset (Ray Data).

    dcgan ingest --source /data/bedroom_train_lmdb --out s3://bucket/lsun-64 --resolution 64
    python -m pipelines.steps.ingest --config lsun-bedroom-64 [key=value ...]   # for ray job submit

Without ``--config`` it reads the ``demo`` preset, as ``dcgan train`` and ``dcgan run`` do, so
``dcgan ingest`` then ``dcgan train`` make and read the same dataset.

The work is :func:`pipelines.dataset.ingestion.ensure_dataset`, inside the driver session
(:mod:`pipelines.driver.session`: checks first, Ray joined once); see that module for
what a dataset holds and how a half-written one is never taken for a finished one.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from pipelines.steps.entrypoint import Command, add_config_arguments

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

PROG = "dcgan ingest"


def config_of(args) -> PipelineConfig:
    """The preset (demo unless --config) with the flags as their config keys."""
    from pipelines.config import load_config

    overrides = list(args.overrides)
    for flag, key in (("source", "data.source"), ("out", "data.dataset"), ("resolution", "model.resolution"),
                      ("limit", "data.limit"), ("shard_mb", "data.shard_mb")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(args.config, overrides)


def ingest_command(args) -> int:
    from pipelines.cluster import storage
    from pipelines.dataset.format import MANIFEST
    from pipelines.dataset.sources import check_source

    cfg = config_of(args)
    uri = cfg.dataset_uri
    if args.overwrite and storage.exists(storage.join(uri, MANIFEST)):
        check_source(cfg.data.source)  # before the dataset is touched: a missing source fails in a second
        fs, path = storage.filesystem(storage.join(uri, MANIFEST))
        fs.delete_file(path)  # first, so a replacement that dies half way is not taken for complete
    from pipelines.driver.session import open_session

    with open_session(cfg, training=False, track=False, progress=args.progress) as session:
        manifest = session.manifest
    print(json.dumps({k: manifest[k] for k in ("format", "resolution", "count", "duplicates", "content_hash")}
                     | {"skipped": len(manifest["skipped"]), "dataset": uri}))
    return 0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_config_arguments(ap, tracking=False)
    ap.add_argument("--source", help="LMDB export folder, image folder, s3://bucket/prefix, or 'synthetic' (data.source)")
    ap.add_argument("--out", help="where the dataset goes, a folder or s3://bucket/prefix (data.dataset)")
    ap.add_argument("--resolution", type=int, help="side of the square images (model.resolution: 32, 64 or 128)")
    ap.add_argument("--limit", type=int, help="ingest at most this many source images (data.limit)")
    ap.add_argument("--shard-mb", dest="shard_mb", type=int, help="target Parquet shard size in MiB (data.shard_mb)")
    ap.add_argument("--overwrite", action="store_true", help="replace a complete dataset already at --out")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


COMMAND = Command(PROG, "turn LSUN LMDB / image folders / s3:// into the canonical Parquet dataset", add_arguments,
                  ingest_command, description="Turn an LSUN LMDB export, a folder of images (local or s3://), an "
                  "ingested dataset or 'synthetic' into the canonical Parquet dataset (shards + manifest.json).",
                  config=config_of)


def main(argv=None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
