"""The generator in the MLflow Model Registry.

Format, chosen deliberately: MLflow 3's ``pt2`` (``torch.export``). It loads back as a
working module - ``mlflow.pytorch.load_model`` or ``mlflow.pyfunc`` - on a machine
without this project's source and without unpickling code, with a dynamic batch
dimension and a signature z (N, latent_dim) float32 -> images (N, 3, R, R) in [-1, 1].
An exported graph has no submodules to hook, but it keeps the weights' names, so this
project's tools rebuild the hookable ``gan.models.Generator`` from it
(``pipelines.training.checkpoints.as_generator``).

FID, KID and the audit's figures are metrics linked to the logged model and the dataset
(MLflow 3's ``log_metric(..., model_id=, dataset=)``), so a version's page shows them.
Versions also carry tags (FID, KID, dataset hash, audit result, git commit) and aliases:
every new version is ``challenger``; it becomes ``champion`` only if its FID beats
the current champion's on the same dataset (or there is no champion yet).

:func:`check_model_reference` checks a ``models:/`` reference against the registry before
a command reads anything else; a wrong name, version or alias fails in one line that
names what the registry has. torch is imported where a generator is handled, so that
check does not wait for it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import PipelineError

if TYPE_CHECKING:
    import torch

    from gan.models import Generator

FID_TAG, DATASET_TAG = "fid", "dataset_hash"
BLOCKED_TAG = "promotion_blocked"  # why a version may never be champion (the copying audit's reasons)
MODELS_SCHEME = "models:/"
LISTED = 20  # names listed in an error, at most


class ModelReferenceError(PipelineError):
    """A ``models:/`` reference the registry does not resolve; the message names what it has."""


def _eager_copy(generator: torch.nn.Module) -> Generator:
    """A plain Generator (no DDP, no cross-worker batch norm) with the same weights, in eval mode."""
    from gan.models import Generator

    g = Generator(resolution=generator.resolution, latent_dim=generator.latent_dim, width=generator.width,
                  channels=generator.channels)
    g.load_state_dict(generator.state_dict())
    return g.eval()


def log_generator(generator: torch.nn.Module, name: str = "generator", example_batch: int = 4):
    """Log G (pt2) to the active MLflow run; returns MLflow's ModelInfo."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    g = _eager_copy(generator)
    z = np.random.default_rng(0).standard_normal((example_batch, g.latent_dim)).astype(np.float32)
    with torch.no_grad():
        images = g(torch.from_numpy(z)).numpy()
    return mlflow.pytorch.log_model(
        g, name=name, signature=infer_signature(z, images), input_example=z, serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )


def register(model_uri: str, name: str, tags: dict[str, Any]) -> Any:
    """A new version of ``name`` from a logged model, tagged; returns the ModelVersion."""
    import mlflow
    from mlflow.tracking import MlflowClient

    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    client = MlflowClient()
    client.set_registered_model_alias(name, "challenger", version.version)
    return client.get_model_version(name, version.version)


def promote_if_better(name: str, version: str, fid: float, dataset_hash: str) -> tuple[bool, str]:
    """Give ``version`` the alias ``champion`` if its FID beats the champion's on the same data."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is None:
        reason = "no champion yet"
    elif champion.tags.get(DATASET_TAG) != dataset_hash:
        return False, (f"the champion (version {champion.version}) was trained on dataset "
                       f"{champion.tags.get(DATASET_TAG)}, not {dataset_hash}: FIDs are not comparable, "
                       "so it stays champion (use a registered model name per dataset)")
    else:
        best = float(champion.tags.get(FID_TAG, "inf"))
        if not (math.isfinite(fid) and fid < best):
            return False, f"FID {fid:.3f} does not beat the champion's {best:.3f} (version {champion.version})"
        reason = f"FID {fid:.3f} beats the champion's {best:.3f} (version {champion.version})"
    client.set_registered_model_alias(name, "champion", version)
    return True, reason


def log_model_metrics(model_id: str, metrics: dict[str, float], dataset=None, step: int = 0) -> None:
    """Metrics of a logged model (FID, KID, the audit's figures) on the active run, linked to
    the model and, when given, to the ``mlflow.data`` dataset they were measured against:
    MLflow 3 shows them on the logged model, and so on every version registered from it."""
    import mlflow

    for key, value in metrics.items():
        mlflow.log_metric(key, float(value), step=step, model_id=model_id, dataset=dataset)


def version_model_id(version) -> str:
    """The logged model a registered version was made from (its source is ``models:/<model id>``)."""
    return version.model_id or version.source.removeprefix("models:/")


def version_metrics(version, tracking_uri: str | None = None) -> dict[str, float]:
    """The metrics of a registered version: those linked to its logged model."""
    from mlflow.tracking import MlflowClient

    model = MlflowClient(tracking_uri).get_logged_model(version_model_id(version))
    return {m.key: m.value for m in model.metrics or []}


def register_and_promote(generator: torch.nn.Module, name: str, fid: float, fid_metric: str, dataset_hash: str,
                         tags: dict[str, Any], metrics: dict[str, float] | None = None, dataset=None,
                         step: int = 0, blocked: str | None = None) -> tuple[Any, bool, str]:
    """Log G to the active MLflow run with ``metrics`` linked to it and to ``dataset``, register
    it as a new version of ``name`` (tagged with its FID, the dataset and ``tags``; the
    tags are what the champion rule and older tools read) and promote it to ``champion``
    if it is the best; returns (the ModelVersion, promoted, why).

    ``blocked`` (why, e.g. the copying audit's verdict) registers the version but never
    promotes it, and tags the reason on it."""
    from pipelines.driver.provenance import git_commit

    info = log_generator(generator)
    measured = ({fid_metric: fid} if math.isfinite(fid) and fid_metric != "none" else {}) | dict(metrics or {})
    log_model_metrics(info.model_id, measured, dataset, step)
    version = register(info.model_uri, name, {FID_TAG: fid, "fid_metric": fid_metric, DATASET_TAG: dataset_hash,
                                              "git_commit": git_commit(), **tags,
                                              **({BLOCKED_TAG: blocked} if blocked else {})})
    if blocked:
        return version, False, f"promotion blocked: {blocked}"
    promoted, reason = promote_if_better(name, version.version, fid, dataset_hash)
    return version, promoted, reason


def _names(items, noun: str) -> str:
    items = list(items)
    more = ", ..." if len(items) > LISTED else ""
    return f"{noun}: {', '.join(items[:LISTED])}{more}" if items else f"no {noun}"


def _is_logged_model(client, model_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_logged_model(model_id)  # models:/<model id>, MLflow 3's logged model
        return True
    except MlflowException:
        return False


def _model_contents(client, name: str) -> tuple[list[str], dict[str, str], str]:
    """(versions, aliases, ``versions: 1, 2; aliases: champion -> 2, challenger -> 2``)."""
    quoted = name.replace("'", "\\'")
    versions = sorted((str(v.version) for v in client.search_model_versions(f"name = '{quoted}'")), key=int)
    aliases = {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    listing = "; ".join([_names(versions, "versions"),
                         _names([f"{a} -> {v}" for a, v in sorted(aliases.items())], "aliases")])
    return versions, aliases, listing


def _split_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``name@alias`` -> (name, None, alias); ``name/3`` -> (name, '3', None); ``id`` -> (id, None, None)."""
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, None, alias
    name, _, version = reference.partition("/")
    return name, version or None, None


def check_model_reference(uri: str, tracking_uri: str) -> None:
    """Fail in one line, naming what exists, unless the registry at ``tracking_uri`` resolves
    ``uri`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``, or a logged model's
    ``models:/<model id>``); other locations pass through. Reads nothing else, writes nothing."""
    if not uri.startswith(MODELS_SCHEME):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines.records import tracking

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise ModelReferenceError(f"{uri}: no model registry at {tracking_uri} (the file does not exist): set "
                                  "MLFLOW_TRACKING_URI or --tracking-uri to the store that registered the model")
    tracking.check_tracking(tracking_uri)
    client = MlflowClient(tracking_uri)
    name, version, alias = _split_reference(uri[len(MODELS_SCHEME):].strip("/"))
    try:
        client.get_registered_model(name)
    except MlflowException:
        if version is None and alias is None and _is_logged_model(client, name):
            return
        registered = [m.name for m in client.search_registered_models(max_results=LISTED + 1)]
        raise ModelReferenceError(f"{uri}: no registered model '{name}' at {tracking_uri} "
                                  f"({_names(sorted(registered), 'registered models')})") from None
    versions, aliases, has = _model_contents(client, name)
    if alias is not None and alias not in aliases:
        raise ModelReferenceError(f"{uri}: '{name}' has no alias '{alias}' ({has})")
    if version is None and alias is None:
        raise ModelReferenceError(f"{uri}: name a version or an alias, models:/{name}/<version> or "
                                  f"models:/{name}@<alias> ({has})")
    if version is not None and version.isdigit() and version not in versions:  # (else a stage or 'latest')
        raise ModelReferenceError(f"{uri}: '{name}' has no version {version} ({has})")
