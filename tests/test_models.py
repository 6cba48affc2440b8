import pytest
import torch
from torch import nn

from gan.models import Discriminator, Generator, count_parameters


def test_paper_networks_match_reference_parameter_counts():
    assert count_parameters(Generator()) == 3_576_704
    assert count_parameters(Discriminator()) == 2_765_568


def test_paper_figure_width_projects_to_4x4x1024():
    g = Generator(width=128)
    assert g.main.project[0].out_channels == 1024


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes_and_output_range(resolution):
    g, d = Generator(resolution=resolution, width=8), Discriminator(resolution=resolution, width=8)
    z = torch.randn(4, 100)
    x = g(z)
    assert x.shape == (4, 3, resolution, resolution)
    assert x.abs().max() <= 1.0  # tanh output
    assert d(x).shape == (4,)
    # z as (N, nz, 1, 1) gives the same images
    g.eval()
    assert torch.equal(g(z), g(z[:, :, None, None]))


def test_architecture_follows_the_paper():
    g, d = Generator(), Discriminator()
    g_mods, d_mods = list(g.modules()), list(d.modules())
    # no pooling, no fully-connected layers
    for mods in (g_mods, d_mods):
        assert not any(isinstance(m, (nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in mods)
    # G: transposed convs only, stride 2 after the projection; ReLU hidden, tanh out
    g_convs = [m for m in g_mods if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(isinstance(m, nn.ConvTranspose2d) for m in g_convs)
    assert [m.stride for m in g_convs[1:]] == [(2, 2)] * (len(g_convs) - 1)
    assert isinstance(g.main.to_rgb[-1], nn.Tanh)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.main.to_rgb.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g_mods) == len(g_convs) - 1
    assert sum(isinstance(m, nn.ReLU) for m in g_mods) == len(g_convs) - 1
    # D: strided convs, LeakyReLU(0.2), BN everywhere except the input layer
    d_convs = [m for m in d_mods if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in d_convs[:-1]] == [(2, 2)] * (len(d_convs) - 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.main.from_rgb.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d_mods) == len(d_convs) - 2
    leaky = [m for m in d_mods if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.2 for m in leaky)


def test_weight_init_is_normal_0_002_and_bn_scale_1_002():
    torch.manual_seed(0)
    g = Generator(width=64)
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(torch.count_nonzero(m.bias) == 0 for m in g.modules() if isinstance(m, nn.BatchNorm2d))


def test_feature_layers_names_second_highest_conv():
    g = Generator(resolution=64)
    assert g.feature_layers == ["project", "up1", "up2", "up3"]


def test_unsupported_resolution_is_rejected():
    with pytest.raises(ValueError, match="32, 64, 128"):
        Generator(resolution=48)
