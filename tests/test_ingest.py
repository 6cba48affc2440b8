"""Ingest on real LSUN photos: image folders (salted with bad files and duplicates),
an LSUN-format LMDB export, the CLI, and recovery from an unfinished ingest."""

import io
import json
import shutil

import lmdb
import numpy as np
import pytest
import ray
from PIL import Image

from pipelines.cluster import storage
from pipelines.dataset.format import IMAGE, KEY, PIXEL_SHA256, content_hash, decode_images, read_columns
from pipelines.dataset.decode import UnreadableImage, decode_square
from pipelines.config import load_config
from pipelines.dataset.ingestion import IngestError, ensure_dataset, ingest
from pipelines.steps.ingest import main
from pipelines.dataset.ledger import IngestLedger
from pipelines.dataset.sources import SourceError, open_source

RES = 32


def _stored(uri: str) -> dict[str, np.ndarray]:
    table = read_columns(uri, [KEY, IMAGE, PIXEL_SHA256])
    pixels = decode_images(table.column(IMAGE), RES)
    return dict(zip(table.column(KEY).to_pylist(), pixels))


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


# --- the decode step on its own (no Ray) -------------------------------------------


def test_decode_crops_the_centre_square_and_converts_every_mode():
    frame = np.zeros((200, 400, 3), np.uint8)
    frame[:, :100] = (0, 255, 0)  # left and right margins fall outside the centre square
    frame[:, 300:] = (0, 255, 0)
    frame[:, 100:300] = (200, 30, 30)
    out = decode_square(_encode(Image.fromarray(frame), "PNG"), RES)
    assert out.shape == (RES, RES, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (200, 30, 30)).max() <= 1

    gray = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)), "L")
    from_gray = decode_square(_encode(gray, "PNG"), RES)
    assert (from_gray[..., 0] == from_gray[..., 2]).all() and from_gray.max() > 200
    # 16-bit samples are scaled, not clipped: the same picture at 16 bits gives the same pixels.
    sixteen = Image.fromarray(np.asarray(gray, np.uint16) * 257)
    np.testing.assert_array_equal(decode_square(_encode(sixteen, "PNG"), RES), from_gray)
    # Transparency is flattened onto white.
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert (decode_square(_encode(clear, "PNG"), RES) == 255).all()

    for data, reason in ((b"", "empty"), (b"hello, not a picture", "not an image"),
                         (_encode(gray, "JPEG")[:300], "cannot decode"), (_encode(gray.resize((20, 20)), "PNG"), "too small")):
        with pytest.raises(UnreadableImage, match=reason):
            decode_square(data, RES)


def test_ledger_drops_repeated_pixels_but_readmits_a_retried_item():
    ledger = IngestLedger()
    a, b = b"\x01" * 32, b"\x02" * 32
    assert ledger.admit(["x", "y"], [a, b]) == [True, True]
    assert ledger.admit(["x"], [a]) == [True]  # Ray retried the task that stored x: keep it, it is not a copy
    assert ledger.admit(["z", "w"], [a, b"\x03" * 32], [("bad.jpg", "empty file (0 bytes)")]) == [False, True]
    assert ledger.summary() == {"stored": 3, "duplicates": 1, "skipped": [{"source": "bad.jpg", "reason": "empty file (0 bytes)"}]}
    assert ledger.processed() == 5


def test_missing_and_empty_sources_fail_at_once_naming_them(tmp_path):
    with pytest.raises(SourceError, match=f"{tmp_path / 'nowhere'}.*not found"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(SourceError, match=r"empty holds no images.*jpg/jpeg/png/webp.*1 other files"):
        open_source(str(tmp_path / "empty"))
    lmdb.open(str(tmp_path / "empty_lmdb"), map_size=1 << 20).close()
    with pytest.raises(SourceError, match="empty_lmdb is empty"):
        open_source(str(tmp_path / "empty_lmdb"))

    # An LMDB export one folder down is pointed out; its data.mdb itself is a valid spec.
    (tmp_path / "lsun").mkdir()
    env = lmdb.open(str(tmp_path / "lsun" / "bedroom_train_lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"a" * 40, b"not decoded here")
    env.close()
    with pytest.raises(SourceError, match="LMDB exports in bedroom_train_lmdb: pass one of those folders"):
        open_source(str(tmp_path / "lsun"))
    assert open_source(str(tmp_path / "lsun" / "bedroom_train_lmdb" / "data.mdb")).count == 1


# --- whole ingests on a real Ray cluster -------------------------------------------


def _half_transparent(im: Image.Image) -> Image.Image:
    rgba = np.asarray(im.convert("RGBA")).copy()
    rgba[: rgba.shape[0] // 2, :, 3] = 0
    return Image.fromarray(rgba, "RGBA")


def _salted_folder(root, photos):
    """Real photos, nested, plus every kind of bad file and two exact duplicates."""
    (root / "photos" / "nested").mkdir(parents=True)
    good = {}
    for i, p in enumerate(photos):
        rel = f"photos/{'nested/' if i % 3 == 0 else ''}{p.name}"
        shutil.copy(p, root / rel)
        good[rel] = p.read_bytes()
    photo = Image.open(photos[0])
    converted = {
        "odd/cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG", quality=95),
        "odd/gray.jpg": _encode(photo.convert("L"), "JPEG", quality=95),
        "odd/sixteen.png": _encode(Image.fromarray(np.asarray(Image.open(photos[1]).convert("L"), np.uint16) * 257), "PNG"),
        "odd/palette.png": _encode(Image.open(photos[2]).convert("P", palette=Image.ADAPTIVE), "PNG"),
        "odd/transparent.webp": _encode(_half_transparent(Image.open(photos[3])), "WEBP", lossless=True),
    }
    bad = {
        "odd/truncated.jpg": photos[4].read_bytes()[:2000],
        "odd/zero.jpg": b"",
        "odd/not-an-image.png": b"<html>404 not found</html>",
        "odd/tiny.jpg": _encode(photo.resize((24, 18)), "JPEG"),
    }
    # Copies sort last (zz-...), so they land in another Ray block than their originals.
    duplicates = {
        "zz-copies/same-bytes.jpg": photos[0].read_bytes(),
        "zz-copies/same-pixels-as-png.png": _encode(Image.open(photos[5]).convert("RGB"), "PNG"),
    }
    # Of each pair, whichever Ray happens to decode first is kept.
    pairs = [{"zz-copies/same-bytes.jpg", f"photos/nested/{photos[0].name}"},
             {"zz-copies/same-pixels-as-png.png", f"photos/{photos[5].name}"}]
    for rel, data in {**converted, **bad, **duplicates}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "README.txt").write_text("not an image name: never listed")
    return good, converted, bad, duplicates, pairs


@pytest.mark.slow
def test_folder_of_photos_salted_with_bad_files(tmp_path, lsun_files, ray_local):
    good, converted, bad, duplicates, pairs = _salted_folder(tmp_path / "src", lsun_files[:24])
    out = str(tmp_path / "dataset")
    manifest = ingest(str(tmp_path / "src"), out, RES, shard_mb=1, progress=False)
    stored = _stored(out)

    # Every good photo arrives (one of each exact-duplicate pair), with exactly the pixels the
    # decode step makes of its bytes.
    assert all(len(pair & set(stored)) == 1 for pair in pairs)
    assert set(stored) - set().union(*pairs) == (set(good) | set(converted)) - set().union(*pairs)
    for rel, data in {**good, **duplicates}.items():
        if rel in stored:
            np.testing.assert_array_equal(stored[rel], decode_square(data, RES))
    gray = stored["odd/gray.jpg"]
    assert (gray[..., 0] == gray[..., 1]).all() and gray.std() > 10
    assert stored["odd/sixteen.png"].std() > 10 and stored["odd/cmyk.jpg"].std() > 10

    # Every unusable file is listed with its reason; the two exact duplicates are dropped and counted.
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(bad)
    assert "cannot decode" in reasons["odd/truncated.jpg"] and "empty" in reasons["odd/zero.jpg"]
    assert "not an image" in reasons["odd/not-an-image.png"] and "too small" in reasons["odd/tiny.jpg"]
    assert manifest["duplicates"] == 2 and len(stored) == len(good) + len(converted)
    assert manifest["source_images"] == len(good) + len(converted) + len(bad) + len(duplicates)

    hashes = read_columns(out, [PIXEL_SHA256]).column(PIXEL_SHA256).to_pylist()
    assert manifest["count"] == len(stored) == len(set(hashes))
    assert manifest["content_hash"] == content_hash(hashes)
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["count"]
    assert manifest["resolution"] == RES and manifest["format"] == "dcgan-parquet-v1"

    # A complete dataset is not overwritten by accident.
    with pytest.raises(IngestError, match="already exists"):
        ingest(str(tmp_path / "src"), out, RES, progress=False)


def _lsun_lmdb(path, photos) -> dict[str, bytes]:
    """An LMDB in the official LSUN layout: key = 40-hex id, value = WebP bytes."""
    values = {p.stem: _encode(Image.open(p), "WEBP", quality=90) for p in photos}
    values["f" * 40] = b"\x00\x01garbage"  # one corrupt record, sorted last
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key.encode(), value)
    env.close()
    return values


@pytest.mark.slow
def test_lsun_lmdb_export_with_webp_values(tmp_path, lsun_files, ray_local):
    values = _lsun_lmdb(tmp_path / "bedroom_train_lmdb", lsun_files[:20])
    manifest = ingest(str(tmp_path / "bedroom_train_lmdb"), str(tmp_path / "all"), RES, progress=False)
    stored = _stored(str(tmp_path / "all"))
    assert set(stored) == set(values) - {"f" * 40}
    for key in stored:
        np.testing.assert_array_equal(stored[key], decode_square(values[key], RES))
    assert [s["source"] for s in manifest["skipped"]] == ["f" * 40]
    assert manifest["source_kind"] == "lmdb" and manifest["count"] == 20

    # limit takes the first keys in LMDB (key) order.
    ingest(str(tmp_path / "bedroom_train_lmdb"), str(tmp_path / "first7"), RES, limit=7, progress=False)
    assert set(_stored(str(tmp_path / "first7"))) == set(sorted(values)[:7])


@pytest.mark.slow
def test_cli_shows_progress_and_replaces_an_unfinished_ingest(tmp_path, lsun_files, ray_local, capfd):
    src = tmp_path / "src"
    src.mkdir()
    for p in lsun_files[30:40]:
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "leftover-from-a-killed-ingest.parquet").write_bytes(b"PAR1 half a shard")
    assert main(["--source", str(src), "--out", str(out), "--resolution", str(RES)]) == 0
    captured = capfd.readouterr()
    assert "ingest:" in captured.err and "img/s" in captured.err  # the tqdm bar
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["count"] == 10 and summary["dataset"] == str(out)
    assert not (out / "leftover-from-a-killed-ingest.parquet").exists()
    assert set(_stored(str(out))) == {p.name for p in lsun_files[30:40]}

    # A second run finds the complete dataset and leaves it alone; --overwrite redoes it.
    before = storage.read_bytes(str(out / "manifest.json"))
    assert main(["--source", str(src), "--out", str(out), "--resolution", str(RES), "--no-progress"]) == 0
    assert storage.read_bytes(str(out / "manifest.json")) == before
    assert main(["--source", str(src), "--out", str(out), "--resolution", str(RES), "--no-progress", "--overwrite"]) == 0
    assert json.loads(storage.read_bytes(str(out / "manifest.json")))["count"] == 10

    # Bad requests are refused before any work, naming what is wrong.
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.pdf").write_bytes(b"%PDF")
    assert main(["--source", str(src), "--out", str(tmp_path / "foreign"), "--resolution", str(RES)]) == 2
    assert "thesis.pdf" in capfd.readouterr().err
    assert main(["--source", str(src), "--out", str(tmp_path / "x"), "--resolution", "48"]) == 2
    assert "model.resolution" in capfd.readouterr().err
    assert main(["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert f"{tmp_path / 'missing'}" in capfd.readouterr().err


def test_ingest_can_drop_near_duplicates_as_the_paper_did(tmp_path, lsun_files, ray_local):
    """Photos salted with lightly jittered copies of some of them: with data.drop_near_duplicates
    the training dataset keeps one image per cluster; the plain ingest stays beside it."""
    from PIL import Image

    from tests.photos import add_noise, load_squares, shift_one_pixel

    photos = load_squares(lsun_files[:300], RES)
    copies = np.concatenate([shift_one_pixel(photos[:10]), add_noise(photos[10:20], sigma=2.0)])
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(photos):
        Image.fromarray(im).save(folder / f"photo-{i:04d}.png")
    for i, im in enumerate(copies):
        Image.fromarray(im).save(folder / f"copy-of-{i:04d}.png")

    cfg = load_config("smoke", [f"storage={tmp_path}", f"data.source={folder}", f"model.resolution={RES}",
                                "data.drop_near_duplicates=true", "data.near_duplicate_radius=8",
                                "eval.audit_autoencoder_steps=400"])
    manifest = ensure_dataset(cfg, progress=False)
    near = manifest["near_duplicates"]
    dropped = set(near["dropped_keys"])
    planted = {k.split("-")[-1] for k in dropped}  # pair index, whichever member was dropped
    # one image of each pair leaves (which one is the cluster's order); no distinct photo does
    assert len(planted) >= 16, f"only {len(planted)} of 20 planted pairs were found: {sorted(dropped)[:25]}"
    pair_members = {f"photo-{i:04d}.png" for i in range(20)} | {f"copy-of-{i:04d}.png" for i in range(20)}
    assert dropped <= pair_members, f"distinct photos dropped: {sorted(dropped - pair_members)}"
    assert manifest["count"] == 320 - near["dropped"]
    assert len(read_columns(cfg.dataset_uri, [KEY])) == manifest["count"]
    assert cfg.dataset_uri.endswith("-dedup8") and manifest["derived_from"] != cfg.dataset_uri
    plain = read_columns(manifest["derived_from"], [KEY])
    assert len(plain) == 320  # the plain ingest is kept, reusable
    # a second call reuses the de-duplicated dataset
    assert ensure_dataset(cfg, progress=False)["content_hash"] == manifest["content_hash"]
