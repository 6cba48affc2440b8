"""The sweep's config: a pipeline preset, the search space over its keys, and how to search.

    name: sweep-demo
    preset: smoke                 # the pipeline config every trial starts from
    pipeline: {train.iterations: 60, eval.fid_every: 20}   # dotted overrides of it
    search:
      train.lr_g: {loguniform: [1.0e-4, 1.0e-3]}
      train.lr_d: {loguniform: [1.0e-4, 1.0e-3]}
      train.discriminator_steps: {choice: [1, 2, 3]}
    num_samples: 4
    max_concurrent_trials: 2
    searcher: random              # random | grid | optuna (Bayesian; needs `pip install optuna`)
    asha: {grace_period: 1, reduction_factor: 2}

Search keys are any dotted key of the pipeline config; each is validated against it
(with a sample value) before anything starts.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import (ConfigError, PipelineConfig, deep_merge, experiment_from_environment, load_raw, nest_dotted,
                              parse_overrides, validate)

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")


class AshaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(1, ge=1, description="FID evaluations a trial gets before it can be stopped")
    reduction_factor: float = Field(2, gt=1)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    preset: str = "demo"
    pipeline: dict[str, Any] = Field(default_factory=dict, description="dotted overrides of the preset")
    search: dict[str, dict[str, list[Any]]]
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    searcher: Literal["random", "grid", "optuna"] = "random"
    metric: Literal["fid", "kid"] = "fid"
    asha: AshaConfig | None = AshaConfig()
    seed: int = 0

    @field_validator("search")
    @classmethod
    def _distributions(cls, search: dict[str, dict[str, list[Any]]]):
        for key, spec in search.items():
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ValueError(f"search.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: [...]}}, got {spec}")
            kind, args = next(iter(spec.items()))
            if kind in ("loguniform", "uniform", "randint") and (len(args) != 2 or not args[0] < args[1]):
                raise ValueError(f"search.{key}: {kind} takes [low, high] with low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"search.{key}: loguniform needs low > 0, got {args}")
            if kind in ("choice", "grid") and not args:
                raise ValueError(f"search.{key}: {kind} needs at least one value")
        return search

    def trial_config(self, params: dict[str, Any]) -> PipelineConfig:
        """The pipeline config of one trial: preset + overrides + the sampled values.

        Every report a trial makes carries an FID (Tune checks each one for the metric),
        so checkpoints follow the FID schedule: train.checkpoint_every = eval.fid_every.
        """
        base = deep_merge(load_raw(self.preset), nest_dotted(self.pipeline))
        cfg = validate(deep_merge(base, nest_dotted(params)))
        if cfg.eval.fid_every:
            cfg.train.checkpoint_every = cfg.eval.fid_every
        return cfg

    def check(self) -> PipelineConfig:
        """Validate the base config and every search key with a sample value."""
        base = self.trial_config({})
        if not base.eval.fid_every:
            raise ConfigError("a sweep stops trials early on FID: set pipeline.eval.fid_every (iterations between FIDs)")
        for key, spec in self.search.items():
            kind, args = next(iter(spec.items()))
            self.trial_config({key: args[0]})  # raises ConfigError naming the key if it is wrong
        return base


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    from pipelines.config import resolve_preset

    p = resolve_preset(path)
    data = yaml.safe_load(p.read_text()) or {}
    explicit = parse_overrides(overrides or [])
    data = deep_merge(data, explicit)
    # $MLFLOW_EXPERIMENT_NAME names the sweep's experiment unless pipeline.tracking.experiment= is given.
    env = experiment_from_environment(explicit.get("pipeline") or {})
    if env and isinstance(data.get("pipeline", {}), dict):
        data["pipeline"] = deep_merge(nest_dotted(data.get("pipeline", {})), env)
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"])
            lines.append(f"unknown key '{key}'" if err["type"] == "extra_forbidden" else f"{key}: {err['msg']}")
        raise ConfigError(f"invalid sweep config {p}:\n  " + "\n  ".join(lines)) from None
    sweep.check()
    return sweep

