"""Everything that can fail in seconds, checked before Ray starts or anything is written.

Order matters: reading checks first (the data's source, the tracking service), then
the writes that create folders (storage). A wrong source therefore fails with one line
and leaves no storage folder, MLflow database or Ray session behind.
"""

from __future__ import annotations

from pipelines.cluster import storage
from pipelines.config import PipelineConfig
from pipelines.dataset.format import MANIFEST, read_manifest
from pipelines.dataset.sources import check_source
from pipelines.records import tracking


def check_data(cfg: PipelineConfig, ingest: bool = True) -> bool:
    """True when the dataset exists; otherwise its source must be there to ingest from
    (with ``ingest=False`` a missing dataset is the error, named with what to do)."""
    if storage.exists(storage.join(cfg.dataset_uri, MANIFEST)):
        return True
    if not ingest:
        read_manifest(cfg.dataset_uri)  # raises, saying the dataset is missing and how to make it
    check_source(cfg.data.source)
    return False


def preflight(cfg: PipelineConfig, *, track: bool = True, training: bool = True, ingest: bool = True) -> str | None:
    """Check the data, and as asked the tracking service and the checkpoint storage; returns
    the tracking URI (None when ``track`` is off)."""
    have_dataset = check_data(cfg, ingest)
    uri = cfg.tracking_uri() if track else None
    if uri:
        tracking.check_tracking(uri)
    if training:
        storage.check_writable(cfg.checkpoints_uri)
    if not have_dataset:
        storage.check_writable(cfg.dataset_uri.rstrip("/").rsplit("/", 1)[0])
    return uri
