"""`dcgan`: one argparse command tree with the habits of ray/mlflow/pip's CLIs.

--version and `help <command>`, --help that loads no heavy library, the same default preset
for every command, one flag (--network) for a generator with the old ones as deprecated
aliases, --tracking-uri and $MLFLOW_EXPERIMENT_NAME on every command that talks to MLflow
(resolution only: nothing runs), and `dcgan config show/keys/presets`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import PipelineConfig, load_config
from pipelines.config_keys import config_keys
from pipelines.steps import cli

ROOT = Path(__file__).resolve().parent.parent
NETWORK = ["--network", "models:/m@champion"]
# argv of every command that talks to MLflow, parsed only
MLFLOW_COMMANDS = {
    "run": ["run"], "train": ["train"], "evaluate": ["evaluate", *NETWORK],
    "generate": ["generate", *NETWORK, "--outdir", "x"], "latent": ["latent", "walk", *NETWORK], "sweep": ["sweep"],
}


def resolved(argv: list[str]) -> PipelineConfig:
    """The config a `dcgan` command line would run with, from its arguments alone."""
    args = cli.build_parser().parse_args(argv)
    return args.dcgan_run.config(args)


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_version_and_help_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("dcgan 0.1.0 (dcgan-ray; Python 3.") and all(f"{lib} " in out for lib in ("torch", "ray", "mlflow"))
    for command in ("generate", "config"):
        with pytest.raises(SystemExit):
            cli.main(["help", command])
        via_help = capsys.readouterr().out
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert via_help == capsys.readouterr().out and via_help.startswith(f"usage: dcgan {command}")
    with pytest.raises(SystemExit):
        cli.main(["help", "latent", "walk"])
    assert "--network" in capsys.readouterr().out
    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    assert all(f"    {c.name} " in listing for c in cli.COMMANDS)
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian' (did you mean train?)" in capsys.readouterr().err


def test_the_tree_and_every_help_load_no_heavy_library():
    """Step modules import torch, Ray, MLflow, pyarrow and pydantic inside functions only."""
    code = ("import sys\nfrom pipelines.steps import cli\nap = cli.build_parser()\n"
            "for c in cli.COMMANDS:\n"
            "    try: ap.parse_args([c.name, '--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'mlflow', 'pyarrow', 'pydantic', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]


def test_ingest_then_train_read_the_same_preset_and_dataset(clean_env):
    configs = {name: resolved(argv) for name, argv in
               {"ingest": ["ingest"], "train": ["train"], "run": ["run"], "evaluate": ["evaluate", *NETWORK]}.items()}
    assert {cfg.name for cfg in configs.values()} == {"demo"}
    assert len({cfg.dataset_uri for cfg in configs.values()}) == 1
    assert configs["ingest"].dataset_uri == load_config("demo").dataset_uri
    # The flags of ingest are config keys like any other.
    assert resolved(["ingest", "--resolution", "64"]).dataset_uri == resolved(["train", "model.resolution=64"]).dataset_uri


@pytest.mark.parametrize("argv, old", [(["evaluate", "--run", "abc"], "--run"),
                                       (["generate", "--model", "abc", "--outdir", "x"], "--model"),
                                       (["latent", "sheet", "--model", "abc"], "--model")])
def test_old_generator_flags_are_deprecated_aliases_of_network(argv, old, capsys):
    args = cli.build_parser().parse_args(argv)
    assert args.network == "abc"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old} is deprecated, use --network" in err
    assert cli.build_parser().parse_args([a if a != old else "--network" for a in argv]).network == "abc"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", MLFLOW_COMMANDS)
def test_tracking_uri_flag_and_environment(command, clean_env, tmp_path):
    argv = MLFLOW_COMMANDS[command]
    flag = "sqlite:///" + str(tmp_path / "flag.db")
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "env.db"))
    assert resolved(argv).tracking_uri() == "sqlite:///" + str(tmp_path / "env.db")
    assert resolved([*argv, "--tracking-uri", flag]).tracking_uri() == flag  # the flag beats the environment


@pytest.mark.parametrize("command", MLFLOW_COMMANDS)
def test_mlflow_experiment_name_sits_between_overrides_and_presets(command, clean_env, tmp_path):
    argv = MLFLOW_COMMANDS[command]
    default = resolved(argv).tracking.experiment
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert default != "from-env" and resolved(argv).tracking.experiment == "from-env"
    if command in ("generate", "latent"):
        return  # no overrides: the experiment of `latent --mlflow-run new` is --experiment, else this
    key = ("pipeline." if command == "sweep" else "") + "tracking.experiment=explicit"
    assert resolved([*argv, key]).tracking.experiment == "explicit"


def test_the_environment_beats_a_preset_that_names_an_experiment(clean_env, tmp_path):
    preset = tmp_path / "named.yaml"
    preset.write_text(yaml.safe_dump({"name": "named", "tracking": {"experiment": "from-yaml"}}))
    assert load_config(preset).tracking.experiment == "from-yaml"
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolved(["train", "--config", str(preset)]).tracking.experiment == "from-env"
    assert load_config(preset, ["tracking.experiment=x"]).tracking.experiment == "x"


def test_config_show_round_trips(clean_env, tmp_path, capsys):
    overrides = ["train.lr_g=1e-3", "data.holdout=10", "train.augment=color,cutout", "data.device_cache=on",
                 "scaling.worker_resources={trainer: 1}", "tracking.uri=sqlite:///x.db"]
    assert cli.main(["config", "show", "--config", "demo", *overrides]) == 0
    shown = capsys.readouterr().out
    saved = tmp_path / "shown.yaml"
    saved.write_text(shown)
    assert load_config(saved).model_dump() == load_config("demo", overrides).model_dump()
    assert cli.main(["config", "show", "--config", str(saved)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == shown.splitlines()[1:]  # (line 1 names the command line)
    assert cli.main(["config", "show", "train.lr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'train.lr' (did you mean train.lr_g, train.lr_d?)" in err


def test_config_keys_lists_every_key_with_its_description(capsys):
    assert cli.main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = config_keys(PipelineConfig)
    assert len(lines) == len(keys) and len(keys) > 60
    width = PipelineConfig.model_fields["model"].annotation.model_fields["g_width"]
    (g_width,) = [ln for ln in lines if ln.startswith("model.g_width ")]
    assert g_width.split()[1:3] == ["int", "64"] and g_width.endswith(width.description)
    (d_norm,) = [ln for ln in lines if ln.startswith("model.d_norm ")]
    assert "batch|spectral|none" in d_norm
    assert cli.main(["config", "keys", "train.lr"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == ["train.lr_g", "train.lr_d"]
    assert cli.main(["config", "presets"]) == 0
    assert {"demo", "smoke", "paper", "lsun-bedroom-64", "sweep-demo"} <= set(capsys.readouterr().out.split())
