"""Orchestration on Ray and MLflow, in layers (the README's Layout table):

- ``config.py`` and ``errors.py``: the one config, the one error type;
- ``steps/``: the entry points (``python -m pipelines.steps.<step>``, ``dcgan <step>``) and
  their command plumbing (``cli``, ``entrypoint``, ``id_ranges``);
- ``driver/``: the driver-side sequence every run shares, preflight, run names;
- ``dataset/``, ``training/``, ``evaluation/``: Ray Data ingest and feed, Ray Train workers,
  FID and the audits;
- ``records/``: MLflow (tracking, registry, lineage, plots);
- ``cluster/``: Ray start/join, storage (local or s3://), folders all nodes must see.
"""
