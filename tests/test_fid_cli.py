"""`dcgan fid`: folders and statistics files, --kid, --save-stats, and clear errors."""

import numpy as np
import pytest

from gan import fid
from pipelines.steps.cli import main as dcgan
from pipelines.steps.fid import build_parser, main

N = 6


@pytest.fixture(scope="module")
def folders(tmp_path_factory, lsun_files):
    root = tmp_path_factory.mktemp("fid-cli")
    out = []
    for name, files in (("a", lsun_files[:N]), ("b", lsun_files[N:2 * N])):
        (root / name).mkdir()
        for f in files:
            (root / name / f.name).symlink_to(f)
        out.append(root / name)
    return out


@pytest.fixture(scope="module")
def saved(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats")
    paths = []
    for folder in folders:
        path = out / f"{folder.name}.npz"
        assert main([str(folder), "--save-stats", str(path), "--batch-size", str(N)]) == 0
        paths.append(path)
    return paths


def _printed(capsys, key):
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(key + ":"))
    return line.split(":", 1)[1].strip()


def test_save_stats_writes_statistics_and_features(saved):
    loaded = fid.load_stats(saved[0])
    assert loaded.count == N and loaded.features.shape == (N, fid.FEATURE_DIM)
    assert loaded.meta["extractor"] == fid.feature_extractor_id()
    np.testing.assert_allclose(loaded.mu, loaded.features.astype(np.float64).mean(0), rtol=1e-12)


def test_fid_and_kid_of_statistics_files_equal_those_of_folders(folders, saved, capsys):
    assert main([str(saved[0]), str(saved[1]), "--kid", "--kid-subsets", "5"]) == 0
    out = capsys.readouterr().out
    from_files = float(out.split("FID:")[1].split()[0])
    kid_mean = float(out.split("KID:")[1].split("±")[0])
    a, b = fid.load_stats(saved[0]), fid.load_stats(saved[1])
    assert from_files == pytest.approx(fid.fid_from_stats(a, b), rel=1e-6) and from_files > 0
    assert kid_mean == pytest.approx(fid.kernel_inception_distance(a.features, b.features, 5, 1000)[0], abs=1e-6)
    # a folder against the other's statistics: the folder's statistics are computed again, alike
    assert main([str(folders[0]), str(saved[1]), "--batch-size", str(N)]) == 0
    assert float(_printed(capsys, "FID")) == pytest.approx(from_files, rel=1e-5)
    # through the `dcgan` dispatcher too
    assert dcgan(["fid", str(saved[1]), str(saved[0])]) == 0
    assert float(_printed(capsys, "FID")) == pytest.approx(from_files, rel=1e-9)  # symmetric


def test_pytorch_fid_statistics_files_are_read(saved, tmp_path, capsys):
    a = fid.load_stats(saved[0])
    np.savez(tmp_path / "pytorch_fid.npz", mu=a.mu, sigma=a.sigma)
    assert main([str(tmp_path / "pytorch_fid.npz"), str(saved[1])]) == 0
    assert float(_printed(capsys, "FID")) > 0
    assert main([str(tmp_path / "pytorch_fid.npz"), str(saved[1]), "--kid"]) == 2
    assert "has no features for KID" in capsys.readouterr().err


def test_bad_input_gets_actionable_errors(saved, folders, tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(saved[0])]) == 2
    assert "neither a folder of images nor a statistics file" in capsys.readouterr().err
    other = dict(np.load(saved[0]))
    other["extractor"] = np.str_("some-other-network")
    np.savez(tmp_path / "other.npz", **other)
    assert main([str(tmp_path / "other.npz"), str(saved[1])]) == 2
    assert "another extractor" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(folders[0])])
    assert exit_info.value.code == 2 and "give two paths" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folders[0]), str(folders[1]), "--save-stats", str(tmp_path / "x.npz")])


def test_pytorch_fid_forms_save_stats_dims_and_batch_size(folders, tmp_path, capsys):
    """`--save-stats DIR OUT.npz` (pytorch-fid's order), then the file against another folder,
    gives the FID of the two folders."""
    out = tmp_path / "a.npz"
    assert main(["--save-stats", str(folders[0]), str(out), "--batch-size", str(N), "--dims", "2048"]) == 0
    assert fid.load_stats(out).count == N
    assert main([str(out), str(folders[1]), "--batch-size", str(N)]) == 0
    from_file = float(_printed(capsys, "FID"))
    assert main([str(folders[0]), str(folders[1])]) == 0  # default batch size 50, as pytorch-fid
    assert float(_printed(capsys, "FID")) == pytest.approx(from_file, rel=1e-6)
    # the flag after both paths, and the project's own order, mean the same
    from pipelines.steps.fid import _save_stats_paths

    for argv in ([str(folders[0]), "b.npz", "--save-stats"], [str(folders[0]), "--save-stats", "b.npz"],
                 ["--save-stats", str(folders[0]), "b.npz"]):
        ap = build_parser()
        args = ap.parse_args(argv)
        _save_stats_paths(ap, args)
        assert (args.paths, args.save_stats) == ([str(folders[0])], "b.npz"), argv
    with pytest.raises(SystemExit) as exit_info:
        main([str(folders[0]), str(folders[1]), "--dims", "768"])
    assert exit_info.value.code == 2 and "--dims 768 is not supported" in capsys.readouterr().err
