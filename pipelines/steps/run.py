"""The whole pipeline as one job: ingest -> train -> evaluate + audit -> register.

    python -m pipelines.steps.run --config demo [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m pipelines.steps.run --config smoke

One MLflow run per pipeline run, with a nested run per step (ingest, train, evaluate).
Tracking and storage are checked before any expensive work; a missing service stops
the job in seconds with a message saying how to start it, and leaves nothing behind.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pipelines.steps.entrypoint import Command, add_config_arguments, preset_config

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from pipelines.driver.session import Session

PROG = "dcgan run"


def record_ingest(session: Session, parent_id: str) -> None:
    """The dataset the session ensured, as the pipeline's ``ingest`` run (once per pipeline run)."""
    import mlflow

    from pipelines.records import tracking
    from pipelines.records.lineage import log_dataset

    cfg, manifest = session.cfg, session.manifest
    with tracking.run(session.tracking_uri, cfg.tracking.experiment, run_name="ingest", parent_run_id=parent_id,
                      tags={"pipeline_step": "ingest"}):
        log_dataset(manifest, cfg.dataset_uri, "ingest")
        mlflow.log_params({"source": manifest.get("source", cfg.data.source), "dataset_uri": cfg.dataset_uri})
        mlflow.log_metrics({"images": manifest["count"], "skipped": len(manifest.get("skipped", [])),
                            "duplicates": manifest.get("duplicates", 0)})
        mlflow.log_dict(manifest, "manifest.json")


def evaluate_step(session: Session, parent_id: str, generator) -> dict:
    from pipelines.evaluation.generator_eval import evaluate_generator, log_evaluation
    from pipelines.evaluation.pool import WorkerPool, workers_for
    from pipelines.records import tracking
    from pipelines.records.lineage import log_dataset

    cfg, uri, manifest = session.cfg, session.tracking_uri, session.manifest
    with tracking.run(uri, cfg.tracking.experiment, run_name="evaluate", parent_run_id=parent_id,
                      tags={"pipeline_step": "evaluate"}) as active, \
            WorkerPool(workers_for(cfg), cfg.scaling.use_gpu) as pool:
        log_dataset(manifest, cfg.dataset_uri, "evaluation")
        result = evaluate_generator(generator, cfg.dataset_uri, cfg, manifest=manifest, pool=pool)
        log_evaluation(result, uri, run_id=active.info.run_id, step=cfg.train.iterations)
    return result.metrics | ({"audit": result.audit} if result.audit is not None else {}) \
        | ({"copying": result.copying} if result.copying is not None else {})


def register_step(cfg: PipelineConfig, generator, manifest: dict, evaluation: dict) -> dict:
    """Log G to the pipeline run with its metrics linked to it and the dataset, register a
    version, and promote it if it is the best."""
    from pipelines.records import registry
    from pipelines.records.lineage import mlflow_dataset

    from pipelines.evaluation.metrics import ranking_metric

    # Held-out FID when the dataset has held-out images: a model that copies cannot win on it.
    ranked = ranking_metric(manifest, cfg.eval.fid_samples)
    fid_key = ranked if ranked in evaluation else next((k for k in evaluation if k.startswith("fid")), None)
    kid_key = next((k for k in evaluation if k.startswith("kid") and not k.endswith("std")), None)
    audit, copying = evaluation.get("audit") or {}, evaluation.get("copying") or {}
    name = cfg.registered_model_name
    version, promoted, reason = registry.register_and_promote(
        generator, name, float(evaluation[fid_key]) if fid_key else float("inf"), fid_key or "none",
        manifest["content_hash"], {"kid": evaluation.get(kid_key, "none"), "resolution": cfg.model.resolution,
                                   "audit_exact_collision_fraction": audit.get("exact_collision_fraction", "none")},
        metrics={k: v for k, v in evaluation.items() if isinstance(v, (int, float))},
        dataset=mlflow_dataset(manifest, cfg.dataset_uri), step=cfg.train.iterations,
        blocked="; ".join(copying.get("reasons", [])) if copying.get("copying") else None)
    outcome = "now the champion" if promoted else "a challenger, not the champion"
    print(f"[run] registered {name} version {version.version}: {outcome} ({reason})", flush=True)
    return {"name": name, "version": version.version, "champion": promoted}


def run_pipeline(cfg: PipelineConfig) -> dict:
    from pipelines.driver.session import open_session

    with open_session(cfg) as session:
        return pipeline(session)


def pipeline(session: Session) -> dict:
    """Ingest (done by the session) -> train -> evaluate + audit -> register, in one MLflow
    run; a named run submitted again continues its training, in the same runs."""
    import mlflow

    from pipelines.driver.provenance import git_commit
    from pipelines.driver.session import train
    from pipelines.records import tracking
    from pipelines.records.lineage import log_dataset
    from pipelines.training.checkpoints import generator_from_state, load_state

    cfg, identity = session.cfg, session.identity
    tags = {"pipeline_step": "pipeline", "git_commit": git_commit(), "config_name": cfg.name}
    with tracking.run(session.tracking_uri, cfg.tracking.experiment, run_name=identity.name,
                      run_id=identity.parent_run_id, tags=tags) as parent:
        parent_id = parent.info.run_id
        if identity.parent_run_id is None:
            mlflow.log_params(tracking.params_from_config(cfg.flat()))
            record_ingest(session, parent_id)
            mlflow.set_tag("dataset_hash", session.manifest["content_hash"])
            log_dataset(session.manifest, cfg.dataset_uri, "training")
        trained = train(session, parent_run_id=parent_id)
        generator = generator_from_state(load_state(trained.checkpoint))
        evaluation = evaluate_step(session, parent_id, generator) if cfg.eval.final_fid else {}
        scalar = {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
        # Registered, the metrics go to the run linked to the logged model (register_step).
        registered = register_step(cfg, generator, session.manifest, evaluation) if cfg.tracking.register_model else None
        if scalar and registered is None:
            mlflow.log_metrics(scalar)
        summary = {"run_id": parent_id, "train_run_id": trained.run_id, "checkpoint": trained.checkpoint,
                   "tracking_uri": session.tracking_uri, "experiment": cfg.tracking.experiment,
                   "registered": registered, "metrics": scalar}
        mlflow.log_dict(json.loads(json.dumps(summary, default=str)), "summary.json")
    return summary


def where_to_look(summary: dict) -> str:
    uri = summary["tracking_uri"]
    ui = (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}")
    lines = [
        "", "Done. Where to look:",
        f"  MLflow:      {ui}   (experiment '{summary['experiment']}', run {summary['run_id']})",
        f"  checkpoint:  {summary['checkpoint']}",
    ]
    if summary.get("registered"):
        r = summary["registered"]
        alias = "champion" if r["champion"] else "challenger"
        lines.append(f"  model:       models:/{r['name']}/{r['version']} (alias {alias})")
        lines.append(f"  samples:     dcgan generate --network models:/{r['name']}@{alias} --seeds 0-63 --out samples.png")
    for k, v in summary.get("metrics", {}).items():
        lines.append(f"  {k}: {v:.4g}")
    return "\n".join(lines)


def pipeline_command(args) -> None:
    print(where_to_look(run_pipeline(preset_config(args))))


COMMAND = Command(PROG, "the whole pipeline: ingest, train, evaluate, audit, register", add_config_arguments,
                  pipeline_command, description="The whole pipeline: ingest, train, evaluate, register.",
                  config=preset_config)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
