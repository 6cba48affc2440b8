"""One sweep trial, and what the sweep makes of all of them: search space, verdicts, table, plot.

Each trial is a multi-worker ``TorchTrainer`` run, trained by the driver session's
training part (:func:`pipelines.driver.session.train`).
Ray 2.60 runs Train V2, where ``Tuner(TorchTrainer)`` is refused: the supported way,
used here, is a Tune *function* trainable (:func:`run_trial`) that builds and fits the
TorchTrainer itself, with ``TuneReportCallback`` forwarding what rank 0 reports (FID
every ``eval.fid_every`` iterations, together with a checkpoint) to Tune. The trial's
Ray Train run is named after the trial, so a trial that restarts (a restored sweep)
resumes from its own last checkpoint. This package is named ``tune`` after the layer
it is (the README's Layout); Ray's is always imported as ``ray.tune`` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.evaluation.metrics import metric_key, ranking_metric
from tune.sweep_config import SweepConfig


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    import ray.tune

    space = {}
    for key, spec in sweep.search.items():
        kind, args = next(iter(spec.items()))
        space[key] = {
            "loguniform": lambda a: ray.tune.loguniform(*a),
            "uniform": lambda a: ray.tune.uniform(*a),
            "randint": lambda a: ray.tune.randint(a[0], a[1] + 1),
            # searcher: grid runs every combination of the listed values (ranges are refused)
            "choice": ray.tune.grid_search if sweep.searcher == "grid" else ray.tune.choice,
            "grid": ray.tune.grid_search,
        }[kind](args)
    return space


def metric_name(manifest: dict, cfg: PipelineConfig, metric: str) -> str:
    """The reported metric a sweep ranks trials by: ``fid`` means FID against the held-out
    images when the dataset has them (a trial that copies cannot win there)."""
    if metric == "fid":
        return ranking_metric(manifest, cfg.eval.fid_samples)
    return metric_key(metric, cfg.eval.fid_samples)


def run_trial(config: dict[str, Any]) -> None:
    """One Tune trial: the training part of the driver session (:func:`pipelines.driver.session.train`)
    inside the sweep's session (its tracking and its dataset's manifest, passed down), in
    an MLflow child run of the sweep; rank 0's reports go to Tune."""
    import ray.tune
    from mlflow.tracking import MlflowClient
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.driver.named_runs import RunIdentity
    from pipelines.driver.session import Session, train

    ctx = config["context"]
    sweep = SweepConfig.model_validate(ctx["sweep"])
    cfg = sweep.trial_config(config["params"])
    trial_id = ray.tune.get_context().get_trial_id()
    uri, parent = ctx["tracking_uri"], ctx["parent_run_id"]
    previous = MlflowClient(uri).search_runs([ctx["experiment_id"]],
                                             f"tags.trial_id = '{trial_id}' and tags.sweep_run_id = '{parent}'")
    # Named after the trial, so a restored sweep's trial resumes from its own last checkpoint.
    identity = RunIdentity(f"{ctx['sweep_run_name']}-{trial_id}", previous[0].info.run_id if previous else None)
    session = Session(cfg, uri, ctx["manifest"], identity)
    train(session, parent_run_id=parent, tags={"trial_id": trial_id, "sweep_run_id": parent, "pipeline_step": "trial"},
          params={f"search.{k}": v for k, v in config["params"].items()}, callbacks=[TuneReportCallback()],
          keep_best_by=metric_name(ctx["manifest"], cfg, sweep.metric), graceful=False)


def end_trial_runs(results, uri: str, experiment_id: str, parent_id: str, iterations: int) -> None:
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


def trial_table(results, metric: str, search_keys: list[str]):
    df = results.get_dataframe(filter_metric=metric, filter_mode="min")
    keep = (["trial_id", "iteration", metric, "checkpoint_path", "time_total_s", "setup_seconds", "eval_seconds",
             "train_seconds"] + [f"config/params/{k}" for k in search_keys])
    df = df[[c for c in keep if c in df.columns]].rename(columns={f"config/params/{k}": k for k in search_keys})
    return df.sort_values(metric)


def plot_trials(df, metric: str, path: Path) -> Path:
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


def time_split(df) -> dict[str, float]:
    cols = ["time_total_s", "setup_seconds", "eval_seconds", "train_seconds"]
    if not all(c in df for c in cols):
        return {}
    total, setup, evaluation, training = (float(df[c].sum()) for c in cols)
    return {"trial_seconds": total, "trial_startup_seconds": total - setup - evaluation - training,
            "trial_setup_seconds": setup, "trial_eval_seconds": evaluation, "trial_train_seconds": training}
