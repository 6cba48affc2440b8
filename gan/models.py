"""The DCGAN generator and discriminator (Radford, Metz, Chintala 2015, section 3).

Architecture guidelines from the paper, all followed here:
- no pooling: strided convolutions in D, fractionally-strided (transposed) ones in G;
- batch norm in both networks, except G's output layer and D's input layer;
- no hidden fully-connected layers: z is projected to a 4x4 map by a transposed
  convolution on a 1x1 input (a linear projection + reshape), D ends in one 4x4 conv;
- ReLU in G with tanh at the output, LeakyReLU(0.2) in D;
- weights ~ N(0, 0.02), batch-norm scale ~ N(1, 0.02), biases 0.

With no arguments both classes are the paper's 64x64 networks with the widths of
the reference implementation (pytorch/examples dcgan: nz=100, ngf=ndf=64), whose
parameter counts are 3,576,704 (G) and 2,765,568 (D). The paper's figure draws the
projection as 4x4x1024, which is ``g_width=128``.

The discriminator returns logits (no sigmoid): the losses in ``gan.losses`` work on
logits so they stay finite when D saturates.

D's normalisation is a choice (``Discriminator(norm=...)``): ``batch`` is the paper's;
``spectral`` (Miyato et al. 2018) divides every conv's weight, the logit layer's
included, by its largest singular value (one power iteration per forward in training
mode) and uses no batch norm; ``none`` uses neither. Without batch norm the hidden
convs get a bias: batch norm's shift is gone.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

SUPPORTED_RESOLUTIONS = (32, 64, 128)
DISCRIMINATOR_NORMS = ("batch", "spectral", "none")
# Power iterations that re-estimate a spectral norm's singular vectors after the weight it
# normalises is re-initialised (as many as spectral_norm does when it is applied).
SPECTRAL_NORM_INIT_ITERATIONS = 15


def _num_upsamplings(resolution: int) -> int:
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    return int(math.log2(resolution)) - 2  # 4x4 -> resolution, doubling each layer


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) for convolutions, N(1, 0.02) scale and 0 shift for batch norm.

    A parametrized conv (spectral norm) has its stored weight (``original``) initialised;
    ``m.weight`` there is computed on each access, so writing into it would change nothing.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if parametrize.is_parametrized(m, "weight"):
                _init_parametrized_weight(m)
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def _init_parametrized_weight(conv: nn.Module) -> None:
    """N(0, 0.02) into the stored weight, then spectral norm's singular vectors re-estimated
    for it (they were estimated for the weight it replaced)."""
    weight = conv.parametrizations.weight
    nn.init.normal_(weight.original, 0.0, 0.02)
    for p in weight:
        if hasattr(p, "_power_method"):  # torch's SpectralNorm (a private method, hence the check)
            p._power_method(p._reshape_weight_to_matrix(weight.original), SPECTRAL_NORM_INIT_ITERATIONS)


class Generator(nn.Module):
    """z (N, latent_dim) or (N, latent_dim, 1, 1) -> image (N, channels, R, R) in [-1, 1].

    Layers are named so hooks can find them: ``project`` (z -> 4x4), ``up1`` ...
    ``up{n-1}`` (each doubles the size and halves the width) and ``to_rgb``.
    """

    def __init__(self, resolution: int = 64, latent_dim: int = 100, width: int = 64, channels: int = 3):
        super().__init__()
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.width = width
        self.channels = channels
        n_up = _num_upsamplings(resolution)
        # Width at 4x4 is width * 2^(n_up-1): 8*width at 64x64, as in the paper.
        mult = 2 ** (n_up - 1)
        layers: list[tuple[str, nn.Module]] = [
            (
                "project",
                nn.Sequential(
                    nn.ConvTranspose2d(latent_dim, width * mult, 4, 1, 0, bias=False),
                    nn.BatchNorm2d(width * mult),
                    nn.ReLU(inplace=True),
                ),
            )
        ]
        for i in range(1, n_up):
            layers.append(
                (
                    f"up{i}",
                    nn.Sequential(
                        nn.ConvTranspose2d(width * mult, width * mult // 2, 4, 2, 1, bias=False),
                        nn.BatchNorm2d(width * mult // 2),
                        nn.ReLU(inplace=True),
                    ),
                )
            )
            mult //= 2
        layers.append(
            ("to_rgb", nn.Sequential(nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()))
        )
        self.main = nn.Sequential(OrderedDict(layers))
        init_dcgan_weights(self)

    @property
    def feature_layers(self) -> list[str]:
        """Names of the hidden blocks, lowest first; ``[-1]`` is the second-highest conv layer."""
        return [name for name, _ in self.main.named_children() if name != "to_rgb"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    """image (N, channels, R, R) -> logit (N,). Positive means "real".

    ``norm``: ``batch`` (the paper), ``spectral`` or ``none`` (see the module's docstring).
    Blocks are named ``from_rgb``, ``down1`` ... ``down{n-1}`` and ``logit`` whatever the norm.
    """

    def __init__(self, resolution: int = 64, width: int = 64, channels: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"discriminator norm must be one of {DISCRIMINATOR_NORMS}, got {norm!r}")
        self.resolution = resolution
        self.width = width
        self.channels = channels
        self.norm = norm
        n_down = _num_upsamplings(resolution)
        layers: list[tuple[str, nn.Module]] = [
            # No batch norm on the input layer (the paper: it caused sample oscillation).
            ("from_rgb", nn.Sequential(self._conv(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)))
        ]
        mult = 1
        for i in range(1, n_down):
            out = width * mult * 2
            block = [self._conv(width * mult, out, 4, 2, 1, bias=norm != "batch")]
            if norm == "batch":
                block.append(nn.BatchNorm2d(out))
            layers.append((f"down{i}", nn.Sequential(*block, nn.LeakyReLU(0.2, inplace=True))))
            mult *= 2
        layers.append(("logit", self._conv(width * mult, 1, 4, 1, 0)))
        self.main = nn.Sequential(OrderedDict(layers))
        init_dcgan_weights(self)

    def _conv(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, bias: bool = False) -> nn.Module:
        conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias)
        return spectral_norm(conv) if self.norm == "spectral" else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
