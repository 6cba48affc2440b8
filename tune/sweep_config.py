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
    searcher: random              # random | grid (every combination of the choices) |
                                  # optuna (Bayesian; needs `pip install optuna`)
    asha: {grace_period: 1, reduction_factor: 2}

Search keys are any dotted key of the pipeline config; each is validated against it
(with a sample value) before anything starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import (ConfigError, PipelineConfig, absolute_location, deep_merge, experiment_from_environment,
                              load_raw, load_yaml, nest_dotted, parse_overrides, preset_reference, resolve_preset,
                              validate)

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")
RANGES = ("loguniform", "uniform", "randint")
# The pipeline keys that hold local paths (pipelines.config.absolute_location makes them
# absolute where the config is validated): pinned on the driver, see SweepConfig.pinned.
LOCATION_KEYS = ("storage", "data.source", "data.dataset", "train.resume_from")


class AshaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(1, ge=1, description="FID evaluations a trial gets before it can be stopped")
    reduction_factor: float = Field(2, gt=1)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="submitted again under "
                                 "this name, the sweep resumes (unset: every sweep is new, with a unique name)")
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
            if kind in RANGES:
                what = f"search.{key}: {kind} bounds"
                spec[kind] = args = [_number(what, a, integer=kind == "randint") for a in args]
            if kind in RANGES and (len(args) != 2 or not args[0] < args[1]):
                raise ValueError(f"search.{key}: {kind} takes [low, high] with low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"search.{key}: loguniform needs low > 0, got {args}")
            if kind in ("choice", "grid") and not args:
                raise ValueError(f"search.{key}: {kind} needs at least one value")
        return search

    @model_validator(mode="after")
    def _grid(self):
        if self.searcher != "grid":
            return self
        for key, spec in self.search.items():
            kind = next(iter(spec))
            if kind in RANGES:
                raise ValueError(f"searcher: grid runs every combination of listed values, and search.{key} is a "
                                 f"{kind} range: list its values ({{choice: [...]}}) or use searcher: random")
        if "num_samples" not in self.model_fields_set:
            self.num_samples = 1  # each combination once; num_samples: n repeats the grid n times
        return self

    def trial_count(self) -> int:
        """How many trials Tune runs: num_samples, times every combination of the grid values."""
        gridded = ("grid", "choice") if self.searcher == "grid" else ("grid",)
        return self.num_samples * math.prod(len(args) for spec in self.search.values()
                                            for kind, args in spec.items() if kind in gridded)

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

    def pinned(self) -> SweepConfig:
        """This sweep with its local paths fixed here, on the driver: the preset file, the
        storage, the data and checkpoint paths, a SQLite tracking store. Tune runs each
        trial in a working folder of its own (and Ray Train its workers in theirs), where
        a relative ``./runs`` named another folder. Tune's chdir stays on
        (RAY_CHDIR_TO_TRIAL_DIR): it keeps trials from writing over each other, and on a
        cluster a trial's node has no driver folder to go back to anyway."""
        base = self.trial_config({}).flat()
        pins = {key: base[key] for key in LOCATION_KEYS if base[key] is not None}
        if base["tracking.uri"]:
            pins["tracking.uri"] = absolute_tracking_uri(base["tracking.uri"])
        search = {key: {kind: [absolute_location(v) for v in args] if key in LOCATION_KEYS else args
                        for kind, args in spec.items()} for key, spec in self.search.items()}
        # A bundled preset goes by its name, which every node with the project resolves.
        return self.model_copy(update={"preset": preset_reference(self.preset), "pipeline": {**self.pipeline, **pins},
                                       "search": search})


def absolute_tracking_uri(uri: str) -> str:
    """A relative SQLite store (``sqlite:///runs/mlflow.db``) made absolute; others unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri[len(prefix):] != ":memory:":
        return prefix + str(Path(uri[len(prefix):]).absolute())
    return uri


def _number(what: str, value: Any, integer: bool = False) -> int | float:
    """A bound as a number, also when it came quoted ('1e-4')."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ValueError(f"{what} must be {'integers' if integer else 'numbers'}, got {value!r}")
    return int(value) if integer else value


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    p = resolve_preset(path)
    data = load_yaml(p.read_text()) or {}
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
            message = f"{key}: {err['msg']}" if key else err["msg"]  # a whole-sweep rule has no key
            lines.append(f"unknown key '{key}'" if err["type"] == "extra_forbidden" else message)
        raise ConfigError(f"invalid sweep config {p}:\n  " + "\n  ".join(lines)) from None
    sweep.check()
    return sweep

