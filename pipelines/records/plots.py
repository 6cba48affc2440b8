"""Plots of how a training went, drawn with matplotlib (Agg, no display needed).

:func:`training_plots` draws, from a run's metric histories: the two losses, D's mean
output on real and on generated images (D(x), D(G(z)) before and after D's update),
and FID over iterations where it was measured. The training loop calls it at every
checkpoint (so the last one is the end of training) and logs the files under the
run's ``plots/``; it reads the histories from MLflow, so a resumed run's plots cover
the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

Series = Sequence[tuple[int, float]]  # (step, value), in any order

LOSSES = {"loss_d": "D loss", "loss_g": "G loss"}
DISCRIMINATOR = {"d_real": "D(x)", "d_fake": "D(G(z)) before D's update", "d_fake_g": "D(G(z)) in G's update"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smoothed(values: list[float], window: int) -> list[float]:
    """A trailing moving average: the per-iteration curves of a GAN are noisy."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def line_plot(series: Mapping[str, Series], labels: Mapping[str, str], path: Path, title: str, ylabel: str,
              smooth: bool = True, ylim: tuple[float, float] | None = None) -> Path | None:
    """One figure with a line per metric of ``series`` that ``labels`` names; None when there is nothing to draw."""
    drawn = {k: sorted(v) for k, v in series.items() if k in labels and v}
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in drawn.items():
        steps, values = [p[0] for p in points], [p[1] for p in points]
        window = max(1, len(values) // 50) if smooth else 1
        line, = ax.plot(steps, _smoothed(values, window), label=labels[key], marker="o" if len(points) < 30 else None)
        if window > 1:
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_plots(histories: Mapping[str, Series], out_dir: Path) -> list[Path]:
    """losses.png, discriminator.png and (when FID was measured) fid.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fid_keys = {k: k.upper().replace("_", " ", 1) for k in histories if k.startswith(("fid_", "kid_")) and not k.endswith("_std")}
    made = [
        line_plot(histories, LOSSES, out_dir / "losses.png", "Losses", "loss"),
        line_plot(histories, DISCRIMINATOR, out_dir / "discriminator.png", "Discriminator outputs", "mean D output",
                  ylim=(0, 1)),
        line_plot(histories, {k: v for k, v in fid_keys.items() if k.startswith("fid")}, out_dir / "fid.png",
                  "FID over iterations (lower is better)", "FID", smooth=False),
    ]
    return [p for p in made if p is not None]


def run_histories(client, run_id: str, keys: Sequence[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """The metric histories of an MLflow run that :func:`training_plots` draws."""
    if keys is None:
        logged = client.get_run(run_id).data.metrics
        keys = [k for k in logged if k in LOSSES or k in DISCRIMINATOR or k.startswith("fid_")]
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
