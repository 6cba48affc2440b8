import copy

import pytest
import torch

from gan.models import Discriminator, Generator
from gan.adversarial import AdversarialStep, make_optimizers


def _tiny(seed=0, k=1, loss="non_saturating"):
    torch.manual_seed(seed)
    g, d = Generator(resolution=32, latent_dim=16, width=8), Discriminator(resolution=32, width=8)
    opt_g, opt_d = make_optimizers(g, d, lr_g=1e-3, lr_d=3e-4)
    step = AdversarialStep(g, d, opt_g, opt_d, latent_dim=16, discriminator_steps=k, generator_loss=loss)
    return g, d, opt_g, opt_d, step


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_optimizers_have_paper_defaults_and_separate_learning_rates():
    g, d = Generator(resolution=32, width=8), Discriminator(resolution=32, width=8)
    opt_g, opt_d = make_optimizers(g, d, lr_g=1e-3)
    assert opt_g.param_groups[0]["lr"] == 1e-3 and opt_d.param_groups[0]["lr"] == 2e-4
    assert opt_g.param_groups[0]["betas"] == (0.5, 0.999) == opt_d.param_groups[0]["betas"]
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in g.parameters()}


@pytest.mark.parametrize("k", [1, 3])
def test_k_discriminator_steps_then_one_generator_step(k):
    g, d, opt_g, opt_d, step = _tiny(k=k)
    events = []
    snap = {}

    def d_pre(opt, args, kwargs):
        snap["g"] = _params(g)
        events.append("D")

    def d_post(opt, args, kwargs):
        assert _same(snap["g"], _params(g)), "G changed during a D step"
        snap["d_grad"] = [p.grad.clone() for p in d.parameters()]

    def g_pre(opt, args, kwargs):
        snap["d"] = _params(d)
        # no gradient leaks from the G step into D: D's gradients are still the D step's
        assert _same(snap["d_grad"], [p.grad for p in d.parameters()]), "the G step wrote D's gradients"
        events.append("G")

    def g_post(opt, args, kwargs):
        assert _same(snap["d"], _params(d)), "D changed during the G step"

    opt_d.register_step_pre_hook(d_pre)
    opt_d.register_step_post_hook(d_post)
    opt_g.register_step_pre_hook(g_pre)
    opt_g.register_step_post_hook(g_post)

    batches = [torch.rand(4, 3, 32, 32) * 2 - 1 for _ in range(3 * k)]
    consumed = []

    def source():
        for b in batches:
            consumed.append(b)
            yield b

    it = source()
    d_before = _params(d)
    g_before = _params(g)
    metrics = step(it)
    assert events == ["D"] * k + ["G"]
    assert len(consumed) == k  # exactly k fresh real batches per iteration
    assert not _same(d_before, _params(d)) and not _same(g_before, _params(g))
    assert set(metrics) == {"loss_d", "loss_g", "d_real", "d_fake", "d_fake_g"}
    assert all(torch.isfinite(v) for v in metrics.values())
    step(it)
    assert events == (["D"] * k + ["G"]) * 2
    assert len(consumed) == 2 * k


def test_each_discriminator_step_sees_fresh_noise():
    g, d, opt_g, opt_d, step = _tiny(k=2)
    seen = []
    handle = d.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    step(iter([torch.zeros(4, 3, 32, 32)] * 2))
    handle.remove()
    # forwards: real, fake (D step 1), real, fake (D step 2), fake (G step)
    fakes = [seen[1], seen[3], seen[4]]
    assert not torch.allclose(fakes[0], fakes[1]) and not torch.allclose(fakes[1], fakes[2])


def test_discriminator_step_matches_a_hand_written_update():
    g, d, opt_g, opt_d, step = _tiny(seed=3)
    g2, d2 = copy.deepcopy(g), copy.deepcopy(d)
    opt_d2 = torch.optim.Adam(d2.parameters(), lr=3e-4, betas=(0.5, 0.999))
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(7)
    step.noise_generator = gen
    step.discriminator_step(real)
    z = torch.randn(4, 16, 1, 1, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        fake = g2(z)
    bce = torch.nn.BCEWithLogitsLoss()
    loss = bce(d2(real), torch.ones(4)) + bce(d2(fake), torch.zeros(4))
    opt_d2.zero_grad()
    loss.backward()
    opt_d2.step()
    for p, q in zip(d.parameters(), d2.parameters()):
        torch.testing.assert_close(p, q)


def test_minimax_and_non_saturating_update_g_differently():
    a = _tiny(seed=1, loss="minimax")
    b = _tiny(seed=1, loss="non_saturating")
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    for g, d, _, _, step in (a, b):
        step.noise_generator = torch.Generator().manual_seed(0)
        step(iter([real]))
    assert not _same(_params(a[0]), _params(b[0]))


def test_training_learns_a_simple_distribution():
    # Real data: constant images at +0.5. After a short training, G's samples move there.
    torch.manual_seed(0)
    g, d = Generator(resolution=32, latent_dim=16, width=8), Discriminator(resolution=32, width=8)
    opt_g, opt_d = make_optimizers(g, d, lr_g=5e-3, lr_d=5e-3)
    step = AdversarialStep(g, d, opt_g, opt_d, latent_dim=16)
    real = torch.full((16, 3, 32, 32), 0.5)
    with torch.no_grad():
        start = (g(step.noise(64)) - 0.5).abs().mean().item()
    for _ in range(80):
        m = step(iter([real]))
    with torch.no_grad():
        end = (g(step.noise(64)) - 0.5).abs().mean().item()
    assert end < 0.5 * start
    assert torch.isfinite(m["loss_d"]) and torch.isfinite(m["loss_g"])


def test_k_must_be_positive():
    g, d = Generator(resolution=32, width=8), Discriminator(resolution=32, width=8)
    opt_g, opt_d = make_optimizers(g, d)
    with pytest.raises(ValueError, match="discriminator_steps"):
        AdversarialStep(g, d, opt_g, opt_d, discriminator_steps=0)


def test_gpu_options_bf16_autocast_and_channels_last_run_the_same_algorithm():
    # The GPU path (bf16 autocast, channels_last) exercised on the CPU, which supports both:
    # the step stays finite, updates both networks, and tracks the float32 step closely.
    results = {}
    for name, dtype, cl in (("fp32", None, False), ("bf16", torch.bfloat16, True)):
        torch.manual_seed(0)
        g, d = Generator(resolution=32, latent_dim=16, width=8), Discriminator(resolution=32, width=8)
        if cl:
            g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        opt_g, opt_d = make_optimizers(g, d)
        step = AdversarialStep(g, d, opt_g, opt_d, latent_dim=16, autocast_dtype=dtype, channels_last=cl,
                               noise_generator=torch.Generator().manual_seed(1))
        before = _params(g)
        m = step(iter([torch.rand(8, 3, 32, 32) * 2 - 1]))
        assert all(torch.isfinite(v) for v in m.values())
        assert all(p.dtype == torch.float32 for p in g.parameters())  # master weights stay fp32
        assert not _same(before, _params(g))
        results[name] = m
    assert abs(results["bf16"]["loss_d"] - results["fp32"]["loss_d"]) < 0.05
