"""DiffAugment (gan/augment.py): differentiable, vectorised, and a function of its generator's state."""

import pytest
import torch

from gan.augment import AUGMENT_POLICIES, cutout, diff_augment, parse_policy, random_hflip, translation

ALL = "color,translation,cutout"


def _images(n=8, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", [*AUGMENT_POLICIES, ALL])
def test_augmentation_is_differentiable(policy):
    x = _images().requires_grad_(True)
    weights = torch.randn(x.shape, generator=_seeded(9))
    (diff_augment(x, policy, _seeded(1)) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", list(AUGMENT_POLICIES))
def test_each_policy_changes_the_images(policy):
    x = _images()
    y = diff_augment(x, policy, _seeded(1))
    assert y.shape == x.shape
    changed = (y - x).flatten(1).abs().amax(1) > 0
    assert changed.sum() >= 6  # translation may draw a (0, 0) shift for an image now and then


def test_the_same_generator_state_gives_the_same_transform_and_another_a_different_one():
    x = _images()
    a, b = diff_augment(x, ALL, _seeded(7)), diff_augment(x, ALL, _seeded(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, diff_augment(x, ALL, _seeded(8)))
    gen = _seeded(7)
    state = gen.get_state()
    first = random_hflip(x, gen)
    gen.set_state(state)
    assert torch.equal(random_hflip(x, gen), first)


def test_translation_shifts_each_image_with_zeros_shifted_in():
    n, size = 16, 32
    x = torch.arange(1, n * size * size + 1, dtype=torch.float32).reshape(n, 1, size, size).repeat(1, 3, 1, 1)
    y = translation(x, _seeded(3))
    for img, out in zip(x, y):
        rows, cols = torch.nonzero(out[0], as_tuple=True)
        r0, c0 = rows.min().item(), cols.min().item()
        src_r, src_c = torch.nonzero(img[0] == out[0, r0, c0], as_tuple=True)
        dy, dx = src_r.item() - r0, src_c.item() - c0  # out[r, c] = img[r + dy, c + dx]
        assert abs(dy) <= size // 8 and abs(dx) <= size // 8
        expected = torch.zeros_like(img)
        dst = (slice(max(0, -dy), size - max(0, dy)), slice(max(0, -dx), size - max(0, dx)))
        src = (slice(max(0, dy), size - max(0, -dy)), slice(max(0, dx), size - max(0, -dx)))
        expected[:, dst[0], dst[1]] = img[:, src[0], src[1]]
        assert torch.equal(out, expected)


def test_cutout_zeroes_one_square_of_half_the_side_clipped_at_the_edges():
    x = torch.ones(32, 3, 32, 32)
    y = cutout(x, _seeded(4))
    for out in y:
        assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # the same square in every channel
        rows, cols = torch.nonzero(out[0] == 0, as_tuple=True)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 8 <= h <= 16 and 8 <= w <= 16 and len(rows) == h * w  # one (clipped) square


def test_hflip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    x = _images(n=256)
    y = random_hflip(x, _seeded(5))
    flipped = torch.tensor([torch.equal(a, b.flip(2)) for a, b in zip(x, y)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(x, y)])
    assert (flipped | kept).all() and 96 < flipped.sum() < 160


def test_channels_last_input_gives_the_same_result():
    x = _images()
    a = diff_augment(x, ALL, _seeded(2))
    b = diff_augment(x.contiguous(memory_format=torch.channels_last), ALL, _seeded(2))
    assert torch.allclose(a, b)


def test_policies_parse_and_unknown_names_are_refused():
    assert parse_policy("") == parse_policy(None) == ()
    assert parse_policy(" color, cutout ") == ("color", "cutout")
    assert parse_policy(["translation", "color"]) == ("translation", "color")
    with pytest.raises(ValueError, match="'zoom'.*color, translation, cutout"):
        parse_policy("color,zoom")
    with pytest.raises(ValueError, match="twice"):
        parse_policy("color,color")
    with pytest.raises(ValueError, match="zoom"):
        diff_augment(_images(), "zoom")
