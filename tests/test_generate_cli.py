"""`dcgan generate`: StyleGAN2-ADA's --seeds, batching that writes as it goes, --device, grids."""

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
        assert main(["--model", checkpoint, "--out", str(tmp_path / name), "--device", "cpu", *args]) == 0
        got[name] = _pngs(tmp_path / name)
    assert list(got["range"]) == [f"{s:06d}.png" for s in range(4)]
    assert got["range"] == got["list"] == got["n"]
    assert len(set(got["n"].values())) == 4
    # one seed alone gives its image whatever else is asked for
    assert main(["--model", checkpoint, "--out", str(tmp_path / "one"), "--seeds", "2"]) == 0
    assert _pngs(tmp_path / "one")["000002.png"] == got["n"]["000002.png"]
    # a grid of the same seeds, batched
    assert main(["--model", checkpoint, "--out", str(tmp_path / "grid.png"), "--seeds", "0-35,40", "--batch", "8"]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 6 * 32


def test_many_images_in_batches_and_bad_input(checkpoint, tmp_path, capsys):
    out = tmp_path / "many"
    assert main(["--model", checkpoint, "--out", str(out), "-n", "600", "--batch", "250"]) == 0
    assert len(list(out.glob("*.png"))) == 600
    assert main(["--model", checkpoint, "--out", str(tmp_path / "big.png"), "-n", str(GRID_MAX + 1)]) == 2
    assert "too many for one grid" in capsys.readouterr().err
    assert main(["--model", checkpoint, "--out", str(tmp_path / "x"), "--seeds", "5-2"]) == 2
    assert "runs backwards" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", checkpoint, "--out", str(tmp_path / "x"), "--seeds", "1", "-n", "3"])
