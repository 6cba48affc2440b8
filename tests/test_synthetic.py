import numpy as np

from gan.images import to_model_input
from gan.synthetic import render_bedroom, synthetic_bedrooms


def test_deterministic_from_seed_and_index():
    a = synthetic_bedrooms(8, 32, seed=5)
    b = synthetic_bedrooms(8, 32, seed=5)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_bedrooms(8, 32, seed=6))
    assert np.array_equal(a[3], render_bedroom(5, 32, 3))


def test_images_vary_and_use_the_colour_range():
    imgs = synthetic_bedrooms(32, 64, seed=0).astype(np.float32)
    per_image_mean = imgs.mean(axis=(1, 2, 3))
    assert per_image_mean.std() > 5  # different rooms, different colours
    assert imgs.std(axis=(1, 2)).mean() > 20  # structure inside each image, not flat colour
    assert len({img.tobytes() for img in imgs.astype(np.uint8)}) == 32


def test_any_resolution_and_tensor_range():
    for r in (32, 64, 128):
        assert render_bedroom(0, r).shape == (r, r, 3)
    x = to_model_input(synthetic_bedrooms(4, 32))
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
