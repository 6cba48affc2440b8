"""The sweep's table of every trial at every rung (tune/rungs.py), on Tune-shaped results."""

import pandas as pd

from tune.rungs import markdown, plot, rung_table


def test_each_trial_has_its_metric_at_each_rung_and_a_stopped_trial_is_blank_after_it(tmp_path):
    frames = {
        "t1": pd.DataFrame({"iteration": [500, 1000, 1500], "fid": [310.0, 260.0, 240.0]}),
        "t2": pd.DataFrame({"iteration": [500], "fid": [400.0]}),  # stopped by ASHA at the first rung
        "t3": pd.DataFrame({"iteration": [250, 500, 500], "loss": [1.0, 2.0, 3.0], "fid": [None, 330.0, 320.0]}),
    }
    configs = {"t1": {"train.lr_g": 1e-4}, "t2": {"train.lr_g": 5e-4}, "t3": {"train.lr_g": 2e-4}}
    table = rung_table(frames, configs, "fid", ["train.lr_g"])
    assert list(table.columns) == ["trial_id", "train.lr_g", "fid@500", "fid@1000", "fid@1500"]
    assert list(table["trial_id"]) == ["t1", "t3", "t2"]  # by the last FID each reported
    t3 = table.set_index("trial_id").loc["t3"]
    assert t3["fid@500"] == 320.0 and pd.isna(t3["fid@1000"])  # the last report of a rung counts; none before
    lines = markdown(table).splitlines()
    assert lines[0] == "| trial_id | lr_g | fid@500 | fid@1000 | fid@1500 |"
    assert lines[-1] == "| t2 | 0.0005 | 400 |  |  |"
    assert plot(table, "fid", tmp_path / "rungs.png").stat().st_size > 1000
