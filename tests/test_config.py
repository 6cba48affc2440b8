import pytest

from pipelines.config import ConfigError, PipelineConfig, load_config


def test_presets_load_and_overrides_apply():
    cfg = load_config("demo", ["train.lr_g=1e-3", "train.discriminator_steps=3", "name=x1"])
    assert cfg.train.lr_g == 1e-3 and cfg.train.discriminator_steps == 3 and cfg.name == "x1"
    assert cfg.model.resolution == 32
    paper = load_config("paper")
    assert (paper.model.resolution, paper.train.batch_size, paper.train.lr_g, paper.train.beta1) == (64, 128, 2e-4, 0.5)
    assert paper.model.g_width == 128 and paper.scaling.use_gpu


def test_the_paper_preset_is_the_paper_and_the_defaults_are_the_sweeps_recipe():
    paper = load_config("paper")
    assert (paper.train.lr_g, paper.train.lr_d, paper.train.beta1, paper.train.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert (paper.model.d_norm, paper.train.discriminator_loss, paper.train.generator_loss) == \
        ("batch", "cross_entropy", "non_saturating")
    assert (paper.train.augment, paper.train.hflip, paper.train.ema_decay, paper.train.discriminator_steps) == \
        ("", False, 0.0, 1)
    cfg = load_config()
    assert (cfg.model.latent_dim, cfg.model.g_width, cfg.model.d_width, cfg.model.resolution) == (100, 64, 64, 64)
    keys = ("model.d_norm", "train.discriminator_loss", "train.generator_loss", "train.augment", "train.hflip",
            "train.lr_g", "train.lr_d", "train.discriminator_steps", "train.ema_decay")
    recipe = {k: cfg.flat()[k] for k in keys}
    assert {k for k in keys if recipe[k] != paper.flat()[k]} >= {"model.d_norm", "train.discriminator_loss",
                                                                 "train.generator_loss", "train.augment"}
    # Every preset that does not say otherwise trains the default recipe.
    for preset in ("demo", "lsun-bedroom-64"):
        assert {k: load_config(preset).flat()[k] for k in recipe} == recipe, preset


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=1", r"unknown key 'train.lr' \(did you mean train.lr_g, train.lr_d\?\); `dcgan config keys`"),
        ("eval.fid_sample=5", r"unknown key 'eval.fid_sample' \(did you mean eval.fid_samples\?\)"),
        ("bogus=1", r"unknown key 'bogus' \(allowed in the top level: name, storage, data, "),
        ("train.lr_g=-1", r"train.lr_g: .*greater than 0"),
        ("model.resolution=48", r"model.resolution: .*32, 64 or 128"),
        ("train.discriminator_steps=0", r"train.discriminator_steps"),
        ("train.generator_loss=wgan", r"train.generator_loss: .*non_saturating"),
        ("scaling.num_workers=0", r"scaling.num_workers"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_malformed_override_and_unknown_preset():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo", ["train.lr_g"])
    with pytest.raises(ConfigError, match="presets: .*demo"):
        load_config("no-such-preset")


def test_flat_view_for_mlflow_params():
    flat = load_config("smoke").flat()
    assert flat["train.discriminator_steps"] == 1 and flat["model.resolution"] == 32


def test_local_paths_are_made_absolute_where_the_config_is_loaded(tmp_path, monkeypatch):
    """Ray workers run in other folders: the config they rebuild must name the same places."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo", ["data.dataset=ds", "train.resume_from=ckpt"])
    assert cfg.storage == str(tmp_path / "runs")
    assert cfg.data.dataset == str(tmp_path / "ds") and cfg.train.resume_from == str(tmp_path / "ckpt")
    monkeypatch.chdir("/")
    worker = PipelineConfig.model_validate(cfg.model_dump())  # as train_loop_config ships it
    assert worker.dataset_uri == cfg.dataset_uri and worker.checkpoints_uri == str(tmp_path / "runs" / "checkpoints")
    assert load_config("demo", ["storage=s3://bucket/runs"]).storage == "s3://bucket/runs"
    assert load_config("demo").data.source == "synthetic"
