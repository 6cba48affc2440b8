"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) and random horizontal flips.

DiffAugment transforms every image D sees - real and fake in D's update, fake in G's
update - with the same family of random, differentiable transforms, so D cannot tell
real from fake by the augmentation and G learns through it (gradients flow back
through every transform). The policies are those of the reference implementation
(mit-han-lab/data-efficient-gans, ``DiffAugment_pytorch.py``), applied in the order
given, each with a fresh draw per image:

- ``color``: brightness + U(-0.5, 0.5), then saturation x U(0, 2) about the pixel's
  channel mean, then contrast x U(0.5, 1.5) about the image's mean;
- ``translation``: a shift of up to 1/8 of the side in each direction, zeros shifted in;
- ``cutout``: a square of half the side, centred anywhere, set to zero.

Images are (N, C, H, W) in [-1, 1], on any device; every draw comes from ``generator``
(a ``torch.Generator`` on the images' device, or None for the global one), so the same
generator state gives the same transforms. No per-image Python loop: each transform
is a handful of batched tensor ops.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U(0, 1) per image, shaped to broadcast over (C, H, W), in x's dtype."""
    u = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=generator)
    return u.to(x.dtype)


def brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + (_uniform(x, generator) - 0.5)


def saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * (_uniform(x, generator) * 2) + grey


def contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None = None,
                ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Each image shifted by (dy, dx), |dy| <= ratio * H, |dx| <= ratio * W; zeros fill in."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1), device=x.device, generator=generator)
    # Read from a copy padded by one zero pixel: indices past the edge clamp onto the padding.
    rows = (torch.arange(h, device=x.device) + dy + 1).clamp(0, h + 1)  # (n, h)
    cols = (torch.arange(w, device=x.device) + dx + 1).clamp(0, w + 1)  # (n, w)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (n, h+2, w+2, c)
    images = torch.arange(n, device=x.device)[:, None, None]
    return padded[images, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """A (ratio * H) x (ratio * W) square of each image set to 0, centred anywhere (clipped at the edges)."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_y % 2), (n, 1), device=x.device, generator=generator) - size_y // 2
    left = torch.randint(0, w + (1 - size_x % 2), (n, 1), device=x.device, generator=generator) - size_x // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= top) & (ys < top + size_y)  # (n, h)
    in_cols = (xs >= left) & (xs < left + size_x)  # (n, w)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


AUGMENT_POLICIES: dict[str, tuple[Callable[..., torch.Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """'color,translation' (or a list of names; '' or None: no augmentation) -> names, in order.

    Unknown names raise ValueError naming the allowed ones."""
    if policy is None:
        return ()
    if isinstance(policy, str):
        names = policy.split(",")
    elif isinstance(policy, (list, tuple)):
        names = list(policy)
    else:
        raise ValueError(f"augmentation must be a comma-separated string or a list of policy names "
                         f"({', '.join(AUGMENT_POLICIES)}), got {policy!r}")
    names = [str(name).strip() for name in names if str(name).strip()]
    unknown = [name for name in names if name not in AUGMENT_POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))}: use a comma-separated list of "
                         f"{', '.join(AUGMENT_POLICIES)}, or '' for none")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation {','.join(names)!r} names a policy twice")
    return tuple(names)


def diff_augment(x: torch.Tensor, policy: str | Sequence[str] | None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` through every transform of ``policy``, in order; differentiable in ``x``."""
    names = parse_policy(policy)
    for name in names:
        for transform in AUGMENT_POLICIES[name]:
            x = transform(x, generator)
    return x.contiguous() if names else x


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Each image mirrored left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=generator) < p
    return torch.where(flip, x.flip(3), x)
