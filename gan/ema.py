"""An exponential moving average (EMA) of the generator, for evaluation and sampling.

After every generator update, each averaged parameter moves toward the live one:

    avg <- decay * avg + (1 - decay) * live

(Yazıcı et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training";
StyleGAN's ``G_ema``). The average is a shadow: training never reads it, so the
paper's plain G trains exactly as without it and both can be evaluated from one run.

Buffers: floating-point buffers (batch norm's running mean and variance) are
averaged the same way, integer ones (``num_batches_tracked``) copied. Averaged
running statistics are not exactly those of the averaged weights, so
:meth:`GeneratorEMA.generator` can re-estimate them (``recalibrate_batches``
forward passes of fresh noise in training mode, cumulative average); the quality
benchmark measures both.

Warm-up (``rampup``, as stylegan2-ada's ``ema_rampup``): early in training the
weights move fast and a long average drags in the random initialisation. With a
ramp, the average's half-life (in steps; ``decay = 0.5 ** (1 / half_life)``) is at
most ``rampup`` times the number of updates so far, so after 1,000 steps with
rampup 0.05 it averages over roughly the last 50. None turns the ramp off.

``decay`` 0 keeps an exact copy of the live generator (EMA off): what the config's
``train.ema_decay: 0`` means.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from gan.adversarial import unwrap


class GeneratorEMA:
    """The running average of a generator's parameters and buffers.

    ``GeneratorEMA(g, decay=0.999)``, then ``ema.update(g)`` after every G step
    (``g`` may be wrapped in DDP: the bare module is used). ``ema.module`` is the
    averaged network (eval mode, no gradients); :meth:`generator` returns a copy
    for evaluation, optionally with recalibrated batch norm.
    """

    def __init__(self, generator: nn.Module, decay: float = 0.999, rampup: float | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1) (0 turns averaging off), got {decay}")
        if rampup is not None and not rampup > 0:
            raise ValueError(f"ema rampup must be > 0 or None, got {rampup}")
        self.decay = float(decay)
        self.rampup = rampup
        self.steps = 0
        self.module = copy.deepcopy(unwrap(generator)).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (lower during the warm-up)."""
        if self.decay == 0.0 or self.rampup is None:
            return self.decay
        # decay = 0.5 ** (1 / half_life); half-life capped at rampup * steps taken
        full_half_life = math.log(0.5) / math.log(self.decay)
        half_life = min(full_half_life, self.rampup * (self.steps + 1))
        return 0.5 ** (1.0 / half_life)

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        """Move the average toward ``generator``'s current parameters and buffers."""
        live = unwrap(generator)
        decay = self.current_decay()
        for avg, new in zip(self.module.parameters(), live.parameters()):
            if decay == 0.0:
                avg.copy_(new.detach())
            else:
                avg.lerp_(new.detach().to(avg.dtype), 1.0 - decay)
        for avg, new in zip(self.module.buffers(), live.buffers()):
            if decay == 0.0 or not avg.is_floating_point():
                avg.copy_(new)
            else:
                avg.lerp_(new.to(avg.dtype), 1.0 - decay)
        self.steps += 1

    def state_dict(self) -> dict:
        """For checkpoints: the averaged network's state plus decay, rampup and step count."""
        return {"module": self.module.state_dict(), "decay": self.decay, "rampup": self.rampup, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay, self.rampup, self.steps = float(state["decay"]), state["rampup"], int(state["steps"])

    @torch.no_grad()
    def generator(self, recalibrate_batches: int = 0, batch_size: int = 64,
                  noise: Callable[[int], torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
        """A copy of the averaged generator in eval mode.

        ``recalibrate_batches`` > 0 re-estimates its batch-norm running statistics from
        that many batches of fresh N(0, 1) noise (``noise(n)`` to draw it otherwise),
        as a cumulative average of batch statistics.
        """
        g = copy.deepcopy(self.module)
        if recalibrate_batches > 0:
            recalibrate_batchnorm(g, recalibrate_batches, batch_size, noise, seed)
        return g.eval()


@torch.no_grad()
def recalibrate_batchnorm(generator: nn.Module, batches: int, batch_size: int = 64,
                          noise: Callable[[int], torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
    """Re-estimate every batch norm's running mean/variance of ``generator`` in place."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return generator
    saved = [(m.momentum, m.training) for m in norms]
    device = next(generator.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    latent_dim = getattr(generator, "latent_dim", 100)
    draw = noise or (lambda n: torch.randn(n, latent_dim, 1, 1, device=device, generator=gen))
    was_training = generator.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    generator.train()
    for _ in range(batches):
        generator(draw(batch_size))
    for m, (momentum, _) in zip(norms, saved):
        m.momentum = momentum
    generator.train(was_training)
    return generator
