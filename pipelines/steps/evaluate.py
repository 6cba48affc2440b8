"""`dcgan evaluate`: FID, KID and the memorization audit of a generator, into MLflow.

    dcgan evaluate --network <MLflow run id | checkpoint | models:/...> [key=value ...]
    python -m pipelines.steps.evaluate --network models:/dcgan-synthetic-4096-s0-32px@champion

Evaluates a generator against its training dataset and logs metrics, the audit report
(JSON) and image grids into the run it came from (or a new run). The generator reference
is checked first (a registered model's name, version or alias against the registry; a
checkpoint's path), before anything else is read. The config is the checkpoint's own
unless ``--config`` is given, else the ``demo`` preset, with the overrides on top. The
work is :func:`pipelines.evaluation.generator_eval.evaluate_generator`; with several
workers or GPUs in the config it is spread over Ray actors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.errors import EvaluationError
from pipelines.steps.entrypoint import (DEFAULT_PRESET, Command, add_config_arguments, add_network_argument,
                                        overrides_of, require_network)

PROG = "dcgan evaluate"


def _is_location(target: str) -> bool:
    return "/" in target or target.endswith(".pt") or Path(target).exists()


def resolve_target(target: str, tracking_uri: str) -> tuple[str, str | None]:
    """--network -> (generator location for load_generator, MLflow run id to log into or None)."""
    from pipelines.cluster import storage
    from pipelines.records import tracking
    from pipelines.records.registry import check_model_reference
    from pipelines.records.tracking import CHECKPOINT_TAG, MLFLOW_SCHEMES

    if target.startswith(MLFLOW_SCHEMES):
        check_model_reference(target, tracking_uri)
        return target, None
    if _is_location(target):
        if not storage.exists(target):
            raise EvaluationError(f"no checkpoint at {target}: pass a checkpoint folder or .pt file (local or s3://), "
                                  "an MLflow run id or a models:/ URI")
        return target, None
    import mlflow

    tracking.check_tracking(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(target)
    except mlflow.exceptions.MlflowException as e:
        reason = (str(e).strip().splitlines() or ["not found"])[0]
        raise EvaluationError(f"'{target}' is neither a checkpoint path nor an MLflow run at {tracking_uri} ({reason}). "
                              "Pass a checkpoint folder/.pt, or set MLFLOW_TRACKING_URI to the run's server") from None
    if run.data.tags.get(CHECKPOINT_TAG):
        return run.data.tags[CHECKPOINT_TAG], target
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{target}'", output_format="list")
    if models:
        return f"models:/{models[0].model_id}", target
    raise EvaluationError(f"MLflow run {target} has neither a '{CHECKPOINT_TAG}' tag nor a logged model: "
                          "pass its checkpoint with --network <checkpoint folder>")


def logged_model_id(location: str, tracking_uri: str) -> str | None:
    """The MLflow 3 logged model behind ``models:/<model id>``, ``models:/<name>/<version>`` or
    ``models:/<name>@<alias>`` (its evaluation metrics are linked to it); None for a checkpoint."""
    if not location.startswith("models:/"):
        return None
    from mlflow.tracking import MlflowClient

    client, ref = MlflowClient(tracking_uri), location[len("models:/"):].strip("/")
    if "@" in ref:
        return client.get_model_version_by_alias(*ref.split("@", 1)).model_id
    if "/" in ref:
        return client.get_model_version(*ref.split("/", 1)).model_id
    return ref


def evaluate_command(args) -> int:
    from pipelines.driver.session import open_session
    from pipelines.evaluation.generator_eval import log_evaluation

    location, run_id = resolve_target(args.network, evaluate_config(args).tracking_uri())
    cfg, generator, state = load_target(location, args)
    with open_session(cfg, training=False, ingest=False) as session:
        result, step = evaluate_in_session(session, generator, args), int((state or {}).get("iteration", 0))
        run_id = log_evaluation(result, session.tracking_uri, run_id or (state or {}).get("mlflow_run_id"), step=step,
                                experiment=cfg.tracking.experiment, run_name=f"evaluate-{cfg.name}",
                                tags={"dcgan.evaluated": args.network}, manifest=session.manifest,
                                dataset_uri=cfg.dataset_uri, model_id=logged_model_id(location, session.tracking_uri))
    print(json.dumps({"run_id": run_id, "step": step, **{k: round(v, 6) for k, v in result.metrics.items()},
                      "grids": {k: str(v) for k, v in result.grids.items()}, "seconds": round(result.seconds, 1)}))
    return 0


def _with_overrides(values: dict, args):
    """``values`` (a preset's or a checkpoint's) with $MLFLOW_EXPERIMENT_NAME, the overrides,
    --tracking-uri and --dataset on top, validated."""
    from pipelines.config import deep_merge, experiment_from_environment, parse_overrides, validate

    overrides = parse_overrides(overrides_of(args))
    if args.dataset:
        overrides = deep_merge(overrides, {"data": {"dataset": args.dataset}})
    return validate(deep_merge(deep_merge(values, experiment_from_environment(overrides)), overrides))


def evaluate_config(args):
    """The config for a generator that brings none (a registered model): --config, else demo."""
    from pipelines.config import load_raw

    return _with_overrides(load_raw(args.config or DEFAULT_PRESET), args)


def load_target(location: str, args):
    """(config, generator, checkpoint state or None): a checkpoint brings its own config unless --config."""
    from pipelines.records.tracking import MLFLOW_SCHEMES
    from pipelines.training.checkpoints import generator_from_state, load_generator, load_state

    state = None if location.startswith(MLFLOW_SCHEMES) else load_state(location)
    cfg = _with_overrides(state["config"], args) if state and not args.config else evaluate_config(args)
    generator = generator_from_state(state) if state else load_generator(location, tracking_uri=cfg.tracking_uri())
    return cfg, generator, state


def evaluate_in_session(session, generator, args):
    """FID/KID and the audits of ``generator`` on the session's dataset, on Ray actors or here."""
    from pipelines.evaluation.generator_eval import evaluate_generator
    from pipelines.evaluation.pool import WorkerPool, workers_for

    cfg = session.cfg
    workers = args.workers if args.workers is not None else workers_for(cfg)
    with WorkerPool(workers, cfg.scaling.use_gpu, device=args.device) as pool:
        return evaluate_generator(generator, cfg.dataset_uri, cfg, samples=args.samples, manifest=session.manifest,
                                  audit_samples=args.audit_samples, out_dir=args.out, pool=pool, seed=args.seed,
                                  autoencoder_steps=args.autoencoder_steps)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_config_arguments(ap, default_config=None, config_help="a preset name or a YAML path (default: the "
                         f"checkpoint's own config, else {DEFAULT_PRESET})")
    add_network_argument(ap, "--run", "the generator: an MLflow run id, a checkpoint (folder or .pt, local or s3://), "
                         "or models:/<name>@<alias>, models:/<name>/<version>")
    ap.add_argument("--dataset", help="the ingested training dataset (default: the config's)")
    ap.add_argument("--samples", type=int, help="generated samples for FID/KID (default eval.fid_samples)")
    ap.add_argument("--audit-samples", type=int, help="samples audited for memorization (default eval.audit_samples)")
    ap.add_argument("--workers", type=int, help="Ray actors (0: this process; default scaling.num_workers if >1 or GPUs)")
    ap.add_argument("--out", help="folder for the grids (also logged to MLflow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", help="where this process evaluates with --workers 0 (default: cuda when there is a GPU)")
    ap.add_argument("--autoencoder-steps", type=int,
                    help="training steps of the audit's autoencoder (default eval.audit_autoencoder_steps)")


COMMAND = Command(PROG, "FID, KID and the memorization audit of a run, checkpoint or registered model",
                  add_arguments, evaluate_command, check=require_network, config=evaluate_config,
                  description="FID, KID and the memorization audit of a generator, into MLflow.")


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
