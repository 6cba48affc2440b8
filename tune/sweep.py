"""Ray Tune sweeps over learning rates and k, stopped early on FID, the winner registered.

    python -m tune.sweep --config sweep-demo [num_samples=8 pipeline.train.iterations=200 ...]
    python -m tune.sweep --resume runs/sweeps/<sweep run>       # continue an interrupted sweep
    ray job submit --working-dir . -- python -m tune.sweep --config sweep-demo

Each trial (:mod:`tune.trials`) is a multi-worker TorchTrainer run; ASHA
(:mod:`tune.schedulers`) stops bad trials early on the FID they report.

MLflow: a parent run for the sweep, a nested run per trial (config, FID curve, losses,
samples), the table of trials and a plot of FID against the learning rates per k as
artifacts; the best trial's generator is registered, ``champion`` only if it beats the
current one on the same dataset.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import PipelineError
from pipelines.steps.entrypoint import Command, add_config_arguments, overrides_of

if TYPE_CHECKING:  # imported where used: `dcgan sweep --help` loads neither pyarrow nor pydantic
    from pipelines.config import PipelineConfig
    from tune.sweep_config import SweepConfig

PROG = "dcgan sweep"
STATE_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"  # the finished sweep: best trial, registered version, time split
ASHA_STATE_FILE = "asha.json"  # ASHA's own save and the results it was given, for a restored sweep (tune/schedulers.py)
TRIAL_DRIVER_CPU = 0.1
# Overrides are keys of the sweep YAML; the pipeline's own keys are under pipeline.
OVERRIDES_HELP = ("key=value overrides of the sweep YAML with dotted keys (the pipeline's under pipeline.), "
                  "e.g. num_samples=8 pipeline.train.iterations=200")


class SweepFailed(PipelineError):
    """No trial left a result to rank; the message is the first trial's error, in one line."""


@dataclass
class Sweep:
    """A sweep being run: its config, where it lives, and its MLflow parent run."""

    config: SweepConfig
    base: PipelineConfig
    tracking_uri: str
    directory: str
    run_name: str
    parent_run_id: str | None = None
    resumed: bool = False
    manifest: dict | None = None  # the dataset's, once the driver session has it

    @property
    def experiment_id(self) -> str:
        from pipelines.records import tracking

        return tracking.configure(self.tracking_uri, self.base.tracking.experiment, check=False)

    @property
    def metric(self) -> str:
        from tune.trials import metric_name

        return metric_name(self.manifest, self.base, self.config.metric)


def run_sweep(sweep_config: SweepConfig | None, resume: str | None = None) -> dict[str, Any]:
    from pipelines.driver.session import open_session

    sweep = open_sweep(sweep_config, resume)
    t0 = time.time()
    with open_session(sweep.base, ray_config=ray_config(sweep.config, sweep.base)) as session:
        return sweep_in_session(sweep, session, t0)


def sweep_in_session(sweep: Sweep, session, t0: float) -> dict[str, Any]:
    import mlflow

    from pipelines.cluster import storage
    from pipelines.records import tracking
    from pipelines.driver.provenance import git_commit
    from pipelines.records.lineage import log_dataset
    from pipelines.training.trainer import make_evaluator

    storage.check_writable(sweep.directory)
    manifest = sweep.manifest = session.manifest
    make_evaluator(sweep.base, manifest)  # reference statistics, once, before the trials race for them
    prep_s = time.time() - t0
    tags = {"pipeline_step": "sweep", "git_commit": git_commit(), "dataset_hash": manifest["content_hash"]}
    with tracking.run(sweep.tracking_uri, sweep.base.tracking.experiment, run_name=sweep.run_name,
                      run_id=sweep.parent_run_id, tags=tags, system_metrics=True) as parent:
        sweep.parent_run_id = parent.info.run_id
        log_dataset(manifest, sweep.base.dataset_uri, "training")
        if not sweep.resumed:
            record_start(sweep)
        t1 = time.time()
        results = make_tuner(sweep).fit()
        sweep_s = time.time() - t1
        df, stopped_early, timing = record_results(sweep, results, prep_s, sweep_s)
        best = df.iloc[0]
        best_fid = float(best[sweep.metric])
        mlflow.log_metric(f"best_{sweep.metric}", best_fid)
        version, promoted, reason = register_best(sweep, best, manifest)
    summary = {"sweep_dir": sweep.directory, "parent_run_id": sweep.parent_run_id, "best_trial": best["trial_id"],
               "best_fid": best_fid, "model": f"models:/{sweep.base.registered_model_name}/{version.version}",
               "champion": promoted, "reason": reason, "trials": len(df), "stopped_early": stopped_early,
               "prepare_seconds": round(prep_s, 1), "tune_seconds": round(sweep_s, 1),
               **{k: round(v, 1) for k, v in timing.items()}}
    # Also beside the sweep: Ray's log forwarding may print after the summary on stdout.
    storage.write_bytes(storage.join(sweep.directory, SUMMARY_FILE), json.dumps(summary, indent=2, default=str).encode())
    return summary


def open_sweep(sweep_config: SweepConfig | None, resume: str | None) -> Sweep:
    """A new sweep, or the interrupted one in ``resume`` (the driver session checks
    tracking, data and storage before anything starts)."""
    from pipelines.cluster import storage
    from pipelines.config import absolute_location
    from pipelines.driver.named_runs import unique_run_name
    from tune.sweep_config import SweepConfig, absolute_tracking_uri

    resume = absolute_location(resume) or named_sweep(sweep_config)  # runs/sweeps/<name>: where the command was given
    state = json.loads(storage.read_bytes(storage.join(resume, STATE_FILE))) if resume else {}
    sweep_config = SweepConfig.model_validate(state["sweep"]) if resume else sweep_config
    # Local paths mean the folder the sweep started in, wherever Tune runs a trial.
    sweep_config = sweep_config.pinned()
    base = sweep_config.check()
    uri = absolute_tracking_uri(base.tracking_uri())
    if resume:
        return Sweep(sweep_config, base, uri, resume, state["sweep_run_name"], state["parent_run_id"], resumed=True)
    run_name = sweep_config.run_name or unique_run_name(sweep_config)
    return Sweep(sweep_config, base, uri, storage.join(base.storage, "sweeps", run_name), run_name)


def named_sweep(sweep_config: SweepConfig | None) -> str | None:
    """The folder of the sweep this one continues: one of the same ``run_name`` that started
    before, whose config must be this one's."""
    from pipelines.cluster import storage
    from pipelines.config import ConfigError
    from tune.sweep_config import SweepConfig

    if sweep_config is None or not sweep_config.run_name:
        return None
    folder = storage.join(sweep_config.pinned().check().storage, "sweeps", sweep_config.run_name)
    if not storage.exists(storage.join(folder, STATE_FILE)):
        return None
    stored = SweepConfig.model_validate(json.loads(storage.read_bytes(storage.join(folder, STATE_FILE)))["sweep"])
    before, now = stored.pinned().model_dump(), sweep_config.pinned().model_dump()
    differing = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if differing:
        raise ConfigError(f"run_name={sweep_config.run_name} is a sweep with other {', '.join(differing)}: resume "
                          "it with its config, or choose another run_name")
    print(f"[sweep] resuming sweep '{sweep_config.run_name}' from {folder}", flush=True)
    return folder


def ray_config(config: SweepConfig, base: PipelineConfig) -> PipelineConfig:
    """The base config with a local Ray sized for the concurrent trials."""
    return base.model_copy(update={"scaling": base.scaling.model_copy(
        update={"num_workers": 1, "cpus_per_worker": float(_cpus_needed(config, base) - 1)})})


def record_start(sweep: Sweep) -> None:
    """The sweep's config in its MLflow run, and the state a ``--resume`` reads."""
    import mlflow

    from pipelines.cluster import storage

    mlflow.log_params({"sweep." + k: json.dumps(v) for k, v in sweep.config.model_dump().items() if k != "search"})
    mlflow.log_dict(sweep.config.model_dump(), "sweep_config.json")
    storage.write_bytes(storage.join(sweep.directory, STATE_FILE), json.dumps({
        "sweep": sweep.config.model_dump(), "sweep_run_name": sweep.run_name,
        "parent_run_id": sweep.parent_run_id}).encode())


def make_tuner(sweep: Sweep):
    """Tune's Tuner: restored from the sweep's folder when resuming, else a new one with
    ASHA on FID and a seeded search (the same trial configurations every time)."""
    import ray.tune
    from ray.tune.search import BasicVariantGenerator

    from pipelines.cluster import storage
    from pipelines.config import ConfigError
    from tune.schedulers import ResumableASHA
    from tune.trials import run_trial, search_space

    config, base = sweep.config, sweep.base
    # The trial function only coordinates (its TorchTrainer asks for the workers'
    # resources itself): a sliver of a CPU, so trials queue on the workers' resources.
    trainable = ray.tune.with_resources(run_trial, {"CPU": TRIAL_DRIVER_CPU})
    fs, path = storage.filesystem(sweep.directory)
    # Inside its filesystem, without the s3:// scheme: pyarrow refuses a URI with a filesystem.
    if sweep.resumed and ray.tune.Tuner.can_restore(f"{path}/tune", storage_filesystem=fs):
        return ray.tune.Tuner.restore(f"{path}/tune", trainable=trainable, resume_unfinished=True,
                                      resume_errored=True, storage_filesystem=fs)
    scheduler = None
    if config.asha:
        # stop_last_trials=False: a trial that reaches max_t ends by itself, not by a stop.
        scheduler = ResumableASHA(storage.join(sweep.directory, ASHA_STATE_FILE),
                                  time_attr="iteration", max_t=base.train.iterations, stop_last_trials=False,
                                  grace_period=config.asha.grace_period * base.eval.fid_every,
                                  reduction_factor=config.asha.reduction_factor)
    # Tune's variant generator, seeded. It must enforce the concurrency itself:
    # TuneConfig's max_concurrent_trials is ignored for a generator instance.
    search_alg = BasicVariantGenerator(random_state=config.seed, max_concurrent=config.max_concurrent_trials)
    if config.searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as e:
            raise ConfigError("searcher: optuna needs the optuna package: pip install optuna") from e
        search_alg = OptunaSearch(seed=config.seed)
    context = {"sweep": config.model_dump(), "tracking_uri": sweep.tracking_uri, "experiment_id": sweep.experiment_id,
               "parent_run_id": sweep.parent_run_id, "sweep_run_name": sweep.run_name, "manifest": sweep.manifest}
    return ray.tune.Tuner(
        trainable,
        param_space={"params": search_space(config), "context": context},
        tune_config=ray.tune.TuneConfig(metric=sweep.metric, mode="min", scheduler=scheduler, search_alg=search_alg,
                                        num_samples=config.num_samples,
                                        max_concurrent_trials=config.max_concurrent_trials),
        run_config=ray.tune.RunConfig(name="tune", storage_path=path, storage_filesystem=fs),
    )


def record_results(sweep: Sweep, results, prep_s: float, sweep_s: float):
    """Tune's verdict on every trial run, the table of trials and its plot, into MLflow;
    returns (table sorted by FID, trials stopped early, where the trials' time went)."""
    import mlflow

    from tune.trials import end_trial_runs, plot_trials, time_split, trial_table

    iterations = sweep.base.train.iterations
    end_trial_runs(results, sweep.tracking_uri, sweep.experiment_id, sweep.parent_run_id, iterations)
    check_trials(results, sweep.metric)
    df = trial_table(results, sweep.metric, list(sweep.config.search))
    # From each trial's last result (the table holds each trial's best one).
    stopped_early = sum(1 for r in results if r.metrics and r.metrics.get("iteration", iterations) < iterations)
    # Inside the training loop (set-up, evaluation, training) versus around it (trial
    # actor, MLflow run, Ray Train controller and worker group start).
    timing = time_split(df)
    mlflow.log_metrics({"trials": len(df), "trials_stopped_early": stopped_early,
                        "prepare_seconds": prep_s, "tune_seconds": sweep_s, **timing})
    with tempfile.TemporaryDirectory() as tmp:
        df.to_csv(Path(tmp, "trials.csv"), index=False)
        mlflow.log_artifact(str(Path(tmp, "trials.csv")))
        mlflow.log_artifact(str(plot_trials(df, sweep.metric, Path(tmp, "fid_vs_learning_rates.png"))))
        log_rungs(results, sweep, Path(tmp))
    return df, stopped_early, timing


def log_rungs(results, sweep: Sweep, folder: Path) -> None:
    """Every trial's metric at every rung (what ASHA decided from): CSV, Markdown and a figure."""
    import mlflow

    from tune import rungs

    table = rungs.from_results(results, sweep.metric, list(sweep.config.search))
    if table.empty:
        return
    table.to_csv(folder / "rungs.csv", index=False)
    (folder / "rungs.md").write_text(rungs.markdown(table) + "\n")
    for name in ("rungs.csv", "rungs.md"):
        mlflow.log_artifact(str(folder / name))
    mlflow.log_artifact(str(rungs.plot(table, sweep.metric, folder / "fid_at_every_rung.png")))


def register_best(sweep: Sweep, best, manifest: dict):
    """The best trial's generator, registered; champion only if it beats the current one."""
    from pipelines.cluster import storage
    from pipelines.records import registry
    from pipelines.training.checkpoints import generator_from_state, load_state
    from pipelines.records.lineage import mlflow_dataset

    generator = generator_from_state(load_state(storage.as_uri(best["checkpoint_path"], sweep.directory)))
    tags = {"sweep_run_id": sweep.parent_run_id, "trial_id": best["trial_id"],
            **{k: best[k] for k in sweep.config.search if k in best}}
    return registry.register_and_promote(generator, sweep.base.registered_model_name, float(best[sweep.metric]),
                                         sweep.metric, manifest["content_hash"], tags,
                                         dataset=mlflow_dataset(manifest, sweep.base.dataset_uri),
                                         step=int(best.get("iteration", 0)))


def check_trials(results, metric: str) -> None:
    """A sweep with no trial to rank ends here, with one line saying why (exit status 2)."""
    errors = [r.error for r in results if r.error]
    ranked = [r for r in results if r.metrics and metric in r.metrics]
    if errors and (len(errors) == len(results) or not ranked):
        raise SweepFailed(f"every trial failed ({len(errors)} of {len(results)}); the first: {error_line(errors[0])}")
    if not ranked:
        raise SweepFailed(f"no trial reported {metric} ({len(results)} trials, none failed)")


def error_line(error: BaseException) -> str:
    """The error a trial raised, in one line: Ray's and Ray Train's wrappers (each with a
    traceback in its text) peeled off down to the project's or library's own error."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        failures = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError
        inner = (getattr(error, "cause", None) or getattr(error, "controller_failure", None)
                 or (next(iter(failures.values())) if failures else None))
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = str(error).strip()
    if "Traceback (most recent call last)" in text or '\n  File "' in text:
        text = text.splitlines()[-1]  # a traceback ends with "Type: message"
    line, name = " ".join(text.split()), type(error).__name__
    return line if line.split(":", 1)[0].split(".")[-1] == name else f"{name}: {line}"


def _cpus_needed(sweep: SweepConfig, base: PipelineConfig) -> int:
    per_trial = base.scaling.num_workers * base.scaling.cpus_per_worker + 1 + TRIAL_DRIVER_CPU  # + Ray Data's reads
    return int(sweep.max_concurrent_trials * per_trial + 0.999)


def sweep_command(args) -> int:
    from tune.sweep_config import load_sweep

    sweep = None if args.resume else load_sweep(args.config, overrides_of(args, prefix="pipeline."))
    if sweep is not None:
        print(f"[sweep] {sweep.trial_count()} trials, {sweep.max_concurrent_trials} at a time; "
              f"search: {', '.join(sweep.search)}", flush=True)
    print(json.dumps(run_sweep(sweep, resume=args.resume), indent=2, default=str))
    return 0


def add_arguments(ap) -> None:
    add_config_arguments(ap, default_config="sweep-demo", overrides_help=OVERRIDES_HELP)
    ap.add_argument("--resume", help="the folder of an interrupted sweep (printed when it started)")


def base_config(args) -> PipelineConfig:
    """The pipeline config every trial starts from (the sweep's preset and overrides, --tracking-uri)."""
    from tune.sweep_config import load_sweep

    return load_sweep(args.config, overrides_of(args, prefix="pipeline.")).check()


COMMAND = Command(PROG, "Ray Tune sweep over learning rates and k", add_arguments, sweep_command,
                  description="Ray Tune sweep over learning rates and k.", config=base_config)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
