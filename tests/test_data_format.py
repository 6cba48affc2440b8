"""The dataset format's pure helpers: pixel bytes <-> arrays, the content hash (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from gan.images import to_model_input
from pipelines.dataset.format import content_hash, decode_images, pixel_sha256, rows_per_shard


def test_decode_images_reads_arrow_slices_chunks_and_lists_alike():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    column = pa.array([x.tobytes() for x in images], pa.binary())
    np.testing.assert_array_equal(decode_images(column, 4), images)
    np.testing.assert_array_equal(decode_images(column.slice(3, 5), 4), images[3:8])  # offset into the buffer
    chunked = pa.chunked_array([column.slice(0, 4), column.slice(4)])
    np.testing.assert_array_equal(decode_images(chunked, 4), images)
    np.testing.assert_array_equal(decode_images([x.tobytes() for x in images], 4), images)
    # Values of the wrong length (here 45 and 51 bytes, 3 x 48 in all) are refused, not reinterpreted.
    ragged = pa.array([images[0].tobytes(), images[1].tobytes()[:-3], images[2].tobytes() + b"xyz"])
    with pytest.raises(ValueError, match="not 4x4x3 bytes"):
        decode_images(ragged, 4)
    with pytest.raises(ValueError, match="resolution 8"):
        decode_images(column, 8)


def test_model_input_is_nchw_in_minus_one_to_one_and_maps_back_exactly():
    images = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    x = to_model_input(images)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    back = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(back, images)


def test_content_hash_depends_on_the_images_not_their_order():
    hashes = [pixel_sha256(np.full((2, 2, 3), i, np.uint8)) for i in range(5)]
    assert content_hash(hashes) == content_hash(reversed(hashes))
    assert content_hash(hashes) != content_hash(hashes[:4])
    assert rows_per_shard(128, 64) * (64 * 64 * 3) <= 128 << 20 < (rows_per_shard(128, 64) + 200) * (64 * 64 * 3)


def test_the_manifest_figures_of_a_large_column_hold_no_python_string_per_image():
    """content_hash and the held-out record read an Arrow column of pixel hashes in slices:
    the Python heap grows by the keys array (8 bytes an image), not by a list and a set
    of strings (~170 bytes an image before, ~500 MB at LSUN's 3M images)."""
    import hashlib
    import tracemalloc

    from pipelines.dataset.ingestion import holdout_entry

    n = 200_000
    strings = [hashlib.sha256(i.to_bytes(8, "big")).hexdigest() for i in range(n)]
    column = pa.chunked_array([pa.array(strings[: n // 2]), pa.array(strings[n // 2:])])
    expected_hash, expected_held = content_hash(strings[:2000]), holdout_entry(100, pa.array(strings[:2000]))
    del strings
    tracemalloc.start()
    try:
        digest = content_hash(column)
        record = holdout_entry(1000, column)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / n < 60, f"{peak / n:.0f} bytes of Python heap an image"
    assert len(digest) == 64 and record["images"] == 1000 and record["train_images"] == n - 1000
    # the same figures as from a Python list of the same hashes
    small = column.slice(0, 2000)
    assert content_hash(small) == expected_hash and content_hash(small.to_pylist()) == expected_hash
    assert holdout_entry(100, small) == expected_held and expected_held["images"] == 100


def test_rows_read_by_index_in_any_order_and_a_shard_equal_the_dataset(tmp_path):
    """read_rows and read_shard find each chunk's rows by binary search (not a scan of every
    index per chunk): any order, repeats, and shard boundaries inside chunks."""
    from pipelines.dataset.rows import dataset_chunks, read_chunk, read_rows, read_shard
    from tests.datasets import synthetic_dataset

    uri = str(tmp_path / "ds")
    synthetic_dataset(uri, count=50, resolution=8)
    chunks = dataset_chunks(uri, rows_per_chunk=7)
    every = np.concatenate([read_chunk(c, 8) for c in chunks])
    assert len(chunks) > 3 and len(every) == 50
    wanted = np.array([49, 0, 13, 13, 7, 6, 48, 21])
    assert np.array_equal(read_rows(chunks, wanted, 8), every[wanted])
    shards = [read_shard(uri, 8, rank, 3, rows_per_chunk=7)[0] for rank in range(3)]
    assert np.array_equal(np.concatenate(shards), every[:48])  # 50 // 3 = 16 a rank, in order
