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
