"""Choices that depend on the device, made in one place from measurements.

On GPUs: bf16 autocast, channels_last, fused Adam. On CPUs each was measured with
``benchmarks/train_step.py`` and is kept only where it measured faster.
"""

from __future__ import annotations

import torch

# CPU choices, from benchmarks/train_step.py (its output and the README's table give the figures).
CPU_CHANNELS_LAST = True  # measured faster at 64x64 batch 64, 2 threads
CPU_FUSED_ADAM = False  # measured no gain over foreach Adam


def step_options(device: torch.device, mixed_precision: str = "auto", channels_last: str = "auto") -> dict:
    """Autocast dtype, memory format and optimizer flavour for the training step."""
    gpu = device.type == "cuda"
    if mixed_precision == "bf16":
        autocast = torch.bfloat16
    elif mixed_precision == "off":
        autocast = None
    else:
        autocast = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else None
    if channels_last == "on":
        cl = True
    elif channels_last == "off":
        cl = False
    else:
        cl = True if gpu else CPU_CHANNELS_LAST
    return {"autocast_dtype": autocast, "channels_last": cl, "fused_adam": True if gpu else (CPU_FUSED_ADAM or None)}
