"""`dcgan latent ...` end to end on a tiny checkpoint (and a registered model in MLflow)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gan import latent_space as latent
from gan.images import grid
from gan.models import Discriminator, Generator
from pipelines.steps import cli
from pipelines.training.checkpoints import load_generator, save_state
from pipelines.training.checkpoints import as_generator
from pipelines.steps.latent import parse_expression, parse_ids

MODEL = {"resolution": 32, "latent_dim": 16, "g_width": 8, "d_width": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    g, d = Generator(32, 16, 8), Discriminator(32, 8)
    for m in g.modules():  # non-trivial eval-mode statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("ckpt")
    save_state(folder, {"generator": g.state_dict(), "discriminator": d.state_dict(), "config": {"model": MODEL}})
    return folder


def _run(*argv):
    return cli.main(["latent", *map(str, argv)])


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_sample_ids_and_expressions_parse_and_bad_ones_say_how_to_write_them():
    assert parse_ids("3,17,40-43") == [3, 17, 40, 41, 42, 43]
    assert parse_expression("2,7,11 - 4-6 + 5") == [(1, [2, 7, 11]), (-1, [4, 5, 6]), (1, [5])]
    for bad, hint in (("3,x", "e.g."), ("9-2", "write 2-9"), ("", "e.g.")):
        with pytest.raises(ValueError, match=hint):
            parse_ids(bad)
    for bad in ("1,2 3,4", "1,2 - - 3", "1,2 +"):
        with pytest.raises(ValueError):
            parse_expression(bad)


def test_sheet_writes_the_numbered_sheet_and_one_image_per_id(checkpoint, tmp_path):
    assert _run("sheet", "--network", checkpoint, "--ids", "0-5", "--upscale", "2", "--out", tmp_path) == 0
    assert _png(tmp_path / "sheet.png").shape == (2 * (2 * 34 + 2), 2 * (3 * 34 + 2), 3)  # 6 ids: 3 per row, 2x
    single = _png(tmp_path / "samples" / "4.png")
    assert single.shape == (64, 64, 3)
    g = load_generator(str(checkpoint))
    with torch.no_grad():
        expected = grid(g(latent.seeded_z([4], 16)), 1, padding=0)
    assert np.array_equal(single[::2, ::2], expected)  # sample id 4 is seed 4


def test_walk_writes_grid_gif_and_the_path(checkpoint, tmp_path):
    assert _run("walk", "--network", checkpoint, "--ids", "3,17,42", "--steps", "5", "--method", "slerp", "--out", tmp_path) == 0
    path = np.load(tmp_path / "walk-z.npy")
    assert path.shape == (2, 5, 16)
    keys = latent.seeded_z([3, 17, 42], 16).numpy()
    np.testing.assert_allclose(path[0, 0], keys[0], atol=1e-5)
    np.testing.assert_allclose(path[1, -1], keys[2], atol=1e-5)
    assert _png(tmp_path / "walk.png").shape == (2 * 34 + 2, 5 * 34 + 2, 3)
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.n_frames == 2 * 4 + 1  # the shared keypoint appears once
    # lerp gives a different path through the same endpoints
    out2 = tmp_path / "lerp"
    assert _run("walk", "--network", checkpoint, "--ids", "3,17,42", "--steps", "5", "--method", "lerp", "--out", out2) == 0
    lerp_path = np.load(out2 / "walk-z.npy")
    np.testing.assert_allclose(lerp_path[:, [0, -1]], path[:, [0, -1]], atol=1e-5)
    assert not np.allclose(lerp_path[:, 2], path[:, 2])


def test_walk_through_saved_z_vectors(checkpoint, tmp_path):
    z = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    assert _run("walk", "--network", checkpoint, "--z", tmp_path / "z.npy", "--steps", "3", "--out", tmp_path / "w") == 0
    path = np.load(tmp_path / "w" / "walk-z.npy")
    np.testing.assert_allclose(path[:, 0], z[:2], atol=1e-5)
    np.testing.assert_allclose(path[-1, -1], z[2], atol=1e-5)
    np.save(tmp_path / "bad.npy", z[:, :10])
    assert _run("walk", "--network", checkpoint, "--z", tmp_path / "bad.npy", "--out", tmp_path / "b") == 2


def test_arithmetic_renders_operands_and_result_of_known_seeds(checkpoint, tmp_path):
    assert _run("arithmetic", "--network", checkpoint, "2,7,11 - 4,9,13 + 5,6,8", "--out", tmp_path) == 0
    z = np.load(tmp_path / "arithmetic-z.npy")
    expected = latent.seeded_z([2, 7, 11], 16).mean(0) - latent.seeded_z([4, 9, 13], 16).mean(0) + latent.seeded_z([5, 6, 8], 16).mean(0)
    np.testing.assert_allclose(z[0], expected.numpy(), atol=1e-5)
    assert z.shape == (9, 16) and 0.3 < np.abs(z[1:] - z[0]).max() <= latent.PAPER_NOISE_SCALE + 1e-6
    figure = _png(tmp_path / "arithmetic.png")
    assert figure.shape[1] > 3 * 34 + 3 * 34  # three operand columns and the 3x3 result
    assert json.loads((tmp_path / "arithmetic.json").read_text())["terms"][1] == {"sign": -1, "ids": [4, 9, 13]}


def test_forget_with_boxes_drops_maps_and_renders_before_and_after(checkpoint, tmp_path):
    g = load_generator(str(checkpoint))
    ids = [0, 1, 2, 3, 4, 5]
    acts, _ = latent.feature_activations(g, latent.seeded_z(ids, 16))
    # Box, in every image, the 8x8-pixel block where one map fires most: a findable "object".
    target = int(acts.flatten(2).std(dim=2).mean(0).argmax())
    heat = torch.nn.functional.avg_pool2d(acts[:, target:target + 1], 4, 4)[:, 0]  # (N, 4, 4) blocks of 8 px
    boxes = {}
    for i, h in zip(ids, heat):
        by, bx = divmod(int(h.argmax()), 4)
        boxes[str(i)] = [[bx * 16, by * 16, bx * 16 + 16, by * 16 + 16]]  # drawn on 2x images
    boxes["6"] = []  # an image without the object: all negatives
    (tmp_path / "boxes.json").write_text(json.dumps({"image_size": 64, "boxes": boxes}))
    before_ckpt = (checkpoint / "checkpoint.pt").read_bytes()
    out = tmp_path / "out"
    assert _run("forget", "--network", checkpoint, "--boxes", tmp_path / "boxes.json", "--render", "10-13", "--out", out) == 0
    report = json.loads((out / "forget.json").read_text())
    assert report["layer"] == "up2" and report["maps"][0] == target
    assert report["marked_ids"] == ids + [6] and report["render_ids"] == [10, 11, 12, 13]
    assert report["positives"] == 6 * 8 * 8 // 4  # each 16-px box on 64-px images covers 4x4 of the 16x16 grid
    figure = _png(out / "forget.png")
    assert figure.shape == (2 * 34 + 2, 4 * 34 + 2, 3)  # a row before, a row after
    with torch.no_grad():
        before = g(latent.seeded_z([10, 11, 12, 13], 16))
        with latent.feature_maps_dropped(g, report["maps"]):
            after = g(latent.seeded_z([10, 11, 12, 13], 16))
    assert np.array_equal(figure[:36], grid(before, 4)[:36])
    assert np.array_equal(figure[34:], grid(after, 4))
    assert not np.array_equal(figure[2:34], figure[36:68])
    assert (checkpoint / "checkpoint.pt").read_bytes() == before_ckpt
    assert (out / "forget-marked.png").is_file()
    assert report["mean_abs_change_inside_marks"] > report["mean_abs_change_outside_marks"]

    # --difference adds |after - before| under each pair: black where nothing changed.
    assert _run("forget", "--network", checkpoint, "--boxes", tmp_path / "boxes.json", "--render", "10-13",
                "--difference", "--out", tmp_path / "diff") == 0
    figure = _png(tmp_path / "diff" / "forget.png")
    assert figure.shape == (3 * 34 + 2, 4 * 34 + 2, 3)
    change = (after - before).abs().mean(1) * 2
    diff_row = figure[70:102, 2:34, 0]  # first image of the third row
    assert np.abs(diff_row / 255.0 - change[0].clamp(0, 1).numpy()).max() <= 1 / 255 + 1e-6


def test_forget_with_masks(checkpoint, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(4):
        m = np.zeros((32, 32), np.uint8)
        m[4 * i:4 * i + 12, 8:20] = 255
        Image.fromarray(m).save(masks / f"{i}.png")
    assert _run("forget", "--network", checkpoint, "--masks", masks, "--out", tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "forget.json").read_text())
    assert report["marked_ids"] == [0, 1, 2, 3] and report["positives"] == 4 * 6 * 6


def test_bad_inputs_get_actionable_errors(checkpoint, tmp_path, capsys):
    assert _run("walk", "--network", tmp_path / "nowhere", "--ids", "1,2", "--out", tmp_path / "a") == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "none.json").write_text(json.dumps({"boxes": {"1": []}}))
    assert _run("forget", "--network", checkpoint, "--boxes", tmp_path / "none.json", "--out", tmp_path / "b") == 2
    assert "mark the object" in capsys.readouterr().err
    assert _run("forget", "--network", checkpoint, "--out", tmp_path / "c") == 2
    assert "--boxes" in capsys.readouterr().err
    assert _run("arithmetic", "--network", checkpoint, "1,2 + + 3", "--out", tmp_path / "d") == 2
    assert "two operators" in capsys.readouterr().err
    assert _run("walk", "--network", checkpoint, "--ids", "1,2", "--mlflow-run", "new",
                "--tracking-uri", "http://127.0.0.1:9", "--out", tmp_path / "e") == 2
    assert "mlflow server" in capsys.readouterr().err


@pytest.mark.slow
def test_registered_champion_model_and_logging_to_mlflow(checkpoint, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    g = load_generator(str(checkpoint))
    client = MlflowClient(uri)
    exp = client.create_experiment("latent-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pytorch.log_model(g, name="generator", registered_model_name="tiny-bedrooms",
                                        serialization_format="pickle")
    client.set_registered_model_alias("tiny-bedrooms", "champion", info.registered_model_version)

    out = tmp_path / "walk"
    assert _run("walk", "--network", "models:/tiny-bedrooms@champion", "--ids", "1,2", "--steps", "3",
                "--tracking-uri", uri, "--mlflow-run", run.info.run_id, "--out", out) == 0
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "latent/walk")}
    assert logged == {"latent/walk/walk.png", "latent/walk/walk.gif"}
    # the registered model is the checkpoint's generator: same images
    ref = tmp_path / "ref"
    assert _run("walk", "--network", checkpoint, "--ids", "1,2", "--steps", "3", "--out", ref) == 0
    assert np.array_equal(_png(out / "walk.png"), _png(ref / "walk.png"))


def test_a_traced_generator_is_rebuilt_into_one_with_hookable_blocks(checkpoint):
    # MLflow's default "pt2" format loads as a torch.export graph like this one.
    g = load_generator(str(checkpoint))
    z = latent.seeded_z([1, 2], 16)
    traced = torch.export.export(g, (z,)).module()
    rebuilt = as_generator(traced)
    assert isinstance(rebuilt, Generator) and rebuilt.feature_layers == ["project", "up1", "up2"]
    assert (rebuilt.resolution, rebuilt.latent_dim, rebuilt.width) == (32, 16, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(z), g(z))
    with pytest.raises(ValueError, match="not a DCGAN generator"):
        as_generator(Discriminator(32, 8))


@pytest.mark.slow
def test_mlflow_run_new_makes_a_run_with_artifacts_beside_the_sqlite_store(checkpoint, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    store = tmp_path / "store"
    store.mkdir()
    uri = "sqlite:///" + str(store / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert _run("arithmetic", "--network", checkpoint, "1,2,3 - 4,5,6 + 7,8,9", "--mlflow-run", "new",
                "--experiment", "latent-tools", "--out", tmp_path / "out") == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("latent-tools")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "latent/arithmetic")] == ["latent/arithmetic/arithmetic.png"]
    assert (store / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
