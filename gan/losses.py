"""The adversarial objectives of Goodfellow et al. (2014), computed from D's logits.

D maximises  log D(x) + log(1 - D(G(z))), i.e. minimises the binary cross-entropy
with targets 1 for real and 0 for fake. G has two objectives:

- ``minimax`` (the game as written, "saturating"): minimise log(1 - D(G(z))).
  Early in training D rejects samples confidently, D(G(z)) ~ 0, where this
  objective's gradient vanishes: d/dl log(1 - sigmoid(l)) = -sigmoid(l) -> 0.
- ``non_saturating`` (the paper's practical fix, used by DCGAN): minimise
  -log D(G(z)); its gradient -(1 - sigmoid(l)) -> -1 stays strong there.

With l the logit, log D = -softplus(-l) and log(1 - D) = -softplus(l), which stay
finite for any l (a sigmoid followed by log would give -inf once D saturates).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GeneratorLoss = Literal["non_saturating", "minimax"]


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))], each term averaged over its batch."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))): the saturating objective G minimises in the minimax game."""
    return -F.softplus(fake_logits).mean()


def generator_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): the non-saturating objective."""
    return F.softplus(-fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: GeneratorLoss = "non_saturating") -> torch.Tensor:
    if kind == "non_saturating":
        return generator_loss_non_saturating(fake_logits)
    if kind == "minimax":
        return generator_loss_minimax(fake_logits)
    raise ValueError(f"generator loss must be 'non_saturating' or 'minimax', got {kind!r}")
