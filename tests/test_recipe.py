"""The recipe options beyond the paper: D's normalisation, hinge losses, DiffAugment and flips
in the step, and their config keys. Every one is off by default (the paper's recipe)."""

import copy

import pytest
import torch
from torch import nn

from gan.losses import (discriminator_loss, discriminator_loss_hinge, generator_loss, generator_loss_hinge)
from gan.models import Discriminator, Generator, init_dcgan_weights
from gan.adversarial import AdversarialStep, make_optimizers
from pipelines.training.checkpoints import build_networks
from pipelines.config import ConfigError, load_config

RECIPE = {"discriminator_loss": "hinge", "generator_loss": "hinge", "augment": "color,translation,cutout",
          "hflip": True}


def _convs(d):
    return {name: m for name, m in d.named_modules() if isinstance(m, nn.Conv2d)}


def _largest_singular_values(d):
    """Of each conv's effective weight (spectral norm applied), reshaped to (out, -1)."""
    with torch.no_grad():
        return {name: torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), ord=2).item()
                for name, m in _convs(d).items()}


# ----------------------------------------------------------------------------- D's normalisation


def test_spectral_norm_discriminator_has_no_batch_norm_and_unit_spectral_norms():
    torch.manual_seed(0)
    d = Discriminator(resolution=64, width=16, norm="spectral").train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    convs = _convs(d)
    assert len(convs) == 5 and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs.values())
    assert {name.split(".")[1] for name in convs} == {"from_rgb", "down1", "down2", "down3", "logit"}
    for _ in range(5):  # power iterations, one per forward in training mode
        d(torch.randn(4, 3, 64, 64))
    for name, sigma in _largest_singular_values(d).items():
        assert sigma == pytest.approx(1.0, abs=0.05), name


def test_no_norm_discriminator_has_neither_batch_norm_nor_spectral_norm():
    d = Discriminator(resolution=32, width=8, norm="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in d.modules())
    assert d(torch.randn(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="batch.*spectral.*none"):
        Discriminator(norm="layer")


def test_init_dcgan_weights_initialises_parametrized_convs():
    torch.manual_seed(0)
    d = Discriminator(resolution=64, width=64, norm="spectral")
    stored = [m.parametrizations.weight.original for m in _convs(d).values()]
    for w in stored:
        w.data.fill_(1.0)
    init_dcgan_weights(d)
    w = torch.cat([w.flatten() for w in stored])
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)
    # the singular vectors were re-estimated for the new weights: no forward pass needed
    for name, sigma in _largest_singular_values(d.eval()).items():
        assert sigma == pytest.approx(1.0, abs=0.1), name


def test_build_networks_builds_d_with_the_configured_norm_and_loads_its_checkpoint():
    cfg = load_config("smoke", ["model.d_norm=spectral"]).model.model_dump()
    _, d = build_networks(cfg)
    assert d.norm == "spectral"
    _, again = build_networks(cfg)
    again.load_state_dict(d.state_dict())  # strict: the same keys, u and v included
    old = {k: v for k, v in cfg.items() if k != "d_norm"}  # a checkpoint from before model.d_norm
    assert build_networks(old)[1].norm == "batch"


# ----------------------------------------------------------------------------- losses


def test_hinge_losses_match_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.3, 1.5])
    # mean(relu(1 - real)) = (0 + 0.5 + 2) / 3; mean(relu(1 + fake)) = (0 + 1.3 + 2.5) / 3
    assert discriminator_loss_hinge(real, fake).item() == pytest.approx((2.5 + 3.8) / 3, rel=1e-6)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(2.1, rel=1e-6)
    assert generator_loss_hinge(fake).item() == pytest.approx(-(-2.0 + 0.3 + 1.5) / 3, rel=1e-6)
    assert generator_loss(fake, "hinge").item() == generator_loss_hinge(fake).item()
    with pytest.raises(ValueError, match="cross_entropy.*hinge"):
        discriminator_loss(real, fake, "wasserstein")


# ----------------------------------------------------------------------------- the step


def _step(seed=0, noise_seed=1, **options):
    torch.manual_seed(seed)
    g, d = Generator(resolution=32, latent_dim=16, width=8), Discriminator(resolution=32, width=8, norm="spectral")
    opt_g, opt_d = make_optimizers(g, d)
    return AdversarialStep(g, d, opt_g, opt_d, latent_dim=16, noise_generator=torch.Generator().manual_seed(noise_seed),
                           **options)


def _batch(seed=5):
    return torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _weights(step):
    return {f"{net}.{k}": v.clone() for net in ("generator", "discriminator")
            for k, v in getattr(step, net).state_dict().items()}


def test_one_iteration_with_spectral_norm_hinge_augment_and_hflip_changes_the_weights():
    step = _step(**RECIPE)
    before = _weights(step)
    metrics = step(iter([_batch()]))
    assert all(torch.isfinite(v) for v in metrics.values())
    assert 0 < metrics["d_real"] < 1 and 0 < metrics["d_fake"] < 1  # still sigmoid(logit) means
    after = _weights(step)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "generator.main.to_rgb.0.weight" in changed
    assert "discriminator.main.logit.parametrizations.weight.original" in changed
    assert "discriminator.main.down1.0.parametrizations.weight.0._u" in changed  # power iteration ran


def test_d_sees_augmented_images_in_both_updates_and_g_learns_through_them():
    step = _step(augment="cutout")
    seen = []
    step.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    step(iter([_batch()]))
    assert len(seen) == 3  # D's update: real, fake; G's update: fake
    for x in seen:  # cutout's zero square (at least 8x8 where clipped) in every image
        assert ((x == 0).sum(dim=(1, 2, 3)) >= 3 * 8 * 8).all()
    assert not seen[0].requires_grad and not seen[1].requires_grad and seen[2].requires_grad


def test_the_same_noise_state_gives_the_same_iteration_and_another_a_different_one():
    """An iteration's augmentations and flips come from the step's noise generator, which the
    training loop reseeds from (seed, rank, iteration): replaying that state replays the iteration."""
    a, b, c = _step(**RECIPE), _step(**RECIPE), _step(noise_seed=2, **RECIPE)
    for step in (a, b, c):
        step(iter([_batch()]))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["discriminator.main.logit.parametrizations.weight.original"],
                           wc["discriminator.main.logit.parametrizations.weight.original"])


def test_a_resumed_step_continues_exactly():
    def reseed(step, iteration):
        step.noise_generator.manual_seed(1000 + iteration)  # as the loop's iteration_seed does

    whole = _step(**RECIPE)
    for it in (1, 2):
        reseed(whole, it)
        whole(iter([_batch(it)]))
    first = _step(**RECIPE)
    reseed(first, 1)
    first(iter([_batch(1)]))
    saved = copy.deepcopy({"g": first.generator.state_dict(), "d": first.discriminator.state_dict(),
                           "opt_g": first.opt_g.state_dict(), "opt_d": first.opt_d.state_dict()})
    resumed = _step(seed=3, **RECIPE)  # other initial weights: everything comes from the checkpoint
    resumed.generator.load_state_dict(saved["g"])
    resumed.discriminator.load_state_dict(saved["d"])
    resumed.opt_g.load_state_dict(saved["opt_g"])
    resumed.opt_d.load_state_dict(saved["opt_d"])
    reseed(resumed, 2)
    resumed(iter([_batch(2)]))
    w1, w2 = _weights(whole), _weights(resumed)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_the_step_refuses_unknown_recipe_options():
    with pytest.raises(ValueError, match="zoom"):
        _step(augment="zoom")
    with pytest.raises(ValueError, match="discriminator_loss"):
        _step(discriminator_loss="wasserstein")
    with pytest.raises(ValueError, match="generator_loss"):
        _step(generator_loss="wasserstein")


# ----------------------------------------------------------------------------- config


def test_the_new_keys_validate():
    cfg = load_config("smoke", ["model.d_norm=spectral", "train.discriminator_loss=hinge", "train.generator_loss=hinge",
                                "train.augment=color, translation,cutout", "train.hflip=true"])
    assert (cfg.model.d_norm, cfg.train.discriminator_loss, cfg.train.generator_loss, cfg.train.hflip) == (
        "spectral", "hinge", "hinge", True)
    assert cfg.train.augment == "color,translation,cutout"
    assert load_config("smoke", ["train.augment=[translation, color]"]).train.augment == "translation,color"
    assert load_config("smoke", ["model.d_norm=none", "train.augment="]).model.d_norm == "none"


@pytest.mark.parametrize("override, message", [
    ("model.d_norm=layer", r"model.d_norm: .*'batch', 'spectral' or 'none'"),
    ("train.discriminator_loss=wasserstein", r"train.discriminator_loss: .*'cross_entropy' or 'hinge'"),
    ("train.generator_loss=wasserstein", r"train.generator_loss: .*'hinge'"),
    ("train.augment=color,zoom", r"train.augment: .*'zoom'.*color, translation, cutout"),
    ("train.augment=[color, 3]", r"train.augment: .*'3'"),
    ("train.hflip=sometimes", r"train.hflip"),
])
def test_bad_recipe_values_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", [override])
