"""`dcgan train`: distributed DCGAN training on Ray Train, in its own MLflow run.

    python -m pipelines.steps.train --config configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m pipelines.steps.train --config configs/demo.yaml

Without ``RAY_ADDRESS`` Ray starts in-process; ``ray job submit`` sets it for the job.
The driver is :mod:`pipelines.training.trainer`, the worker loop
:mod:`pipelines.training.loop`.
"""

from __future__ import annotations

from pipelines.config import load_config
from pipelines.steps.entrypoint import config_parser, run_command
from pipelines.driver.preflight import preflight

PROG = "dcgan train"


def train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    preflight(cfg)
    # Torch and Ray load only now: a wrong input is reported before they take seconds to import.
    from pipelines.training.checkpoints import checkpoint_uri
    from pipelines.training.trainer import run_training

    run_id, result, _ = run_training(cfg)
    print(f"[train] done. MLflow run {run_id} at {cfg.tracking_uri()}; last checkpoint: {checkpoint_uri(result)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = config_parser(PROG, "Distributed DCGAN training on Ray Train.").parse_args(argv)
    return run_command(PROG, lambda: train(args))


if __name__ == "__main__":
    raise SystemExit(main())
