"""gan.latent_space: walks, vector arithmetic, feature-map selection and dropping."""

import math

import pytest
import torch

from gan import latent_space as latent
from gan.models import Generator


def _tiny_generator(seed=0):
    torch.manual_seed(seed)
    g = Generator(resolution=32, latent_dim=16, width=8).eval()
    # Fresh batch-norm running stats are (0, 1); give them values so eval mode is not trivial.
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return g


def _unit(v):
    return v / v.norm()


# ---------------------------------------------------------------- walks
def test_slerp_keeps_unit_norm_and_hits_endpoints():
    gen = torch.Generator().manual_seed(0)
    z0, z1 = _unit(torch.randn(100, generator=gen)), _unit(torch.randn(100, generator=gen))
    path = latent.slerp(z0, z1, torch.linspace(0, 1, 11))
    assert path.shape == (11, 100)
    torch.testing.assert_close(path.norm(dim=1), torch.ones(11), atol=1e-5, rtol=0)
    torch.testing.assert_close(path[0], z0, atol=1e-6, rtol=0)
    torch.testing.assert_close(path[-1], z1, atol=1e-6, rtol=0)
    # Constant angular speed: equal angles between consecutive steps, summing to the full angle.
    full = torch.arccos(torch.dot(z0, z1).clamp(-1, 1))
    steps = torch.arccos((path[1:] * path[:-1]).sum(1).clamp(-1, 1))
    torch.testing.assert_close(steps, torch.full((10,), float(full) / 10), atol=1e-4, rtol=0)
    # A scalar t gives one vector.
    assert latent.slerp(z0, z1, 0.5).shape == (100,)


def test_lerp_cuts_the_corner_that_slerp_follows():
    z0, z1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid_lerp = latent.lerp(z0, z1, 0.5)
    mid_slerp = latent.slerp(z0, z1, 0.5)
    torch.testing.assert_close(mid_lerp, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(mid_slerp, torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_slerp_of_parallel_vectors_falls_back_to_lerp():
    z = torch.tensor([3.0, 4.0])
    out = latent.slerp(z, 2 * z, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.stack([z, 1.5 * z, 2 * z]))


def test_walk_segments_join_at_the_keypoints():
    keys = latent.seeded_z([3, 17, 42], 16)
    path = latent.walk(keys, steps=5, method="slerp")
    assert path.shape == (2, 5, 16)
    torch.testing.assert_close(path[0, 0], keys[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(path[0, -1], keys[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(path[1, 0], keys[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(path[1, -1], keys[2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="2 keypoints"):
        latent.walk(keys[:1], 5)
    with pytest.raises(ValueError, match="slerp' or 'lerp"):
        latent.interpolate(keys[0], keys[1], 5, "cubic")


# ------------------------------------------------------------ arithmetic
def test_seeded_z_is_a_stable_name_for_a_sample():
    z = latent.seeded_z([5, 12, 7], 100)
    assert torch.equal(z[1], torch.randn(100, generator=torch.Generator().manual_seed(12)))
    assert torch.equal(latent.seeded_z([12], 100)[0], z[1])  # same z whatever else is asked for
    assert not torch.equal(z[0], z[2])


def test_arithmetic_on_the_z_of_known_seeds():
    def z_of(seed):
        return torch.randn(100, generator=torch.Generator().manual_seed(seed))

    a, b, c = [2, 7, 11], [4, 9, 13], [5, 6, 8]
    expected = (sum(z_of(s) for s in a) - sum(z_of(s) for s in b) + sum(z_of(s) for s in c)) / 3
    got = latent.arithmetic([(1, latent.seeded_z(a, 100)), (-1, latent.seeded_z(b, 100)), (1, latent.seeded_z(c, 100))])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # Order of the concepts matters for the sign, not otherwise.
    flipped = latent.arithmetic([(1, latent.seeded_z(c, 100)), (-1, latent.seeded_z(b, 100)), (1, latent.seeded_z(a, 100))])
    torch.testing.assert_close(flipped, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sign"):
        latent.arithmetic([(2, latent.seeded_z(a, 100))])


def test_neighbourhood_is_the_exact_result_and_uniform_noise_around_it():
    z = torch.randn(100)
    out = latent.neighbourhood(z, 8, scale=0.25, generator=torch.Generator().manual_seed(0))
    assert out.shape == (9, 100)
    assert torch.equal(out[0], z)
    noise = out[1:] - z
    assert noise.abs().max() <= 0.25 + 1e-6
    assert noise.abs().max() > 0.2  # it is spread over the whole range, not tiny
    assert (noise.std(dim=1) > 0.1).all()


# ------------------------------------------------------------ feature maps
def test_boxes_map_to_the_feature_positions_they_cover():
    mask = latent.boxes_to_mask([[0, 0, 16, 16]], image_size=32, feature_size=16)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[:8, :8] = True
    assert torch.equal(mask, expected)
    # Rows are y, columns are x: a wide, short box marks a wide, short patch.
    wide = latent.boxes_to_mask([[4, 10, 28, 14]], 32, 16)
    assert torch.equal(wide.nonzero()[:, 0].unique(), torch.tensor([5, 6]))
    assert torch.equal(wide.nonzero()[:, 1].unique(), torch.arange(2, 14))
    with pytest.raises(ValueError, match="empty"):
        latent.boxes_to_mask([[5, 5, 5, 9]], 32, 16)
    pixel = torch.zeros(32, 32, dtype=torch.bool)
    pixel[:16, :16] = True
    assert torch.equal(latent.pixel_mask_to_features(pixel, 16), expected)


def test_dropping_maps_changes_the_output_only_through_those_maps():
    g = _tiny_generator()
    z = latent.seeded_z(range(6), g.latent_dim)
    weights_before = {k: v.clone() for k, v in g.state_dict().items()}
    with torch.no_grad():
        reference = g(z)
    acts, _ = latent.feature_activations(g, z)
    assert acts.shape == (6, 8, 16, 16)  # the second-highest conv layer of a 32x32 G
    maps = [1, 5, 6]

    with torch.no_grad(), latent.feature_maps_dropped(g, maps):
        dropped = g(z)
        seen, _ = latent.feature_activations(g, z)  # what to_rgb now receives
    expected_input = acts.clone()
    expected_input[:, maps] = 0
    assert torch.equal(seen, expected_input)  # the chosen maps are zero, the others untouched
    with torch.no_grad():
        assert torch.equal(dropped, g.main.to_rgb(expected_input))  # nothing else differs on the way out
    assert not torch.allclose(dropped, reference)

    # Weights untouched, hook gone: the model is bit-identical to before.
    assert all(torch.equal(weights_before[k], v) for k, v in g.state_dict().items())
    assert not g.main.up2._forward_hooks
    with torch.no_grad():
        assert torch.equal(g(z), reference)
        with latent.feature_maps_dropped(g, []):
            assert torch.equal(g(z), reference)


def test_drop_hook_is_removed_even_when_generation_fails():
    g = _tiny_generator()
    with pytest.raises(RuntimeError):
        with latent.feature_maps_dropped(g, [0]):
            g(torch.randn(2, 7))  # wrong latent size
    assert not g.main.up2._forward_hooks
    handle = latent.drop_feature_maps(g, [99])
    with pytest.raises(ValueError, match="out of range"):
        g(torch.randn(2, 16))
    handle.remove()


def _planted_activations(planted, anti, n=16, c=24, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        x0, y0 = torch.randint(0, size - 3, (2,), generator=gen).tolist()
        masks[i, y0:y0 + 3, x0:x0 + 3] = True
    acts = torch.randn(n, c, size, size, generator=gen).relu()
    for k in planted:
        acts[:, k] += 1.5 * masks
    acts[:, anti] += 1.5 * ~masks  # fires everywhere except on the object
    return acts, masks


def test_logistic_regression_recovers_maps_planted_on_the_marked_region():
    planted, anti = [3, 11, 17], 5
    acts, masks = _planted_activations(planted, anti)
    sel = latent.select_maps_from_activations(acts, masks, threshold=0.0)
    assert set(sel.maps[:3]) == set(planted)  # the strongest weights are the planted maps
    assert anti not in sel.maps  # negatively correlated: negative weight, never dropped
    assert sel.weights[anti] < 0
    assert sel.accuracy > 0.95
    assert sel.positives == int(masks.sum()) and sel.negatives == masks.numel() - int(masks.sum())
    strict = latent.select_maps_from_activations(acts, masks, threshold=0.5 * min(sel.weights[k] for k in planted))
    assert set(strict.maps) == set(planted)


def test_selection_needs_positions_inside_and_outside_the_object():
    acts, masks = _planted_activations([1], 2)
    with pytest.raises(ValueError, match="inside the marks"):
        latent.select_maps_from_activations(acts, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="outside the object"):
        latent.select_maps_from_activations(acts, torch.ones_like(masks))


def test_selection_on_a_generator_finds_the_map_that_draws_the_marked_region():
    # Mark, in each image, where one map of the real layer fires most; the regression
    # must point back at that map - which only works if masks and activations line up.
    g = _tiny_generator(seed=3)
    z = latent.seeded_z(range(12), g.latent_dim)
    acts, _ = latent.feature_activations(g, z)
    target = int(acts.flatten(2).std(dim=2).mean(0).argmax())  # a map that is alive
    a = acts[:, target]
    masks = a > a.flatten(1).quantile(0.85, dim=1)[:, None, None]
    sel = latent.select_feature_maps(g, z, masks)
    assert sel.layer == "up2"
    assert sel.maps[0] == target
    transposed = latent.select_feature_maps(g, z, masks.transpose(1, 2))
    assert transposed.accuracy < sel.accuracy


def test_change_inside_marks_measures_the_image_change_under_the_marks():
    g = _tiny_generator()
    z = latent.seeded_z(range(3), g.latent_dim)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, :8, :4] = True  # feature positions -> image pixels [0:16, 0:8]
    with torch.no_grad():
        before = g(z)
        with latent.feature_maps_dropped(g, [2, 3]):
            after = g(z)
    change = (after - before).abs().mean(1)
    inside, outside = latent.change_inside_marks(g, z, masks, [2, 3])
    assert inside == pytest.approx(float(change[:, :16, :8].mean()), rel=1e-6)
    outside_pixels = torch.ones(3, 32, 32, dtype=torch.bool)
    outside_pixels[:, :16, :8] = False
    assert outside == pytest.approx(float(change[outside_pixels].mean()), rel=1e-6)
    assert latent.change_inside_marks(g, z, masks, []) == (0.0, 0.0)
