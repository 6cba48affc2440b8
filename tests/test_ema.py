"""The generator EMA: the averages by hand, decay 0 = copy, warm-up, checkpoints, DDP, batch norm."""

import copy
import socket

import pytest
import torch
from torch import nn

from gan.ema import GeneratorEMA, recalibrate_batchnorm
from gan.models import Generator


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.latent_dim = 3
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, z):
        return self.bn(self.lin(z.flatten(1)))


def _set(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)
        module.bn.running_mean.fill_(value)
        module.bn.running_var.fill_(value)
        module.bn.num_batches_tracked.fill_(int(value * 10))


def test_update_is_the_hand_computed_average():
    live = Tiny()
    _set(live, 1.0)
    ema = GeneratorEMA(live, decay=0.9)
    expected = 1.0
    for value in (2.0, 4.0, -1.0):
        _set(live, value)
        ema.update(live)
        expected = 0.9 * expected + 0.1 * value
        for p in ema.module.parameters():
            assert torch.allclose(p, torch.full_like(p, expected))
        assert torch.allclose(ema.module.bn.running_mean, torch.full((2,), expected))  # float buffers averaged
        assert ema.module.bn.num_batches_tracked.item() == int(value * 10)  # integer buffers copied
    assert ema.steps == 3
    # the live network is untouched and the average takes no gradients
    assert all(p.requires_grad for p in live.parameters())
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_decay_zero_is_a_copy():
    live = Generator(resolution=32, width=8)
    ema = GeneratorEMA(live, decay=0.0)
    with torch.no_grad():
        for p in live.parameters():
            p.add_(torch.randn_like(p))
    ema.update(live)
    for a, b in zip(ema.module.state_dict().values(), live.state_dict().values()):
        assert torch.equal(a, b)


def test_rampup_shortens_the_half_life_early():
    live = Tiny()
    ema = GeneratorEMA(live, decay=0.999, rampup=0.05)
    assert ema.current_decay() == pytest.approx(0.5 ** (1 / 0.05))  # first step: half-life 0.05 steps
    ema.steps = 1000  # half-life min(693, 0.05 * 1001 = 50.05)
    assert ema.current_decay() == pytest.approx(0.5 ** (1 / 50.05))
    ema.steps = 100_000  # the ramp has ended
    assert ema.current_decay() == pytest.approx(0.999)
    assert GeneratorEMA(live, decay=0.999).current_decay() == 0.999


def test_state_round_trips_through_a_checkpoint(tmp_path):
    live = Generator(resolution=32, width=8)
    ema = GeneratorEMA(live, decay=0.99, rampup=0.1)
    for _ in range(3):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(0.01)
        ema.update(live)
    torch.save({"ema": ema.state_dict()}, tmp_path / "ckpt.pt")
    restored = GeneratorEMA(Generator(resolution=32, width=8), decay=0.5)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["ema"])
    assert (restored.decay, restored.rampup, restored.steps) == (0.99, 0.1, 3)
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    # and it goes on exactly as the original would
    ema.update(live)
    restored.update(live)
    assert all(torch.equal(a, b) for a, b in zip(restored.module.parameters(), ema.module.parameters()))


def test_works_with_a_ddp_wrapped_generator():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        bare = Generator(resolution=32, width=8)
        wrapped = nn.parallel.DistributedDataParallel(bare)
        ema = GeneratorEMA(wrapped, decay=0.5)
        assert type(ema.module) is Generator  # the bare network, not the wrapper
        before = copy.deepcopy(ema.module.state_dict())
        with torch.no_grad():
            for p in bare.parameters():
                p.add_(1.0)
        ema.update(wrapped)
        for name, p in ema.module.named_parameters():
            assert torch.allclose(p, before[name] + 0.5)
    finally:
        dist.destroy_process_group()


def test_averaged_generator_for_evaluation_and_batchnorm_recalibration():
    live = Generator(resolution=32, width=8)
    ema = GeneratorEMA(live, decay=0.9)
    g = ema.generator()
    assert not g.training and g is not ema.module
    z = torch.randn(16, 100, 1, 1)
    assert g(z).shape == (16, 3, 32, 32)
    # re-estimated statistics are the batch statistics of the averaged network itself
    recal = ema.generator(recalibrate_batches=4, batch_size=32, seed=3)
    bn = recal.main.project[1]
    assert bn.num_batches_tracked.item() == 4 and bn.momentum == 0.1  # momentum restored
    gen = torch.Generator().manual_seed(3)
    zs = [torch.randn(32, 100, 1, 1, generator=gen) for _ in range(4)]
    with torch.no_grad():
        pre = torch.cat([ema.module.main.project[0](zb) for zb in zs])
    assert torch.allclose(bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    # recalibrating in place on a model without batch norm is a no-op
    assert recalibrate_batchnorm(nn.Linear(2, 2), 2) is not None


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_impossible_decays_are_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        GeneratorEMA(Tiny(), decay=decay)
