"""Every trial's FID at every rung: the sweep's table and figure.

Tune's best-per-trial table hides what ASHA decided from: this one has a row per trial
with its searched values and its metric at each reported iteration (the rungs), blank
where ASHA had stopped it. It is written as CSV and Markdown and drawn as one curve per
trial, logged to the sweep's MLflow run, and can be rebuilt from a finished sweep's Tune
folder (:func:`from_experiment`: Ray's own ``ExperimentAnalysis`` over its result files).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def rung_table(frames: dict[str, pd.DataFrame], configs: dict[str, dict], metric: str,
               search_keys: list[str]) -> pd.DataFrame:
    """One row per trial: its searched values, then ``metric`` at each iteration it reported,
    sorted by the trial's last reported value (best first)."""
    rows = []
    for trial_id, df in frames.items():
        if df is None or df.empty or metric not in df or "iteration" not in df:
            continue
        reported = df.dropna(subset=[metric]).drop_duplicates("iteration", keep="last")
        row = {"trial_id": trial_id, **{k: configs.get(trial_id, {}).get(k) for k in search_keys}}
        row.update({f"{metric}@{int(i)}": round(float(v), 2) for i, v in zip(reported["iteration"], reported[metric])})
        row["last"] = float(reported[metric].iloc[-1]) if len(reported) else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    rung_columns = sorted((c for c in table if c.startswith(f"{metric}@")), key=lambda c: int(c.split("@")[1]))
    table = table.sort_values("last").drop(columns="last")
    return table[["trial_id", *search_keys, *rung_columns]]


def from_results(results, metric: str, search_keys: list[str]) -> pd.DataFrame:
    """The table from Tune's ResultGrid (each trial's reported rows and its sampled values)."""
    frames, configs = {}, {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None:
            continue
        frames[trial_id] = result.metrics_dataframe
        configs[trial_id] = (result.config or {}).get("params", {})
    return rung_table(frames, configs, metric, search_keys)


def from_experiment(tune_dir: str, metric: str, search_keys: list[str]) -> pd.DataFrame:
    """The table from a sweep's Tune folder on disk (``<sweep dir>/tune``), through Ray's
    ``ExperimentAnalysis`` over the result files every trial wrote."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(tune_dir)
    frames = {trial.trial_id: analysis.trial_dataframes.get(trial.path) for trial in analysis.trials}
    configs = {trial.trial_id: trial.config.get("params", {}) for trial in analysis.trials}
    return rung_table(frames, configs, metric, search_keys)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (a README or an MLflow artifact); blank where ASHA had stopped a trial."""
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    short = [c.replace("train.", "").replace("model.", "") for c in table.columns]
    lines = ["| " + " | ".join(short) + " |", "|" + "---|" * len(short)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def plot(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """One curve per trial: ``metric`` against iterations, stopped trials ending early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rung_columns = [c for c in table if c.startswith(f"{metric}@")]
    steps = [int(c.split("@")[1]) for c in rung_columns]
    fig, ax = plt.subplots(figsize=(8, 5))
    for _, row in table.iterrows():
        ax.plot(steps, [row[c] for c in rung_columns], marker="o", label=row["trial_id"])
    ax.set_xlabel("iteration (ASHA's rungs)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title("Every trial at every rung")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
