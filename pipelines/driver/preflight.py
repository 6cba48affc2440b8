"""Everything that can fail in seconds, checked before Ray starts or anything is written.

Order matters: reading checks first (the data's source, the tracking service), then
the writes that create folders (storage). A wrong source therefore fails with one line
and leaves no storage folder, MLflow database or Ray session behind.
"""

from __future__ import annotations

from pipelines.cluster import storage
from pipelines.records import tracking
from pipelines.config import PipelineConfig
from pipelines.dataset.format import MANIFEST
from pipelines.dataset.sources import check_source


def check_data(cfg: PipelineConfig) -> bool:
    """True when the dataset exists; otherwise its source must be there to ingest from."""
    if storage.exists(storage.join(cfg.dataset_uri, MANIFEST)):
        return True
    check_source(cfg.data.source)
    return False


def preflight(cfg: PipelineConfig) -> str:
    """Check the data, tracking and storage of a training run; returns the tracking URI."""
    have_dataset = check_data(cfg)
    uri = cfg.tracking_uri()
    tracking.check_tracking(uri)
    storage.check_writable(cfg.checkpoints_uri)
    if not have_dataset:
        storage.check_writable(cfg.dataset_uri.rstrip("/").rsplit("/", 1)[0])
    return uri
