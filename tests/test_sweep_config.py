"""The sweep's YAML and command line, parsed only (no Ray, nothing run): numbers as people
type them, the help's own example, a real grid, and local paths fixed on the driver."""

import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_config
from tune.sweep import main
from tune.sweep_config import SweepConfig, load_sweep
from tune.trials import search_space

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ["1e-4", "1E-4", "5e-05", "0.0001", "1.0e-4", "1.0e4", "+1e2", "1_000"]
VALUES = [1e-4, 1e-4, 5e-5, 1e-4, 1e-4, 1e4, 1e2, 1000]


def _sweep_yaml(tmp_path: Path, search: str, extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: t\npreset: smoke\npipeline: {{eval.fid_every: 10}}\nsearch:\n{search}\n{extra}")
    return path


def test_numbers_in_a_sweep_yaml_are_numbers_however_typed(tmp_path):
    path = _sweep_yaml(tmp_path, "  train.lr_g: {loguniform: [1e-4, 1E-3]}\n  train.lr_d: {uniform: [5e-05, 2e-3]}\n"
                       "  train.discriminator_steps: {randint: [1, 3]}\n  train.beta1: {choice: [0, 5e-1, 0.9]}")
    sweep = load_sweep(path)
    assert sweep.search["train.lr_g"] == {"loguniform": [1e-4, 1e-3]}
    assert sweep.search["train.lr_d"] == {"uniform": [5e-5, 2e-3]}
    assert sweep.search["train.beta1"] == {"choice": [0, 0.5, 0.9]}
    assert all(isinstance(v, (int, float)) for spec in sweep.search.values() for v in next(iter(spec.values())))


@pytest.mark.parametrize("typed,value", zip(NUMBERS, VALUES), ids=NUMBERS)
def test_a_number_typed_any_usual_way_is_read_as_one(tmp_path, typed, value):
    # in a sweep YAML, a sweep override, a pipeline override in a sweep, a pipeline config
    path = _sweep_yaml(tmp_path, f"  eval.copying_min_median_ratio: {{choice: [{typed}]}}\n"
                       f"  tracking.outage_timeout_s: {{uniform: [{typed}, 2e4]}}")
    sweep = load_sweep(path, [f"pipeline.eval.copying_min_median_ratio={typed}"])
    assert sweep.search["eval.copying_min_median_ratio"]["choice"] == [value]
    assert sweep.search["tracking.outage_timeout_s"]["uniform"][0] == value
    assert sweep.pipeline["eval"]["copying_min_median_ratio"] == value
    assert load_config("smoke", [f"tracking.outage_timeout_s={typed}"]).tracking.outage_timeout_s == value


def test_quoted_numbers_stay_text_and_bounds_must_be_numbers(tmp_path):
    with pytest.raises(ConfigError, match=r"search\.train\.lr_g: loguniform bounds must be numbers, got 'low'"):
        load_sweep(_sweep_yaml(tmp_path, "  train.lr_g: {loguniform: [low, 1e-3]}"))
    sweep = load_sweep(_sweep_yaml(tmp_path, "  train.lr_g: {uniform: ['1e-4', 1e-3]}\n  name: {choice: ['1e3']}"))
    assert sweep.search["train.lr_g"]["uniform"] == [1e-4, 1e-3]  # a bound quoted by mistake still reads
    assert sweep.search["name"]["choice"] == ["1e3"]  # a quoted choice is the text it says


def test_the_help_example_is_accepted(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    example = re.search(r"overrides .*?e\.g\. (\S+=\S+(?: \S+=\S+)*)", text).group(1).split()
    sweep = load_sweep("sweep-demo", example)  # parsed and checked, not run
    base = sweep.check().flat()
    for item in example:
        key, value = item.split("=", 1)
        got = base[key.removeprefix("pipeline.")] if key.startswith("pipeline.") else getattr(sweep, key)
        assert got == yaml.safe_load(value), (item, got)


def test_grid_searcher_runs_every_combination_of_the_choices(tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    path = _sweep_yaml(tmp_path, "  train.lr_g: {choice: [1e-4, 2e-4, 4e-4]}\n"
                       "  train.discriminator_steps: {choice: [1, 2]}", "searcher: grid\n")
    sweep = load_sweep(path)
    assert sweep.num_samples == 1 and sweep.trial_count() == 6  # each combination once unless num_samples says more
    variants = [spec["params"] for _, spec in generate_variants({"params": search_space(sweep)})]
    assert sorted((v["train.lr_g"], v["train.discriminator_steps"]) for v in variants) == \
        sorted((lr, k) for lr in (1e-4, 2e-4, 4e-4) for k in (1, 2))
    assert load_sweep(path, ["num_samples=2"]).trial_count() == 12


def test_grid_searcher_refuses_a_continuous_range_naming_the_key(tmp_path):
    path = _sweep_yaml(tmp_path, "  train.lr_g: {loguniform: [1e-4, 1e-3]}\n"
                       "  train.discriminator_steps: {choice: [1, 2]}", "searcher: grid\n")
    with pytest.raises(ConfigError, match=r"search\.train\.lr_g.*loguniform.*choice"):
        load_sweep(path)


def test_local_paths_are_fixed_where_the_sweep_starts(tmp_path, monkeypatch):
    """Tune runs each trial in its own working folder: a relative ./runs, dataset or preset
    path must mean the folder the sweep was started from, not the trial's."""
    start, elsewhere = tmp_path / "clone", tmp_path / "trial-dir"
    start.mkdir(), elsewhere.mkdir()
    (start / "preset.yaml").write_text((ROOT / "pipelines" / "presets" / "smoke.yaml").read_text())
    monkeypatch.chdir(start)
    sweep = load_sweep(_sweep_yaml(start, "  train.lr_g: {choice: [1e-4]}").name,
                       ["preset=preset.yaml", "pipeline.data.dataset=data/set",
                        "pipeline.tracking.uri=sqlite:///db/m.db"])
    pinned = sweep.pinned()
    monkeypatch.chdir(elsewhere)  # as in a trial
    cfg = SweepConfig.model_validate(pinned.model_dump()).trial_config({"train.lr_g": 1e-4})
    assert cfg.storage == str(start / "runs") and cfg.data.dataset == str(start / "data" / "set")
    assert cfg.tracking.uri == f"sqlite:///{start}/db/m.db" and cfg.tracking_uri() == cfg.tracking.uri
    assert pinned.pinned() == pinned  # pinning twice changes nothing
