"""ASHA whose rungs survive an interrupted sweep.

Tune pickles the scheduler once, when a sweep starts (``tuner.pkl``), and
``Tuner.restore`` hands that fresh copy back: nothing calls the scheduler's
``save``/``restore``. A restored sweep's ASHA has therefore forgotten every result
recorded at its rungs, and the trials that run after the restore are compared only
with each other: a trial worse at the first rung than every trial before the
interruption runs on (tests/test_tune_scheduler.py shows it).

``ResumableASHA`` calls them itself: whenever a result is recorded it writes the
scheduler's ``save`` beside the sweep (local or S3), and the first time a restored
sweep uses it, it ``restore``s from there. The same file (``asha.json``) keeps, for
people and tests, the settings and every result the scheduler was given, in the order
it got them, with what it decided.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from pipelines.cluster import storage


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_uri: str, **kwargs):
        super().__init__(**kwargs)
        self._state_uri = state_uri
        self._settings = kwargs  # the rungs follow from these; a saved state must come from the same
        self._time_attr_name = kwargs.get("time_attr", "training_iteration")
        self._results: list[dict] = []  # what the scheduler was given, in order, and its decision
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not storage.exists(self._state_uri):
            return
        saved = json.loads(storage.read_bytes(self._state_uri))
        if saved["settings"] != json.loads(json.dumps(self._settings)):
            raise RuntimeError(f"{self._state_uri} was written by an ASHA with other rungs "
                               f"({saved['settings']}, now {self._settings})")
        uri = self._state_uri
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "asha.pkl").write_bytes(base64.b64decode(saved["scheduler"]))
            self.restore(str(Path(tmp, "asha.pkl")))  # Ray's own: the scheduler's attributes, as saved
        self._state_uri, self._loaded = uri, True  # this sweep's, wherever the saved one lived

    def _save(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.save(str(Path(tmp, "asha.pkl")))
            state = base64.b64encode(Path(tmp, "asha.pkl").read_bytes()).decode()
        storage.write_bytes(self._state_uri, json.dumps(
            {"settings": self._settings, "results": self._results, "scheduler": state}).encode())

    def _record(self, trial, result: dict, decision: str) -> None:
        if self._time_attr_name in result and self.metric in result:
            time, value = (getattr(x, "item", lambda: x)() for x in (result[self._time_attr_name], result[self.metric]))
            self._results.append({"trial_id": trial.trial_id, "time": time, "value": value, "decision": decision})

    def on_trial_add(self, tune_controller, trial):
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._record(trial, result, action)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._record(trial, result, "COMPLETE")
        self._save()
