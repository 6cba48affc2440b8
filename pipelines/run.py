"""The whole pipeline as one job: ingest -> train -> evaluate + audit -> register.

    python -m pipelines.run --config configs/demo.yaml [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m pipelines.run --config configs/smoke.yaml

One MLflow run per pipeline run, with a nested run per step (ingest, train, evaluate).
Tracking and storage are checked before any expensive work; a missing service stops
the job in seconds with a message saying how to start it, and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines import storage, tracking
from pipelines.config import ConfigError, PipelineConfig, load_config


def preflight(cfg: PipelineConfig) -> str:
    """Everything that can fail in seconds, before anything is written."""
    uri = cfg.tracking_uri()
    tracking.check_tracking(uri)
    storage.check_writable(cfg.checkpoints_uri)
    if not storage.exists(storage.join(cfg.dataset_uri, "manifest.json")):
        storage.check_writable(cfg.dataset_uri.rstrip("/").rsplit("/", 1)[0])
    return uri


def ingest_step(cfg: PipelineConfig, uri: str, parent_id: str) -> dict:
    import mlflow

    from pipelines.ingest import ensure_dataset

    with tracking.run(uri, cfg.tracking.experiment, run_name="ingest", parent_run_id=parent_id,
                      tags={"pipeline_step": "ingest"}):
        manifest = ensure_dataset(cfg)
        mlflow.log_params({"source": manifest.get("source", cfg.data.source), "dataset_uri": cfg.dataset_uri})
        mlflow.log_metrics({"images": manifest["count"], "skipped": len(manifest.get("skipped", [])),
                            "duplicates": manifest.get("duplicates", 0)})
        mlflow.log_dict(manifest, "manifest.json")
    return manifest


def evaluate_step(cfg: PipelineConfig, uri: str, parent_id: str, generator, manifest: dict) -> dict:
    from pipelines.evaluate import evaluate_generator, log_to_mlflow, workers_for

    with tracking.run(uri, cfg.tracking.experiment, run_name="evaluate", parent_run_id=parent_id,
                      tags={"pipeline_step": "evaluate"}) as active:
        result = evaluate_generator(generator, cfg.dataset_uri, cfg, manifest=manifest,
                                    workers=workers_for(cfg), use_gpu=cfg.scaling.use_gpu)
        log_to_mlflow(result, uri, run_id=active.info.run_id, step=cfg.train.iterations)
    return result.metrics | ({"audit": result.audit} if result.audit is not None else {})


def register_step(cfg: PipelineConfig, generator, manifest: dict, evaluation: dict) -> dict:
    """Log G to the pipeline run, register a version, and promote it if it is the best."""
    from pipelines import registry
    from pipelines.train import git_commit

    info = registry.log_generator(generator)
    fid_key = next((k for k in evaluation if k.startswith("fid")), None)
    kid_key = next((k for k in evaluation if k.startswith("kid") and not k.endswith("std")), None)
    fid = float(evaluation[fid_key]) if fid_key else float("inf")
    audit = evaluation.get("audit") or {}
    tags = {registry.FID_TAG: fid, "fid_metric": fid_key or "none", registry.DATASET_TAG: manifest["content_hash"],
            "kid": evaluation.get(kid_key, "none"), "git_commit": git_commit(),
            "audit_exact_collision_fraction": audit.get("exact_collision_fraction", "none"),
            "resolution": cfg.model.resolution}
    name = cfg.registered_model_name
    version = registry.register(info.model_uri, name, tags)
    promoted, reason = registry.promote_if_better(name, version.version, fid, manifest["content_hash"])
    print(f"[run] registered {name} version {version.version} (challenger); "
          f"{'champion: ' if promoted else 'not champion: '}{reason}", flush=True)
    return {"name": name, "version": version.version, "champion": promoted}


def run_pipeline(cfg: PipelineConfig) -> dict:
    import mlflow

    uri = preflight(cfg)
    # Torch and Ray load only now: a missing service is reported before they take seconds to import.
    from pipelines.checkpoints import generator_from_state, load_state
    from pipelines.cluster import init_ray
    from pipelines.train import checkpoint_uri, git_commit, run_training, unique_run_name

    init_ray(cfg)
    tags = {"pipeline_step": "pipeline", "git_commit": git_commit(), "config_name": cfg.name}
    with tracking.run(uri, cfg.tracking.experiment, run_name=unique_run_name(cfg), tags=tags) as parent:
        parent_id = parent.info.run_id
        mlflow.log_params(tracking.params_from_config(cfg.flat()))
        manifest = ingest_step(cfg, uri, parent_id)
        mlflow.set_tag("dataset_hash", manifest["content_hash"])
        train_run_id, result, _ = run_training(cfg, parent_run_id=parent_id)
        ckpt = checkpoint_uri(result)
        generator = generator_from_state(load_state(ckpt))
        evaluation = evaluate_step(cfg, uri, parent_id, generator, manifest) if cfg.eval.final_fid else {}
        scalar = {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
        if scalar:
            mlflow.log_metrics(scalar)
        registered = register_step(cfg, generator, manifest, evaluation) if cfg.tracking.register_model else None
        summary = {"run_id": parent_id, "train_run_id": train_run_id, "checkpoint": ckpt,
                   "tracking_uri": uri, "experiment": cfg.tracking.experiment, "registered": registered,
                   "metrics": scalar}
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
        lines.append(f"  samples:     dcgan generate --model models:/{r['name']}@{alias} -n 64 --out samples.png")
    for k, v in summary.get("metrics", {}).items():
        lines.append(f"  {k}: {v:.4g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dcgan run", description="The whole pipeline: ingest, train, evaluate, register.")
    ap.add_argument("--config", default="demo", help="a preset name (configs/*.yaml) or a YAML path")
    ap.add_argument("overrides", nargs="*", help="key=value with dotted keys, e.g. train.iterations=200")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        summary = run_pipeline(cfg)
    except (ConfigError, tracking.TrackingUnavailable, storage.StorageError) as e:
        print(f"dcgan run: {e}", file=sys.stderr)
        return 2
    print(where_to_look(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
