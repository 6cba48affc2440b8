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

Recipe options beyond the paper (all off by default): ``discriminator_loss="hinge"`` and
``generator_loss="hinge"`` (gan.losses); ``augment``, a DiffAugment policy such as
``"color,translation,cutout"`` (gan.augment), applied to the real and the fake images in
D's update and to the fakes in G's update, which G's gradients flow through; ``hflip``,
real images mirrored at random before augmentation. Their random draws come from
``noise_generator``, like z's, so an iteration's transforms are a function of that
generator's state (the training loop reseeds it from (seed, rank, iteration)).

Metrics come back as detached tensors; call ``.item()`` only when logging, so a
GPU step never waits on a host sync.

Speed options for GPUs (all off by default, so the CPU step is unchanged):

- ``autocast_dtype=torch.bfloat16`` and ``channels_last=True`` (tensor cores, NHWC convs);
- ``make_optimizers(..., fused="auto")``: one fused Adam kernel per network on CUDA;
- ``compile="auto"|"on"|"off"``: ``torch.compile`` of G's and D's forwards (and so their
  backwards), with ``cuda_graphs=True`` for mode ``reduce-overhead`` (CUDA graphs: one
  launch per graph instead of one per kernel). The compiled callables are private to
  the step; ``self.generator`` / ``self.discriminator`` stay the modules given, so
  ``state_dict()`` has no ``_orig_mod.`` prefix, DDP sees its own wrapper, and forward
  hooks (``gan.latent_space.drop_feature_maps``) work on ``unwrap(step.generator)`` called
  eagerly. (Dynamo does not guard on hooks: a hook registered after compiling would be
  ignored by the compiled code, so hooks belong on the eager module.)
- :meth:`AdversarialStep.warm_up` runs the compile (and CUDA-graph recording) before
  training and restores every weight, optimizer and RNG state afterwards, so warm-up
  time stays out of throughput figures and the run is the same as without it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from gan.augment import diff_augment, parse_policy, random_hflip
from gan.images import normalize
from gan.losses import (DISCRIMINATOR_LOSSES, GENERATOR_LOSSES, DiscriminatorLoss, GeneratorLoss, discriminator_loss,
                        generator_loss)

CompileSetting = Literal["auto", "on", "off"]


def unwrap(module: nn.Module) -> nn.Module:
    """The bare network inside a DDP (or similar) wrapper and/or a ``torch.compile`` wrapper.

    Save and load checkpoints, and register hooks, on this module: a compiled module's
    own ``state_dict`` prefixes every key with ``_orig_mod.``.
    """
    while True:
        if hasattr(module, "_orig_mod"):  # torch.compile's OptimizedModule
            module = module._orig_mod
        elif isinstance(getattr(module, "module", None), nn.Module):  # DDP and friends
            module = module.module
        else:
            return module


def compile_enabled(setting: CompileSetting, device: torch.device) -> bool:
    """``auto`` compiles on CUDA only: on the 2-core CPU machine compile gained nothing
    (README, benchmarks/train_step.py) and needs a C++ toolchain."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off', got {setting!r}")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def make_optimizers(
    generator: nn.Module,
    discriminator: nn.Module,
    lr_g: float = 2e-4,
    lr_d: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    fused: bool | None | Literal["auto"] = None,
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam with the DCGAN paper's settings (lr 2e-4, beta1 0.5), one per network.

    ``fused``: None is PyTorch's default (foreach); ``"auto"`` fuses where it pays, on
    CUDA parameters (on CPUs fused measured no faster, see pipelines/training/hardware.py).
    """
    if fused == "auto":
        fused = True if next(generator.parameters()).device.type == "cuda" else None
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
    discriminator_loss: DiscriminatorLoss = "cross_entropy"
    augment: str | tuple[str, ...] = ""  # DiffAugment policy, e.g. "color,translation,cutout"; "": none
    hflip: bool = False  # mirror real images left-right at random (p = 0.5)
    autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 on GPUs
    channels_last: bool = False
    noise_generator: torch.Generator | None = None
    compile: CompileSetting = "off"  # torch.compile G's and D's forwards ("auto": on CUDA)
    cuda_graphs: bool = False  # with compile: mode "reduce-overhead" (CUDA graphs)
    compile_mode: str | None = None  # overrides the mode cuda_graphs picks, e.g. "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"  # tests on CPUs use "aot_eager": dynamo + autograd, no codegen
    _device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        if self.discriminator_steps < 1:
            raise ValueError(f"discriminator_steps (k) must be >= 1, got {self.discriminator_steps}")
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {GENERATOR_LOSSES}, got {self.generator_loss!r}")
        if self.discriminator_loss not in DISCRIMINATOR_LOSSES:
            raise ValueError(f"discriminator_loss must be one of {DISCRIMINATOR_LOSSES}, got {self.discriminator_loss!r}")
        self.augment = ",".join(parse_policy(self.augment))
        self._device = next(unwrap(self.generator).parameters()).device
        self.compiled = compile_enabled(self.compile, self._device)
        if self.cuda_graphs and self.compiled and self._device.type != "cuda":
            raise ValueError("cuda_graphs needs a CUDA device")
        g_bare, d_bare = unwrap(self.generator), unwrap(self.discriminator)
        # Four call sites, each its own callable: the wrapped networks for the update
        # of their own weights (DDP's gradient hooks), the bare ones for the other
        # network's update (no DDP hooks, no all-reduce). Compiling the DDP wrapper
        # (not the inner module) lets dynamo split graphs at DDP's bucket boundaries.
        self._g_update, self._g_fakes = self._maybe_compiled(self.generator), self._maybe_compiled(g_bare)
        self._d_update, self._d_frozen = self._maybe_compiled(self.discriminator), self._maybe_compiled(d_bare)

    def _maybe_compiled(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.compiled:
            return module
        mode = self.compile_mode or ("reduce-overhead" if self.cuda_graphs else None)
        return torch.compile(module, mode=mode, backend=self.compile_backend)

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, 1, 1, device=self._device, generator=self.noise_generator)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self.autocast_dtype)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self._device, non_blocking=True)
        if x.dtype == torch.uint8:  # from gan.feed: pixels become floats here, on the device
            x = normalize(x)
        return self._layout(x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as D sees it: through the DiffAugment policy (if any), differentiably."""
        if not self.augment:
            return x
        return self._layout(diff_augment(x, self.augment, self.noise_generator))

    def discriminator_step(self, real: torch.Tensor, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D update on ``real`` and G(z) (z: fresh noise unless given)."""
        real = self._prepare(real)
        z = self.noise(real.shape[0]) if z is None else z.to(self._device)
        with torch.no_grad(), self._autocast():
            fake = self._g_fakes(z)
            if self.hflip:
                real = self._layout(random_hflip(real, self.noise_generator))
            real, fake = self._augmented(real), self._augmented(fake)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            real_logits = self._d_update(real).float()
            fake_logits = self._d_update(fake).float()
        loss = discriminator_loss(real_logits, fake_logits, self.discriminator_loss)
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
                fake = self._augmented(self._g_update(z))  # G's gradients flow through the augmentation
                logits = self._d_frozen(fake).float()
            loss = generator_loss(logits, self.generator_loss)
            loss.backward()
            self.opt_g.step()
        finally:
            d_bare.requires_grad_(True)
        return {"loss_g": loss.detach(), "d_fake_g": torch.sigmoid(logits.detach()).mean()}

    def __call__(self, real_batches: Iterator[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One iteration: k D updates on k fresh real batches, then one G update."""
        if self.compiled and self.cuda_graphs:
            # CUDA graphs reuse their output memory from one iteration to the next; say
            # where an iteration starts rather than rely on the heuristic (a new one at a
            # compiled call with no backward pending). Metrics returned are fresh tensors.
            torch.compiler.cudagraph_mark_step_begin()
        d_metrics: dict[str, torch.Tensor] = {}
        batch_size = 0
        for _ in range(self.discriminator_steps):
            real = next(real_batches)
            batch_size = real.shape[0]
            for key, value in self.discriminator_step(real).items():
                d_metrics[key] = d_metrics.get(key, 0) + value / self.discriminator_steps
        return {**d_metrics, **self.generator_step(batch_size)}

    def warm_up(self, real: torch.Tensor, iterations: int | None = None) -> float:
        """Run ``iterations`` steps on ``real`` to compile (and record CUDA graphs), then
        put weights, batch-norm statistics, optimizer states and RNGs back as they were.

        Returns the seconds it took (device synchronised). Training after a warm-up is
        the same as training without one; only compiled code and caches stay behind.
        Default iterations: 3 with CUDA graphs (warm-up run, recording, first replay),
        else 2 (the first compiles; the second checks nothing recompiles).
        """
        iterations = iterations or (3 if self.cuda_graphs else 2)
        nets = [unwrap(self.generator), unwrap(self.discriminator)]
        saved_nets = [copy.deepcopy(net.state_dict()) for net in nets]
        saved_opts = [copy.deepcopy(opt.state_dict()) for opt in (self.opt_g, self.opt_d)]
        saved_noise = self.noise_generator.get_state() if self.noise_generator is not None else None
        cuda_devices = [self._device] if self._device.type == "cuda" else []
        start = time.perf_counter()
        with torch.random.fork_rng(devices=cuda_devices):
            for _ in range(iterations):
                metrics = self(iter([real] * self.discriminator_steps))
            for value in metrics.values():
                value.float().sum().item()  # waits for the device
        seconds = time.perf_counter() - start
        with torch.no_grad():
            # load_state_dict copies into the existing tensors: compiled graphs and
            # CUDA graphs keep pointing at the same parameter memory.
            for net, state in zip(nets, saved_nets):
                net.load_state_dict(state)
        for opt, state in zip((self.opt_g, self.opt_d), saved_opts):
            opt.load_state_dict(state)
            opt.zero_grad(set_to_none=True)
        if saved_noise is not None:
            self.noise_generator.set_state(saved_noise)
        return seconds


class DataPosition:
    """Endless batches from successive epochs, and where they are: (epoch, batches consumed
    in that epoch). Saved in a checkpoint and given back, it resumes exactly where the run
    stopped, provided ``make_epoch(epoch, start)`` yields the same batches for the same
    epoch, from batch ``start`` on (a permutation seeded by the epoch, say:
    :meth:`gan.feed.DeviceImageFeed.epoch_batches`)."""

    def __init__(self, epoch: int = 0, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def batches(self, make_epoch: Callable[[int, int], Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
        while True:
            start = self.batch
            for batch in make_epoch(self.epoch, start):
                self.batch += 1
                yield batch
            if start == 0 and self.batch == 0:  # (a resume at an epoch's end legitimately yields none)
                raise ValueError("an epoch yielded no batch: the dataset (or this worker's shard) is smaller than "
                                 "one batch")
            self.epoch, self.batch = self.epoch + 1, 0
