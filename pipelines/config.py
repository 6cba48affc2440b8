"""One typed, validated config for a run (pydantic).

A preset (``demo``: ``pipelines/presets/demo.yaml``, package data) or a YAML path, plus dotted
``key=value`` overrides (``train.lr_g=1e-4``) build it; the CLI, the entry points, Ray Train's
``train_loop_config`` and Tune's ``param_space`` carry it (``cfg.model_dump()`` on the wire).
Unknown keys and impossible values are refused before any work starts, naming the key.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from pipelines.config_keys import format_validation_error
from pipelines.config_sections import EvalConfig, TrackingConfig, _Section  # noqa: F401 - re-exported
from pipelines.errors import PipelineError
from pipelines.cluster.storage import is_s3
from pipelines.cluster.storage import join as join_uri

PRESETS = "presets"  # package data of ``pipelines``: found through importlib.resources, installed or not


class ConfigError(PipelineError, ValueError):
    """A config value or key that cannot be used; the message names the key."""


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, reading as numbers the floats YAML 1.2, JSON and Python read as
    numbers: YAML 1.1 (PyYAML) wants a dot and a signed exponent, so 1e-4, 5e-05, 1E-4
    and 1.0e4 were strings there."""


_Loader.add_implicit_resolver(  # copies SafeLoader's resolvers first: SafeLoader is unchanged
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML (a preset, a sweep, an override's value) with numbers read as people type them."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader


def absolute_location(value):
    """A local path made absolute where the config is loaded (the driver): Ray workers run in
    other folders, so a relative ``./runs`` would name a different place there. URIs
    (``s3://...``), ``synthetic`` and unset values pass through."""
    if not isinstance(value, str) or not value or "://" in value or value == "synthetic":
        return value
    return str(Path(value).expanduser().absolute())


def yaml_on_off(value, on: str = "on"):
    """YAML 1.1 reads a bare on/off as a boolean: back to the switch's words."""
    if value is True:
        return on
    if value is False:
        return "off"
    return value


class DataConfig(_Section):
    source: str = Field(
        "synthetic",
        description="'synthetic' (the embedded offline bedrooms), a folder of images, "
        "an LSUN LMDB export folder, or s3://bucket/prefix",
    )
    dataset: str | None = Field(
        None, description="where the ingested Parquet dataset lives (local or s3://); default under storage"
    )
    synthetic_images: int = Field(4096, ge=16, description="how many synthetic bedrooms to draw")
    synthetic_seed: int = 0
    limit: int | None = Field(None, ge=1, description="ingest at most this many source images")
    shard_mb: int = Field(128, ge=1, le=4096, description="target size of one Parquet shard")
    drop_near_duplicates: bool = Field(
        False, description="keep one image per near-duplicate cluster (the audit's semantic hash), as the DCGAN paper did")
    near_duplicate_radius: int = Field(0, ge=0, le=64, description="Hamming bits within which hashes are near-duplicates")
    shuffle: bool = True
    holdout: float | int = Field(
        0.05, ge=0, description="images training never reads, for held-out FID and the copying audit: a fraction in "
        "(0, 1) or a count; chosen by content hash, so stable across re-ingests (0: none)")
    device_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="hold each worker's shard on its GPU as uint8: auto = when it fits in half of the free "
        "GPU memory, on = always (an error if it cannot fit), off = stream it from host memory")

    @field_validator("source", "dataset")
    @classmethod
    def _absolute(cls, value):
        return absolute_location(value)

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value):
        from gan.splits import validate_holdout

        return validate_holdout(value)

    @field_validator("device_cache", mode="before")
    @classmethod
    def _yaml_switch(cls, value):
        return yaml_on_off(value)


class ModelConfig(_Section):
    resolution: Literal[32, 64, 128] = 64
    latent_dim: int = Field(100, ge=1)
    g_width: int = Field(64, ge=1, description="ngf: G's width at the last hidden layer (64 = reference, 128 = paper figure)")
    d_width: int = Field(64, ge=1, description="ndf: D's width at the first layer")
    # The recipe's defaults (here and in TrainConfig): the LSUN sweep's best trial (README, "Recipes").
    d_norm: Literal["batch", "spectral", "none"] = Field(
        "spectral", description="D's normalisation: batch (the paper), spectral (Miyato et al. 2018, no batch norm), none")


class TrainConfig(_Section):
    batch_size: int = Field(128, ge=1, description="per worker; the global batch is batch_size * num_workers")
    iterations: int = Field(1000, ge=1, description="generator updates; each consumes discriminator_steps batches")
    discriminator_steps: int = Field(1, ge=1, le=100, description="k of Goodfellow et al.'s Algorithm 1")
    lr_g: float = Field(1e-4, gt=0, le=1, description="G's Adam learning rate (the paper: 2e-4)")
    lr_d: float = Field(2.7e-4, gt=0, le=1, description="D's Adam learning rate (the paper: 2e-4)")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    generator_loss: Literal["non_saturating", "minimax", "hinge"] = Field("hinge", description="the paper: non_saturating")
    discriminator_loss: Literal["cross_entropy", "hinge"] = Field("hinge", description="the paper: cross_entropy")
    augment: str = Field("translation", description="DiffAugment policies for D's inputs, comma-separated (color, "
                         "translation, cutout) or a list; '' (the paper): none")
    hflip: bool = Field(False, description="mirror real images left-right at random (the paper: off)")
    ema_decay: float = Field(
        0.995, ge=0, lt=1, description="running average of G's weights, used for evaluation, registration and "
        "sampling when on; 0: off, the paper's plain G")
    ema_rampup: float | None = Field(0.05, gt=0, description="EMA warm-up: half-life at most this times the steps "
                                     "taken (null: no warm-up)")
    seed: int = 0
    sync_batchnorm: bool = Field(False, description="batch statistics across workers (off in the paper)")
    mixed_precision: Literal["auto", "bf16", "off"] = Field("auto", description="auto: bf16 autocast on GPUs, off on CPUs")
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile G and D (auto: on GPUs)")
    cuda_graphs: bool = Field(False, description="with compile: CUDA graphs (mode reduce-overhead)")
    deterministic: bool = Field(
        False, description="deterministic algorithms only (torch.use_deterministic_algorithms): bit-exact resumes")
    log_every: int = Field(10, ge=1, description="iterations between metric reports")
    sample_every: int = Field(0, ge=0, description="iterations between sample grids (0: once per epoch)")
    checkpoint_every: int = Field(200, ge=1, description="iterations between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(3, ge=1)
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="launched again under this "
        "name, a run continues from its newest checkpoint in its MLflow runs (unset: a new run, a unique name)")
    resume_from: str | None = Field(None, description="a checkpoint folder (local or s3://) to continue from")
    storage_timeout_s: float = Field(
        60.0, gt=0, description="how long a checkpoint waits for its storage to answer (retrying with backoff) "
        "before the run fails")
    fail_at_iteration: int | None = Field(
        None, ge=1, description="fault injection for tests: the last rank exits at this iteration on its first attempt"
    )

    @field_validator("resume_from")
    @classmethod
    def _absolute(cls, value):
        return absolute_location(value)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_policy(cls, value):
        from gan.augment import parse_policy

        return ",".join(parse_policy(value))

    @field_validator("mixed_precision", "channels_last", "compile", mode="before")
    @classmethod
    def _yaml_switch(cls, value, info):
        return yaml_on_off(value, "bf16" if info.field_name == "mixed_precision" else "on")


class ScalingConfig(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per worker (default: cpus_per_worker)")
    max_failures: int = Field(3, ge=-1, description="worker-group restarts from the last checkpoint (-1: forever)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how the training workers are placed on the nodes (SPREAD: one a node where it can)")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources each training worker needs besides its CPU/GPU, e.g. "
        "{trainer: 1} to train only on the nodes that offer 'trainer'")


class PipelineConfig(_Section):
    name: str = Field("dcgan", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage: str = Field("./runs", validate_default=True,
                         description="root for datasets, checkpoints and the embedded MLflow (local or s3://)")

    @field_validator("storage")
    @classmethod
    def _absolute(cls, value):
        return absolute_location(value)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    _default_tracking_uri: str | None = PrivateAttr(None)

    # Derived values live here, once, rather than being recomputed by each step.
    @property
    def dataset_uri(self) -> str:
        if self.data.dataset:
            return self.data.dataset
        if self.data.source == "synthetic":  # the recipe is the dataset: name it in full
            slug = f"synthetic-{self.data.synthetic_images}-s{self.data.synthetic_seed}"
        else:
            slug = _slug(self.data.source) + (f"-first{self.data.limit}" if self.data.limit else "")
        dedup = f"-dedup{self.data.near_duplicate_radius}" if self.data.drop_near_duplicates else ""
        return join_uri(self.storage, "datasets", f"{slug}-{self.model.resolution}px{dedup}")

    @property
    def registered_model_name(self) -> str:
        if self.tracking.registered_model:
            return self.tracking.registered_model
        return "dcgan-" + self.dataset_uri.rstrip("/").split("/")[-1]  # one registered model per dataset

    @property
    def checkpoints_uri(self) -> str:
        return join_uri(self.storage, "checkpoints")

    def tracking_uri(self) -> str:
        """``tracking.uri``; unset, $MLFLOW_TRACKING_URI or SQLite under ``storage``, resolved once (by
        :func:`load_config`, on the driver) and kept out of the values, as no machine's default belongs in them."""
        if self.tracking.uri:
            return self.tracking.uri
        if self._default_tracking_uri is None:
            if os.environ.get("MLFLOW_TRACKING_URI"):
                self._default_tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
            else:
                folder = Path("runs") if is_s3(self.storage) else Path(self.storage)
                self._default_tracking_uri = "sqlite:///" + str((folder / "mlflow.db").resolve())
        return self._default_tracking_uri

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. for MLflow parameters."""
        return _flatten(self.model_dump())


def _slug(source: str) -> str:
    tail = source.rstrip("/").split("/")[-1] or "dataset"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in tail)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def nest_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """{'train.lr_g': 1e-4} -> {'train': {'lr_g': 1e-4}}; nested values pass through."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{key}': '{part}' is a value, not a section")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return nested


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.lr_g=1e-4', 'name=x'] -> nested dict; values are parsed as YAML scalars."""
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (for example train.lr_g=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        flat[key] = load_yaml(raw) if raw.strip() else None
    return nest_dotted(flat)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    return sorted(f.name[:-len(".yaml")] for f in resources.files("pipelines").joinpath(PRESETS).iterdir()
                  if f.name.endswith(".yaml"))


def resolve_preset(path_or_name: str | os.PathLike):
    """A YAML path, or a preset name ('demo' -> the package's presets/demo.yaml); either has
    ``read_text()`` (a preset is an ``importlib.resources`` file, wherever it is installed)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    candidate = resources.files("pipelines").joinpath(PRESETS, f"{path_or_name}.yaml")
    if candidate.is_file():
        return candidate
    names = preset_names()
    hint = f" (the presets ship inside the package now: --config {p.stem})" if p.stem in names else ""
    raise ConfigError(f"config '{path_or_name}' not found{hint}: give a YAML path or one of the presets: "
                      f"{', '.join(names)}")


def preset_reference(path_or_name: str | os.PathLike) -> str:
    """How another process names the same preset: a YAML file by its absolute path, a preset by its name."""
    path = Path(path_or_name)
    if not path.is_file():
        resolve_preset(path_or_name)  # a preset's name, or ConfigError naming the presets
    return str(path.absolute()) if path.is_file() else str(path_or_name)


def load_raw(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = resolve_preset(path)
    try:
        data = load_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def validate(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, PipelineConfig)) from None


def experiment_from_environment(overrides: dict[str, Any]) -> dict[str, Any]:
    """$MLFLOW_EXPERIMENT_NAME as ``tracking.experiment``: an explicit override > the environment > a preset."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    explicit = isinstance(overrides.get("tracking"), dict) and "experiment" in overrides["tracking"]
    return {"tracking": {"experiment": name}} if name and not explicit else {}


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Preset YAML (or none: the embedded defaults) + dotted overrides -> a validated config,
    its tracking URI and experiment resolved here, once (workers and trials get the driver's)."""
    extra = parse_overrides(overrides or [])
    cfg = validate(deep_merge(deep_merge(load_raw(path), experiment_from_environment(extra)), extra))
    cfg.tracking_uri()
    return cfg
