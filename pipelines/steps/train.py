"""`dcgan train`: distributed DCGAN training on Ray Train, in its own MLflow run.

    python -m pipelines.steps.train --config demo [key=value ...]
    ray job submit --working-dir . -- python -m pipelines.steps.train --config demo

Without ``RAY_ADDRESS`` Ray starts in-process; ``ray job submit`` sets it for the job.
The driver's sequence is :mod:`pipelines.driver.session`, the worker loop
:mod:`pipelines.training.loop`. With ``train.run_name`` set, the same command submitted
again continues that run (:mod:`pipelines.driver.named_runs`).
"""

from __future__ import annotations

from pipelines.steps.entrypoint import Command, add_config_arguments, preset_config

PROG = "dcgan train"


def train_command(args) -> int:
    from pipelines.driver.session import open_session, train

    with open_session(preset_config(args)) as session:
        trained = train(session)
    print(f"[train] done. MLflow run {trained.run_id} at {session.tracking_uri}; last checkpoint: {trained.checkpoint}")
    return 0


COMMAND = Command(PROG, "distributed DCGAN training on Ray Train", add_config_arguments, train_command,
                  description="Distributed DCGAN training on Ray Train.", config=preset_config)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
