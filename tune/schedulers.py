"""ASHA whose rungs survive an interrupted sweep.

Tune pickles the scheduler once, when a sweep starts (``tuner.pkl``), and
``Tuner.restore`` hands that fresh copy back: nothing calls the scheduler's
``save``/``restore``. A restored sweep's ASHA has therefore forgotten every result
recorded at its rungs, and the trials that run after the restore are compared only
with each other: a trial worse at the first rung than every trial before the
interruption runs on (tests/test_tune_scheduler.py shows it).

``ResumableASHA`` writes its rungs beside the sweep (local or S3) whenever a result
is recorded, and reads them back the first time a restored sweep uses it.
"""

from __future__ import annotations

import json

from ray.tune.schedulers import ASHAScheduler

from pipelines.cluster import storage


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_uri: str, **kwargs):
        super().__init__(**kwargs)
        self._state_uri = state_uri
        self._loaded = False

    def _state(self) -> dict:
        return {"milestones": [[m for m, _ in b._rungs] for b in self._brackets],
                "recorded": [[rec for _, rec in b._rungs] for b in self._brackets],
                "num_stopped": self._num_stopped}

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not storage.exists(self._state_uri):
            return
        saved = json.loads(storage.read_bytes(self._state_uri))
        if saved["milestones"] != self._state()["milestones"]:
            raise RuntimeError(f"{self._state_uri} was written by an ASHA with other rungs "
                               f"({saved['milestones']}, now {self._state()['milestones']})")
        for bracket, recorded in zip(self._brackets, saved["recorded"]):
            for (_, rung), rec in zip(bracket._rungs, recorded):
                rung.update(rec)
        self._num_stopped = saved["num_stopped"]

    def _save(self) -> None:
        storage.write_bytes(self._state_uri, json.dumps(self._state()).encode())

    def on_trial_add(self, tune_controller, trial):
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()
