"""Dataset lineage in MLflow: the ingested dataset as an MLflow dataset input.

Every run that makes or reads the canonical dataset (ingest, train, evaluate, a sweep and
its trials) logs it with ``log_input``, so the MLflow UI shows on each run which dataset
it used, and runs on the same data are found by its digest. The digest is the dataset's
content hash (``manifest.json``: SHA-256 over the images' pixel hashes), cut to the
32 hex digits MLflow stores (its limit is 36 characters); the full hash is in the
dataset's profile and in the runs' ``dataset_hash`` tag. Metrics that belong to the
dataset (FID, KID, the audit) are logged with it too (:func:`pipelines.records.registry.log_model_metrics`).
"""

from __future__ import annotations

import json
from typing import Any

DIGEST_LENGTH = 32  # hex digits of the content hash that fit MLflow's 36-character digest


def dataset_name(dataset_uri: str) -> str:
    """The dataset's folder name (``synthetic-4096-s0-32px``): what the registered model is named after."""
    return dataset_uri.rstrip("/").split("/")[-1]


def digest(manifest: dict) -> str:
    return manifest["content_hash"][:DIGEST_LENGTH]


def mlflow_dataset(manifest: dict, dataset_uri: str):
    """An ``mlflow.data.Dataset`` for the ingested dataset: name, source URI, content-hash
    digest, a schema (uint8 images R x R x 3) and a profile (count, resolution, source)."""
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    profile = {"images": manifest["count"], "resolution": manifest["resolution"],
               "content_hash": manifest["content_hash"], "source": str(manifest.get("source", "")),
               "format": manifest.get("format", "")}

    class IngestedDataset(MetaDataset):
        @property
        def profile(self) -> Any:
            return profile

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(profile)}

    r = manifest["resolution"]
    return IngestedDataset(_source(dataset_uri), name=dataset_name(dataset_uri), digest=digest(manifest),
                           schema=Schema([TensorSpec(np.dtype(np.uint8), (-1, r, r, 3), "image")]))


def _source(dataset_uri: str):
    from pathlib import Path

    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource, S3ArtifactDatasetSource

    if dataset_uri.startswith("s3://"):
        return S3ArtifactDatasetSource(dataset_uri)
    if dataset_uri.startswith(("http://", "https://")):
        return HTTPDatasetSource(dataset_uri)
    return LocalArtifactDatasetSource(str(Path(dataset_uri).resolve()))


def log_dataset(manifest: dict, dataset_uri: str, context: str, run_id: str | None = None,
                tracking_uri: str | None = None) -> None:
    """``log_input`` of the dataset on ``run_id`` (default: the active run) with ``context``
    (``ingest``, ``training``, ``evaluation``). Logging the same input twice is harmless."""
    import mlflow

    dataset = mlflow_dataset(manifest, dataset_uri)
    if run_id is None:
        mlflow.log_input(dataset, context=context)
        return
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entity = dataset._to_mlflow_entity()
    mlflow.MlflowClient(tracking_uri).log_inputs(
        run_id, [DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])
