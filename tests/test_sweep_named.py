"""A sweep with a run_name, submitted again, resumes the sweep of that name (no Ray needed
to find it); another config under the same name is refused, naming what differs."""

import json

import pytest

from pipelines.config import ConfigError
from tune.sweep import STATE_FILE, named_sweep, open_sweep
from tune.sweep_config import load_sweep


def _sweep(tmp_path, *overrides):
    return load_sweep("sweep-demo", [f"pipeline.storage={tmp_path}", "run_name=nightly", *overrides])


def test_a_named_sweep_resumes_the_folder_of_its_name_and_refuses_another_search(tmp_path):
    first = _sweep(tmp_path)
    assert named_sweep(first) is None  # nothing of that name yet: a new sweep, in sweeps/nightly
    folder = tmp_path / "sweeps" / "nightly"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"sweep": first.model_dump(), "sweep_run_name": "nightly",
                                                  "parent_run_id": "abc"}))
    again = _sweep(tmp_path)
    assert named_sweep(again) == str(folder)
    resumed = open_sweep(again, None)
    assert resumed.resumed and resumed.directory == str(folder) and resumed.parent_run_id == "abc"

    with pytest.raises(ConfigError, match="run_name=nightly is a sweep with other num_samples"):
        named_sweep(_sweep(tmp_path, "num_samples=9"))
