"""Algorithm 1 of Goodfellow et al. (2014) as one reusable step.

One call of :meth:`AdversarialStep.__call__` is one training iteration:

    for k steps:
        sample a fresh real minibatch x and fresh noise z
        update D by descending  -[log D(x) + log(1 - D(G(z)))]
    sample fresh noise z
    update G by descending  log(1 - D(G(z)))  (minimax)  or  -log D(G(z))  (non-saturating)

The step works the same on a bare module and on a ``DistributedDataParallel``
wrapper (anything with a ``.module``): gradients flow through the wrapper only in
the update of the network that owns them, so DDP all-reduces exactly the
gradients of the network being updated, and nothing leaks from one update into
the other network:

- D step: fakes come from the bare G under ``no_grad`` (no graph, no DDP hooks);
  D runs twice (real, fake) before one backward, which is safe under DDP only
  with ``broadcast_buffers=False`` (buffer broadcast in the 2nd forward writes
  batch-norm buffers in place, which autograd rejects on GPUs).
- G step: D is called as its bare module with ``requires_grad`` off, so no D
  parameter gets a gradient (and D's weight gradients are not even computed).

Metrics come back as detached tensors; call ``.item()`` only when logging, so a
GPU step never waits on a host sync.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from gan.losses import GeneratorLoss, discriminator_loss, generator_loss


def unwrap(module: nn.Module) -> nn.Module:
    """The bare network inside a DDP (or similar) wrapper."""
    return getattr(module, "module", module)


def make_optimizers(
    generator: nn.Module,
    discriminator: nn.Module,
    lr_g: float = 2e-4,
    lr_d: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    fused: bool | None = None,
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam with the DCGAN paper's settings (lr 2e-4, beta1 0.5), one per network."""
    kwargs = {"betas": betas}
    if fused is not None:
        kwargs["fused"] = fused
    return (
        torch.optim.Adam(generator.parameters(), lr=lr_g, **kwargs),
        torch.optim.Adam(discriminator.parameters(), lr=lr_d, **kwargs),
    )


@dataclass
class AdversarialStep:
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    latent_dim: int = 100
    discriminator_steps: int = 1
    generator_loss: GeneratorLoss = "non_saturating"
    autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 on GPUs
    channels_last: bool = False
    noise_generator: torch.Generator | None = None
    _device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        if self.discriminator_steps < 1:
            raise ValueError(f"discriminator_steps (k) must be >= 1, got {self.discriminator_steps}")
        self._device = next(unwrap(self.generator).parameters()).device

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, 1, 1, device=self._device, generator=self.noise_generator)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self.autocast_dtype)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self._device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def discriminator_step(self, real: torch.Tensor, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D update on ``real`` and G(z) (z: fresh noise unless given)."""
        g_bare = unwrap(self.generator)
        real = self._prepare(real)
        z = self.noise(real.shape[0]) if z is None else z.to(self._device)
        with torch.no_grad(), self._autocast():
            fake = g_bare(z)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            real_logits = self.discriminator(real).float()
            fake_logits = self.discriminator(fake).float()
        loss = discriminator_loss(real_logits, fake_logits)
        loss.backward()
        self.opt_d.step()
        return {
            "loss_d": loss.detach(),
            "d_real": torch.sigmoid(real_logits.detach()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach()).mean(),
        }

    def generator_step(self, batch_size: int) -> dict[str, torch.Tensor]:
        d_bare = unwrap(self.discriminator)
        d_bare.requires_grad_(False)
        try:
            z = self.noise(batch_size)
            self.opt_g.zero_grad(set_to_none=True)
            with self._autocast():
                fake = self.generator(z)
                logits = d_bare(fake).float()
            loss = generator_loss(logits, self.generator_loss)
            loss.backward()
            self.opt_g.step()
        finally:
            d_bare.requires_grad_(True)
        return {"loss_g": loss.detach(), "d_fake_g": torch.sigmoid(logits.detach()).mean()}

    def __call__(self, real_batches: Iterator[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One iteration: k D updates on k fresh real batches, then one G update."""
        d_metrics: dict[str, torch.Tensor] = {}
        batch_size = 0
        for _ in range(self.discriminator_steps):
            real = next(real_batches)
            batch_size = real.shape[0]
            for key, value in self.discriminator_step(real).items():
                d_metrics[key] = d_metrics.get(key, 0) + value / self.discriminator_steps
        return {**d_metrics, **self.generator_step(batch_size)}


class DataPosition:
    """Endless batches from successive epochs, and where they are: (epoch, batches consumed
    in that epoch). Saved in a checkpoint and given back to :meth:`batches`, it resumes
    exactly where the run stopped, provided ``make_epoch(epoch)`` yields the same batches
    for the same epoch (a permutation seeded by the epoch, say)."""

    def __init__(self, epoch: int = 0, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def batches(self, make_epoch: Callable[[int], Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
        skip = self.batch
        while True:
            seen = 0
            for i, batch in enumerate(make_epoch(self.epoch)):
                seen += 1
                if i < skip:
                    continue  # resume mid-epoch: the batches before the checkpoint were trained on
                self.batch = i + 1
                yield batch
            if seen == 0:
                raise ValueError("an epoch yielded no batch: the dataset (or this worker's shard) is smaller than "
                                 "one batch")
            skip = 0
            self.epoch, self.batch = self.epoch + 1, 0
