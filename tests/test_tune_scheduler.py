"""ResumableASHA: a restored sweep's ASHA still knows the results recorded before the interruption.

Tune pickles the scheduler when the sweep starts and a restored sweep gets that copy
back; the test does the same with pickle and compares with Ray's own ASHAScheduler.
"""

import json
import pickle

import pytest

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune.schedulers import ResumableASHA

ASHA = dict(time_attr="iteration", metric="fid", mode="min", max_t=60, grace_period=20, reduction_factor=2,
            stop_last_trials=False)


def _trial(trial_id: str) -> Trial:
    return Trial("run_trial", trial_id=trial_id, stub=True)


def _interrupted_then_restored(scheduler):
    """Two trials pass the first rung (FID 415 and 452), the driver dies, Tune restores the start-time copy."""
    at_start = pickle.dumps(scheduler)
    for trial_id, fid in (("a", 415.0), ("b", 452.0)):
        scheduler.on_trial_add(None, _trial(trial_id))
        scheduler.on_trial_result(None, _trial(trial_id), {"iteration": 20, "fid": fid})
    restored = pickle.loads(at_start)
    late = _trial("c")
    restored.on_trial_add(None, late)
    return restored.on_trial_result(None, late, {"iteration": 20, "fid": 461.0})


def test_rays_asha_forgets_its_rungs_on_restore():
    # What ResumableASHA is for: Ray's scheduler lets the worst trial run on.
    assert _interrupted_then_restored(ASHAScheduler(**ASHA)) == TrialScheduler.CONTINUE


def test_resumable_asha_stops_a_late_trial_worse_than_those_before_the_interruption(tmp_path):
    state = tmp_path / "asha.json"
    assert _interrupted_then_restored(ResumableASHA(str(state), **ASHA)) == TrialScheduler.STOP
    saved = json.loads(state.read_text())  # Ray's own save, and what it was given, in order
    assert [(r["trial_id"], r["time"], r["value"], r["decision"]) for r in saved["results"]] == [
        ("a", 20, 415.0, "CONTINUE"), ("b", 20, 452.0, "STOP"), ("c", 20, 461.0, "STOP")]
    assert saved["settings"] == ASHA and saved["scheduler"]


def test_a_better_late_trial_continues_and_rungs_must_match(tmp_path):
    state = str(tmp_path / "asha.json")
    first = ResumableASHA(state, **ASHA)
    for trial_id, fid in (("a", 415.0), ("b", 452.0)):
        first.on_trial_add(None, _trial(trial_id))
        first.on_trial_result(None, _trial(trial_id), {"iteration": 20, "fid": fid})
    again = ResumableASHA(state, **ASHA)
    again.on_trial_add(None, _trial("d"))
    assert again.on_trial_result(None, _trial("d"), {"iteration": 20, "fid": 397.0}) == TrialScheduler.CONTINUE

    other = ResumableASHA(state, **{**ASHA, "grace_period": 10})
    with pytest.raises(RuntimeError, match="other rungs"):
        other.on_trial_add(None, _trial("e"))
