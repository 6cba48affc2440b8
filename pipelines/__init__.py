"""Orchestration: config, ingest (Ray Data), training (Ray Train), evaluation, MLflow, the CLI."""

# Before anything imports torch: idle OpenMP threads sleep instead of spinning (see openmp.py).
from pipelines import openmp  # noqa: F401
