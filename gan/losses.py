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

The hinge loss (Lim & Ye 2017; Miyato et al. 2018, with spectral norm) is the other
pair: D minimises mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))) on the logits, and G
(``hinge``) minimises -mean(D(G(z))). Either D loss goes with any G loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GeneratorLoss = Literal["non_saturating", "minimax", "hinge"]
DiscriminatorLoss = Literal["cross_entropy", "hinge"]
GENERATOR_LOSSES = ("non_saturating", "minimax", "hinge")
DISCRIMINATOR_LOSSES = ("cross_entropy", "hinge")


def discriminator_loss_cross_entropy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))], each term averaged over its batch."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def discriminator_loss_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), D(.) the logits."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       kind: DiscriminatorLoss = "cross_entropy") -> torch.Tensor:
    """D's loss of the given kind; the default is the paper's cross-entropy."""
    if kind == "cross_entropy":
        return discriminator_loss_cross_entropy(real_logits, fake_logits)
    if kind == "hinge":
        return discriminator_loss_hinge(real_logits, fake_logits)
    raise ValueError(f"discriminator loss must be one of {DISCRIMINATOR_LOSSES}, got {kind!r}")


def generator_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))): the saturating objective G minimises in the minimax game."""
    return -F.softplus(fake_logits).mean()


def generator_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): the non-saturating objective."""
    return F.softplus(-fake_logits).mean()


def generator_loss_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(D(G(z))) on the logits: G's side of the hinge loss."""
    return -fake_logits.mean()


def generator_loss(fake_logits: torch.Tensor, kind: GeneratorLoss = "non_saturating") -> torch.Tensor:
    if kind == "non_saturating":
        return generator_loss_non_saturating(fake_logits)
    if kind == "minimax":
        return generator_loss_minimax(fake_logits)
    if kind == "hinge":
        return generator_loss_hinge(fake_logits)
    raise ValueError(f"generator loss must be one of {GENERATOR_LOSSES}, got {kind!r}")
