"""Ray Tune sweeps over learning rates and k, stopped early on FID, the winner registered.

    python -m tune.sweep --config configs/sweep-demo.yaml [key=value ...]
    python -m tune.sweep --resume runs/sweeps/<sweep run>       # continue an interrupted sweep
    ray job submit --working-dir . -- python -m tune.sweep --config configs/sweep-demo.yaml

Each trial is a multi-worker ``TorchTrainer`` run of ``pipelines.train``. Ray 2.60 runs
Train V2, where ``Tuner(TorchTrainer)`` is refused: the supported way, used here, is a
Tune *function* trainable (:func:`run_trial`) that builds and fits the TorchTrainer
itself, with ``TuneReportCallback`` forwarding what rank 0 reports (FID every
``eval.fid_every`` iterations, together with a checkpoint) to Tune, where ASHA stops
bad trials early. The trial's Ray Train run is named after the trial, so a trial that
restarts (a restored sweep) resumes from its own last checkpoint.

MLflow: a parent run for the sweep, a nested run per trial (config, FID curve, losses,
samples), the table of trials and a plot of FID against the learning rates per k as
artifacts; the best trial's generator is registered, ``champion`` only if it beats the
current one on the same dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import storage, tracking
from pipelines.config import ConfigError, PipelineConfig
from tune.config import SweepConfig, load_sweep

STATE_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"  # the finished sweep: best trial, registered version, time split
ASHA_STATE_FILE = "asha.json"  # ASHA's rungs, for a restored sweep (tune/schedulers.py)
TRIAL_DRIVER_CPU = 0.1


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space = {}
    for key, spec in sweep.search.items():
        kind, args = next(iter(spec.items()))
        space[key] = {
            "loguniform": lambda a: tune.loguniform(*a),
            "uniform": lambda a: tune.uniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1),
            "choice": tune.choice,
            "grid": tune.grid_search,
        }[kind](args)
    return space


def metric_name(cfg: PipelineConfig, metric: str) -> str:
    from pipelines.evaluate import metric_key

    return metric_key(metric, cfg.eval.fid_samples)


def run_trial(config: dict[str, Any]) -> None:
    """One Tune trial: an MLflow child run around a multi-worker TorchTrainer."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from mlflow.tracking import MlflowClient

    from pipelines.data import read_manifest
    from pipelines.train import fit, make_evaluator

    ctx = config["context"]
    sweep = SweepConfig.model_validate(ctx["sweep"])
    cfg = sweep.trial_config(config["params"])
    trial_id = tune.get_context().get_trial_id()
    uri, parent = ctx["tracking_uri"], ctx["parent_run_id"]
    client = MlflowClient(uri)
    previous = client.search_runs([ctx["experiment_id"]],
                                  f"tags.trial_id = '{trial_id}' and tags.sweep_run_id = '{parent}'")
    run_id = previous[0].info.run_id if previous else None
    tags = {"trial_id": trial_id, "sweep_run_id": parent, "pipeline_step": "trial"}
    with tracking.run(uri, cfg.tracking.experiment, run_name=f"trial-{trial_id}", run_id=run_id,
                      parent_run_id=parent, tags=tags) as active:
        import mlflow

        if run_id is None:
            mlflow.log_params(tracking.params_from_config(cfg.flat()))
            mlflow.log_params({f"search.{k}": v for k, v in config["params"].items()})
        result = fit(cfg, run_name=f"{ctx['sweep_run_name']}-{trial_id}", tracking_uri=uri,
                     mlflow_run_id=active.info.run_id, evaluator=make_evaluator(cfg, read_manifest(cfg.dataset_uri)),
                     callbacks=[TuneReportCallback()], keep_best_by=metric_name(cfg, sweep.metric))
        if result.error:
            raise result.error


def _end_trial_runs(results, uri: str, experiment_id: str, parent_id: str, iterations: int) -> None:
    """Give every trial's MLflow run Tune's verdict. A trial that ASHA stopped was ended by
    Tune from outside (its actor killed), so its run is still RUNNING, KILLED or FAILED:
    it finished early; a trial that errored FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None:
            continue
        for run in client.search_runs([experiment_id], f"tags.trial_id = '{trial_id}' and tags.sweep_run_id = '{parent_id}'"):
            stopped = (result.metrics or {}).get("iteration", iterations) < iterations
            client.set_tag(run.info.run_id, "stopped_early", str(stopped).lower())
            # A trial the scheduler stops can see its TorchTrainer fail as it is torn down
            # and end its own run FAILED: Tune's result says whether it really erred.
            status = "FAILED" if result.error else "FINISHED"
            if run.info.status != status:
                client.set_terminated(run.info.run_id, status)


def _trial_table(results, metric: str, search_keys: list[str]):
    df = results.get_dataframe(filter_metric=metric, filter_mode="min")
    keep = (["trial_id", "iteration", metric, "checkpoint_path", "time_total_s", "setup_seconds", "eval_seconds",
             "train_seconds"] + [f"config/params/{k}" for k in search_keys])
    df = df[[c for c in keep if c in df.columns]].rename(columns={f"config/params/{k}": k for k in search_keys})
    return df.sort_values(metric)


def _plot(df, metric: str, path: Path) -> Path:
    """Best FID of each trial against lr_g and lr_d, one colour per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k_key = "train.discriminator_steps"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, lr in zip(axes, ("train.lr_g", "train.lr_d")):
        if lr not in df:
            ax.set_visible(False)
            continue
        groups = df.groupby(k_key) if k_key in df else [("fixed", df)]
        for k, part in groups:
            ax.scatter(part[lr], part[metric], label=f"k={k}", s=40)
        ax.set_xscale("log")
        ax.set_xlabel(lr)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"best {metric} (lower is better)")
    axes[0].legend(title="discriminator steps")
    fig.suptitle("Sweep: best FID per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cpus_needed(sweep: SweepConfig, base: PipelineConfig) -> int:
    per_trial = base.scaling.num_workers * base.scaling.cpus_per_worker + 1 + TRIAL_DRIVER_CPU  # + Ray Data's reads
    return int(sweep.max_concurrent_trials * per_trial + 0.999)


def run_sweep(sweep: SweepConfig | None, resume: str | None = None) -> dict[str, Any]:
    import mlflow
    import ray
    from ray import tune

    from pipelines import registry
    from pipelines.checkpoints import generator_from_state, load_state
    from pipelines.ingest import ensure_dataset
    from pipelines.cluster import init_ray
    from pipelines.train import git_commit, make_evaluator, unique_run_name
    from ray.tune.search import BasicVariantGenerator

    from tune.schedulers import ResumableASHA

    if resume:
        state = json.loads(storage.read_bytes(storage.join(resume, STATE_FILE)))
        sweep = SweepConfig.model_validate(state["sweep"])
    base = sweep.check()
    uri = base.tracking_uri()
    tracking.check_tracking(uri)
    experiment_id = tracking.configure(uri, base.tracking.experiment)
    if resume:
        sweep_dir, sweep_run_name, parent_id = resume, state["sweep_run_name"], state["parent_run_id"]
    else:
        sweep_run_name = unique_run_name(base.model_copy(update={"name": sweep.name}))
        sweep_dir = storage.join(base.storage, "sweeps", sweep_run_name)
        storage.check_writable(sweep_dir)
    if not ray.is_initialized():
        scaled = base.model_copy(update={"scaling": base.scaling.model_copy(
            update={"num_workers": 1, "cpus_per_worker": float(_cpus_needed(sweep, base) - 1)})})
        init_ray(scaled)

    t0 = time.time()
    manifest = ensure_dataset(base)
    make_evaluator(base, manifest)  # reference statistics once, cached beside the dataset, before trials race for them
    prep_s = time.time() - t0

    with tracking.run(uri, base.tracking.experiment, run_name=sweep_run_name, run_id=parent_id if resume else None,
                      tags={"pipeline_step": "sweep", "git_commit": git_commit(), "dataset_hash": manifest["content_hash"]}) as parent:
        parent_id = parent.info.run_id
        if not resume:
            mlflow.log_params({"sweep." + k: json.dumps(v) for k, v in sweep.model_dump().items() if k != "search"})
            mlflow.log_dict(sweep.model_dump(), "sweep_config.json")
            storage.write_bytes(storage.join(sweep_dir, STATE_FILE), json.dumps({
                "sweep": sweep.model_dump(), "sweep_run_name": sweep_run_name, "parent_run_id": parent_id}).encode())
        metric = metric_name(base, sweep.metric)
        # The trial function only coordinates (its TorchTrainer asks for the workers'
        # resources itself): a sliver of a CPU, so trials queue on the workers' resources.
        trainable = tune.with_resources(run_trial, {"CPU": TRIAL_DRIVER_CPU})
        fs, path = storage.filesystem(sweep_dir)
        if resume and tune.Tuner.can_restore(storage.join(sweep_dir, "tune"), storage_filesystem=fs):
            tuner = tune.Tuner.restore(f"{path}/tune", trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=fs)
        else:
            scheduler = None
            if sweep.asha:
                # stop_last_trials=False: a trial that reaches max_t ends by itself, not by a stop.
                scheduler = ResumableASHA(storage.join(sweep_dir, ASHA_STATE_FILE),
                                          time_attr="iteration", max_t=base.train.iterations, stop_last_trials=False,
                                          grace_period=sweep.asha.grace_period * base.eval.fid_every,
                                          reduction_factor=sweep.asha.reduction_factor)
            # Random and grid: Tune's variant generator, seeded, so a sweep's trials are
            # the same configurations every time it runs. It must enforce the concurrency
            # itself: TuneConfig's max_concurrent_trials is ignored for a generator instance.
            search_alg = BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent_trials)
            if sweep.searcher == "optuna":
                try:
                    from ray.tune.search.optuna import OptunaSearch
                except ImportError as e:
                    raise ConfigError("searcher: optuna needs the optuna package: pip install optuna") from e
                search_alg = OptunaSearch(seed=sweep.seed)
            context = {"sweep": sweep.model_dump(), "tracking_uri": uri, "experiment_id": experiment_id,
                       "parent_run_id": parent_id, "sweep_run_name": sweep_run_name}
            tuner = tune.Tuner(
                trainable,
                param_space={"params": search_space(sweep), "context": context},
                tune_config=tune.TuneConfig(metric=metric, mode="min", scheduler=scheduler, search_alg=search_alg,
                                            num_samples=sweep.num_samples,
                                            max_concurrent_trials=sweep.max_concurrent_trials),
                run_config=tune.RunConfig(name="tune", storage_path=path, storage_filesystem=fs),
            )
        t1 = time.time()
        results = tuner.fit()
        sweep_s = time.time() - t1

        _end_trial_runs(results, uri, experiment_id, parent_id, base.train.iterations)
        df = _trial_table(results, metric, list(sweep.search))
        # From each trial's last result (the table holds each trial's best one).
        stopped_early = sum(1 for r in results if r.metrics and r.metrics.get("iteration", base.train.iterations)
                            < base.train.iterations)
        # Where the trials' time went: inside the training loop (set-up, evaluation, training)
        # versus around it (trial actor, MLflow run, Ray Train controller and worker group start).
        timing = _time_split(df)
        mlflow.log_metrics({"trials": len(df), "trials_stopped_early": stopped_early,
                            "prepare_seconds": prep_s, "tune_seconds": sweep_s, **timing})
        with tempfile.TemporaryDirectory() as tmp:
            df.to_csv(Path(tmp, "trials.csv"), index=False)
            mlflow.log_artifact(str(Path(tmp, "trials.csv")))
            mlflow.log_artifact(str(_plot(df, metric, Path(tmp, "fid_vs_learning_rates.png"))))
        errors = [r.error for r in results if r.error]
        if len(errors) == len(df) or df.empty:
            raise RuntimeError(f"every trial failed; first error: {errors[0] if errors else 'no result'}")
        best = df.iloc[0]
        best_fid = float(best[metric])
        mlflow.log_metric(f"best_{metric}", best_fid)
        generator = generator_from_state(load_state(_checkpoint_uri(best["checkpoint_path"], sweep_dir)))
        info = registry.log_generator(generator)
        tags = {registry.FID_TAG: best_fid, "fid_metric": metric, registry.DATASET_TAG: manifest["content_hash"],
                "git_commit": git_commit(), "sweep_run_id": parent_id, "trial_id": best["trial_id"],
                **{k: best[k] for k in sweep.search if k in best}}
        version = registry.register(info.model_uri, base.registered_model_name, tags)
        promoted, reason = registry.promote_if_better(base.registered_model_name, version.version, best_fid,
                                                      manifest["content_hash"])
    summary = {"sweep_dir": sweep_dir, "parent_run_id": parent_id, "best_trial": best["trial_id"], "best_fid": best_fid,
               "model": f"models:/{base.registered_model_name}/{version.version}", "champion": promoted,
               "reason": reason, "trials": len(df), "stopped_early": stopped_early,
               "prepare_seconds": round(prep_s, 1), "tune_seconds": round(sweep_s, 1),
               **{k: round(v, 1) for k, v in timing.items()}}
    # Also beside the sweep: Ray's log forwarding may print after the summary on stdout.
    storage.write_bytes(storage.join(sweep_dir, SUMMARY_FILE), json.dumps(summary, indent=2, default=str).encode())
    return summary


def _time_split(df) -> dict[str, float]:
    cols = ["time_total_s", "setup_seconds", "eval_seconds", "train_seconds"]
    if not all(c in df for c in cols):
        return {}
    total, setup, evaluation, training = (float(df[c].sum()) for c in cols)
    return {"trial_seconds": total, "trial_startup_seconds": total - setup - evaluation - training,
            "trial_setup_seconds": setup, "trial_eval_seconds": evaluation, "trial_train_seconds": training}


def _checkpoint_uri(path: str, sweep_dir: str) -> str:
    return f"s3://{path}" if storage.is_s3(sweep_dir) and not path.startswith("s3://") else path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dcgan sweep", description="Ray Tune sweep over learning rates and k.")
    ap.add_argument("--config", default="sweep-demo", help="a sweep YAML (configs/sweep-*.yaml)")
    ap.add_argument("--resume", help="the folder of an interrupted sweep (printed when it started)")
    ap.add_argument("overrides", nargs="*", help="key=value of the sweep config, e.g. num_samples=8")
    args = ap.parse_args(argv)
    try:
        sweep = None if args.resume else load_sweep(args.config, args.overrides)
        if sweep is not None:
            print(f"[sweep] {sweep.num_samples} trials, {sweep.max_concurrent_trials} at a time; "
                  f"search: {', '.join(sweep.search)}", flush=True)
        summary = run_sweep(sweep, resume=args.resume)
    except (ConfigError, tracking.TrackingUnavailable, storage.StorageError) as e:
        print(f"dcgan sweep: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
