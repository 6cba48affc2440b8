"""Sections of the run config (:mod:`pipelines.config`) that live beside it: what to
evaluate and where to track. ``pipelines.config`` re-exports them; their Field
descriptions are what ``dcgan config keys`` prints.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EvalConfig(_Section):
    fid_every: int = Field(0, ge=0, description="iterations between FID evaluations during training (0: off)")
    fid_samples: int = Field(10000, ge=2)
    reference_images: int | None = Field(
        50000, ge=2, description="training images (a seeded subset) behind the FID reference statistics; null: all")
    final_fid: bool = True
    batch_size: int = Field(50, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    audit: bool = True
    audit_samples: int = Field(1000, ge=1)
    audit_autoencoder_steps: int = Field(2000, ge=1, description="training steps of the audit's denoising autoencoder")
    copying_max_fraction: float = Field(
        0.10, ge=0, lt=1, description="promotion gate: at most this fraction of samples may lie closer to a training "
        "image (Inception features) than the 1st percentile of held-out photos")
    copying_min_median_ratio: float = Field(
        0.85, gt=0, description="promotion gate: samples' median distance to the training set over held-out photos' "
        "must be at least this")


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else SQLite under storage")
    experiment: str = "dcgan-lsun-bedroom"
    registered_model: str | None = Field(
        None, description="Model Registry name; default dcgan-<dataset>-<resolution>px, one per dataset"
    )
    register_model: bool = Field(True, description="register the generator in the MLflow Model Registry")
    outage_timeout_s: float = Field(
        600.0, gt=0, description="training goes on while the tracking server is away (metrics buffered); past this "
        "many seconds the run stops after a final checkpoint")
    system_metrics_interval_s: float = Field(
        10.0, ge=0, description="seconds between samples of system metrics (CPU, memory, disk, network; GPUs with "
        "nvidia-ml-py) of the driver (system/...) and of every training node (system/<Ray node id>/...); 0: off")
