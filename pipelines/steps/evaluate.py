"""`dcgan evaluate`: FID, KID and the memorization audit of a generator, into MLflow.

    python -m pipelines.steps.evaluate --run <MLflow run id | checkpoint | models:/...> [key=value ...]

Evaluates a generator against its training dataset and logs metrics, the audit report
(JSON) and image grids into the run it came from (or a new run). The work is
:func:`pipelines.evaluation.generator_eval.evaluate_generator`; with several workers or
GPUs in the config it is spread over Ray actors.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.cluster import storage
from pipelines.records import tracking
from pipelines.records.tracking import CHECKPOINT_TAG, MLFLOW_SCHEMES
from pipelines.config import PipelineConfig, deep_merge, load_config, parse_overrides, validate
from pipelines.steps.entrypoint import config_parser, run_command
from pipelines.errors import EvaluationError

PROG = "dcgan evaluate"


def _is_location(target: str) -> bool:
    return "/" in target or target.endswith(".pt") or Path(target).exists()


def resolve_target(target: str, tracking_uri: str) -> tuple[str, str | None]:
    """--run -> (generator location for load_generator, MLflow run id to log into or None)."""
    if target.startswith(MLFLOW_SCHEMES):
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
        raise EvaluationError(f"'{target}' is neither a checkpoint path nor an MLflow run at {tracking_uri} ({e}). "
                              "Pass a checkpoint folder/.pt, or set MLFLOW_TRACKING_URI to the run's server") from None
    if run.data.tags.get(CHECKPOINT_TAG):
        return run.data.tags[CHECKPOINT_TAG], target
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{target}'", output_format="list")
    if models:
        return f"models:/{models[0].model_id}", target
    raise EvaluationError(f"MLflow run {target} has neither a '{CHECKPOINT_TAG}' tag nor a logged model: "
                          "pass its checkpoint with --run <checkpoint folder>")


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
    base = load_config(args.config) if args.config else PipelineConfig()
    overrides = parse_overrides(args.overrides)
    if args.dataset:
        overrides = deep_merge(overrides, {"data": {"dataset": args.dataset}})
    location, run_id = resolve_target(args.run, validate(deep_merge(base.model_dump(), overrides)).tracking_uri())
    from pipelines.driver.session import open_session
    from pipelines.evaluation.generator_eval import log_evaluation
    from pipelines.training.checkpoints import generator_from_state, load_generator, load_state

    state = None if location.startswith(MLFLOW_SCHEMES) else load_state(location)
    cfg = validate(deep_merge(state["config"] if state and not args.config else base.model_dump(), overrides))
    generator = generator_from_state(state) if state else load_generator(location)
    with open_session(cfg, training=False, ingest=False) as session:
        result, step = evaluate_in_session(session, generator, args), int((state or {}).get("iteration", 0))
        run_id = log_evaluation(result, session.tracking_uri, run_id or (state or {}).get("mlflow_run_id"), step=step,
                                experiment=cfg.tracking.experiment, run_name=f"evaluate-{cfg.name}",
                                tags={"dcgan.evaluated": args.run}, manifest=session.manifest,
                                dataset_uri=cfg.dataset_uri, model_id=logged_model_id(location, session.tracking_uri))
    print(json.dumps({"run_id": run_id, "step": step, **{k: round(v, 6) for k, v in result.metrics.items()},
                      "grids": {k: str(v) for k, v in result.grids.items()}, "seconds": round(result.seconds, 1)}))
    return 0


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


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(PROG, "FID, KID and the memorization audit of a generator, into MLflow.", default_config=None)
    ap.add_argument("--run", required=True, help="an MLflow run id, a checkpoint (folder or .pt, local or s3://), or models:/...")
    ap.add_argument("--dataset", help="the ingested training dataset (default: the config's)")
    ap.add_argument("--samples", type=int, help="generated samples for FID/KID (default eval.fid_samples)")
    ap.add_argument("--audit-samples", type=int, help="samples audited for memorization (default eval.audit_samples)")
    ap.add_argument("--workers", type=int, help="Ray actors (0: this process; default scaling.num_workers if >1 or GPUs)")
    ap.add_argument("--out", help="folder for the grids (also logged to MLflow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", help="where this process evaluates with --workers 0 (default: cuda when there is a GPU)")
    ap.add_argument("--autoencoder-steps", type=int,
                    help="training steps of the audit's autoencoder (default eval.audit_autoencoder_steps)")
    return run_command(PROG, lambda: evaluate_command(ap.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
