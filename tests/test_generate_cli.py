"""`dcgan generate`: StyleGAN2-ADA's --network/--seeds/--outdir/--trunc, batching that writes as it goes
and never changes an image, --device, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.training.checkpoints import save_state
from pipelines.config import load_config
from pipelines.steps.generate import GRID_MAX, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = load_config("smoke")
    from pipelines.training.checkpoints import build_networks

    torch.manual_seed(0)
    g, _ = build_networks(cfg.model.model_dump())
    folder = tmp_path_factory.mktemp("ckpt")
    save_state(folder, {"generator": g.state_dict(), "config": cfg.model_dump()})
    return str(folder)


def _pngs(folder) -> dict[str, bytes]:
    return {p.name: np.asarray(Image.open(p)).tobytes() for p in sorted(folder.glob("*.png"))}


def test_seeds_ranges_lists_and_n_give_the_same_images(checkpoint, tmp_path):
    runs = {"range": ["--seeds", "0-3", "--batch", "3"], "list": ["--seeds", "0,1,2,3"], "n": ["-n", "4", "--seed", "0"]}
    got = {}
    for name, args in runs.items():
        assert main(["--network", checkpoint, "--outdir", str(tmp_path / name), "--device", "cpu", *args]) == 0
        got[name] = _pngs(tmp_path / name)
    assert list(got["range"]) == [f"seed{s:04d}.png" for s in range(4)]
    assert got["range"] == got["list"] == got["n"]
    assert len(set(got["n"].values())) == 4
    # one seed alone gives its image whatever else is asked for
    assert main(["--network", checkpoint, "--outdir", str(tmp_path / "one"), "--seeds", "2"]) == 0
    assert _pngs(tmp_path / "one")["seed0002.png"] == got["n"]["seed0002.png"]
    # a grid of the same seeds, batched
    assert main(["--network", checkpoint, "--out", str(tmp_path / "grid.png"), "--seeds", "0-35,40", "--batch", "8"]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 6 * 32


def test_many_images_in_batches_and_bad_input(checkpoint, tmp_path, capsys):
    out = tmp_path / "many"
    assert main(["--network", checkpoint, "--outdir", str(out), "-n", "600", "--batch", "250"]) == 0
    assert len(list(out.glob("*.png"))) == 600
    assert main(["--network", checkpoint, "--out", str(tmp_path / "big.png"), "-n", str(GRID_MAX + 1)]) == 2
    assert "too many for one grid" in capsys.readouterr().err
    assert main(["--network", checkpoint, "--outdir", str(tmp_path / "x"), "--seeds", "5-2"]) == 2
    assert "runs backwards" in capsys.readouterr().err
    outdir = ["--outdir", str(tmp_path / "x")]
    for bad in (["--seeds", "1", "-n", "3", *outdir], ["--trunc", "0", *outdir], ["--trunc", "-1", *outdir],
                [*outdir, "--out", "y.png"], ["--seeds", "1"]):
        with pytest.raises(SystemExit):  # argparse's usage error, exit status 2
            main(["--network", checkpoint, *bad])


def test_a_seed_is_the_same_png_whatever_the_batch(checkpoint, tmp_path):
    """Each seed draws its z from its own generator and G runs in eval mode (batch norm's running
    statistics): --batch 1 and --batch 64 write byte-identical files."""
    for batch in ("1", "64"):
        assert main(["--network", checkpoint, "--outdir", str(tmp_path / batch), "--seeds", "0-63,1000",
                     "--batch", batch, "--device", "cpu"]) == 0
    one, many = sorted((tmp_path / "1").iterdir()), sorted((tmp_path / "64").iterdir())
    assert [p.name for p in one] == [p.name for p in many] and len(one) == 65
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, many))


def test_trunc_redraws_every_component_outside_the_threshold(checkpoint, tmp_path):
    from gan.latent_space import seeded_z
    from pipelines.training.checkpoints import load_generator

    plain, truncated = seeded_z(range(200), 100), seeded_z(range(200), 100, truncation=0.5)
    assert truncated.abs().max() <= 0.5 and plain.abs().max() > 2
    inside = plain.abs() <= 0.5
    assert torch.equal(truncated[inside], plain[inside])  # only the components outside are redrawn
    assert torch.equal(seeded_z([7], 100, 0.5)[0], truncated[7])  # per seed, whatever else is drawn
    with pytest.raises(ValueError):
        seeded_z([0], 100, truncation=0)
    # The command renders exactly those latents.
    assert main(["--network", checkpoint, "--outdir", str(tmp_path / "t"), "--seeds", "3,5", "--trunc", "0.5"]) == 0
    g = load_generator(checkpoint)
    with torch.no_grad():
        expected = g(seeded_z([3, 5], g.latent_dim, 0.5))
    from gan.images import to_uint8

    for seed, image in zip((3, 5), to_uint8(expected).numpy()):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "t" / f"seed{seed:04d}.png")), image)
    plain_png = tmp_path / "p"
    assert main(["--network", checkpoint, "--outdir", str(plain_png), "--seeds", "3"]) == 0
    assert (plain_png / "seed0003.png").read_bytes() != (tmp_path / "t" / "seed0003.png").read_bytes()


def test_the_old_model_flag_still_works_and_says_it_is_deprecated(checkpoint, tmp_path, capsys):
    assert main(["--model", checkpoint, "--outdir", str(tmp_path / "old"), "--seeds", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dcgan generate: --model is deprecated, use --network" in err
    assert (tmp_path / "old" / "seed0001.png").is_file()
