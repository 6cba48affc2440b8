import math

import pytest
import torch

from gan.losses import discriminator_loss, generator_loss, generator_loss_minimax, generator_loss_non_saturating


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_discriminator_loss_matches_hand_computed_bce():
    # D(x) = 0.8 and 0.6 on real; D(G(z)) = 0.3 and 0.1 on fake
    real = torch.tensor([_logit(0.8), _logit(0.6)])
    fake = torch.tensor([_logit(0.3), _logit(0.1)])
    expected = -(math.log(0.8) + math.log(0.6)) / 2 - (math.log(0.7) + math.log(0.9)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_generator_losses_match_hand_computed_values():
    fake = torch.tensor([_logit(0.3), _logit(0.1)])
    assert generator_loss_minimax(fake).item() == pytest.approx((math.log(0.7) + math.log(0.9)) / 2, rel=1e-6)
    assert generator_loss_non_saturating(fake).item() == pytest.approx(-(math.log(0.3) + math.log(0.1)) / 2, rel=1e-6)
    assert generator_loss(fake, "minimax").item() == generator_loss_minimax(fake).item()
    with pytest.raises(ValueError, match="non_saturating"):
        generator_loss(fake, "wasserstein")


def test_losses_stay_finite_when_d_saturates():
    extreme = torch.tensor([-200.0, 200.0])
    for value in (
        discriminator_loss(extreme, extreme),
        generator_loss_minimax(extreme),
        generator_loss_non_saturating(extreme),
    ):
        assert torch.isfinite(value)
    # D certain that a fake is fake: -log D(G(z)) is large but finite
    assert generator_loss_non_saturating(torch.tensor([-200.0])).item() == pytest.approx(200.0)


def test_minimax_gradient_vanishes_where_non_saturating_does_not():
    # Early training: D rejects samples confidently, D(G(z)) ~ 1e-4.
    logit = torch.tensor([_logit(1e-4)], requires_grad=True)
    (g_mm,) = torch.autograd.grad(generator_loss_minimax(logit), logit)
    (g_ns,) = torch.autograd.grad(generator_loss_non_saturating(logit), logit)
    assert abs(g_mm.item()) < 1e-3  # -sigmoid(l) ~ -1e-4
    assert abs(g_ns.item()) > 0.99  # -(1 - sigmoid(l)) ~ -1
    # both push D(G(z)) up (negative gradient on the logit)
    assert g_mm.item() < 0 and g_ns.item() < 0
    # near D(G(z)) = 1 it is the other way round
    logit = torch.tensor([_logit(1 - 1e-4)], requires_grad=True)
    (g_mm,) = torch.autograd.grad(generator_loss_minimax(logit), logit)
    (g_ns,) = torch.autograd.grad(generator_loss_non_saturating(logit), logit)
    assert abs(g_mm.item()) > 0.99 and abs(g_ns.item()) < 1e-3
