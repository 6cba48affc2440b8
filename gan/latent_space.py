"""The DCGAN paper's latent-space and feature experiments (Radford et al. 2015, section 6).

- Walks (6.1, Fig. 4): linear or spherical interpolation between z vectors.
- Vector arithmetic (6.3.2, Fig. 7): z vectors averaged per concept (three
  exemplars each in the paper), added and subtracted; the result is rendered with
  small uniform noise around it (+-0.25 in the paper) to show the neighbourhood.
- Forgetting to draw an object (6.3.1, Fig. 6): a logistic regression on the
  activations of the generator's second-highest convolution layer predicts whether
  a position lies inside boxes drawn around the object; the feature maps with
  positive weights are dropped (zeroed at every position) at generation time.

Everything here is plain PyTorch on a :class:`gan.models.Generator` (or any module
with the same named blocks under ``.main``); the weights are never modified - maps are
dropped by removable forward hooks.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

InterpolationMethod = Literal["slerp", "lerp"]
Box = Sequence[float]  # x0, y0, x1, y1 in pixels of the generated image


# --------------------------------------------------------------------------- z
def seeded_z(seeds: Sequence[int], latent_dim: int, truncation: float | None = None) -> torch.Tensor:
    """One z ~ N(0, I) per seed, (len(seeds), latent_dim); seed s always gives the same z,
    whichever other seeds are asked for (so "sample 12 of a sheet" is a stable name): each
    seed draws from its own generator, seeded with it.

    ``truncation`` T (> 0) draws from the normal truncated to [-T, T], as BigGAN's truncation
    trick does (Brock et al. 2018): every component with |z_i| > T is redrawn, from the
    seed's generator, until it lies inside. Components already inside are kept, so a
    truncated z differs from the seed's plain one only where the plain one was outside."""
    if len(seeds) == 0:
        raise ValueError("give at least one seed")
    if truncation is not None and not truncation > 0:
        raise ValueError(f"truncation must be > 0 (the largest |z_i| kept), got {truncation}")
    out = []
    for s in seeds:
        rng = torch.Generator().manual_seed(int(s))
        z = torch.randn(latent_dim, generator=rng)
        while truncation is not None and bool((outside := z.abs() > truncation).any()):
            z[outside] = torch.randn(int(outside.sum()), generator=rng)
        out.append(z)
    return torch.stack(out)


# ----------------------------------------------------------------------- walks
def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Linear interpolation; a scalar ``t`` gives one vector, a 1-D ``t`` a stack of them."""
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device)
    out = z0 + (z1 - z0) * t.reshape(-1, *([1] * z0.dim()))
    return out[0] if t.dim() == 0 else out


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor | float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation along the great circle from ``z0`` to ``z1`` (White, 2016).

    Unit vectors stay unit vectors; ``t=0`` gives ``z0`` and ``t=1`` gives ``z1``. A scalar
    ``t`` gives one vector, a 1-D ``t`` a stack of them. Nearly parallel endpoints (where the
    great circle is undefined numerically) fall back to linear interpolation.
    """
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device)
    scalar = t.dim() == 0
    t = t.reshape(-1, *([1] * z0.dim()))
    cos = torch.sum(z0 * z1) / (z0.norm() * z1.norm()).clamp_min(eps)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    if sin.abs() < eps:
        out = z0 + (z1 - z0) * t
    else:
        out = (torch.sin((1 - t) * omega) / sin) * z0 + (torch.sin(t * omega) / sin) * z1
    return out[0] if scalar else out


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, method: InterpolationMethod = "slerp") -> torch.Tensor:
    """``steps`` vectors from ``z0`` to ``z1`` inclusive, (steps, *z0.shape)."""
    if steps < 2:
        raise ValueError(f"a walk needs at least 2 steps (both endpoints), got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device)
    if method == "slerp":
        return slerp(z0, z1, t)
    if method == "lerp":
        return lerp(z0, z1, t)
    raise ValueError(f"method must be 'slerp' or 'lerp', got {method!r}")


def walk(keypoints: torch.Tensor, steps: int, method: InterpolationMethod = "slerp") -> torch.Tensor:
    """A path through ``keypoints`` (K, D): one segment of ``steps`` vectors per consecutive
    pair, (K-1, steps, D). Segment i ends where segment i+1 starts."""
    if keypoints.shape[0] < 2:
        raise ValueError(f"a walk needs at least 2 keypoints, got {keypoints.shape[0]}")
    return torch.stack([interpolate(a, b, steps, method) for a, b in zip(keypoints[:-1], keypoints[1:])])


# ------------------------------------------------------------ vector arithmetic
def concept_vector(exemplars: torch.Tensor) -> torch.Tensor:
    """The mean z of a concept's exemplars (K, D) -> (D,). The paper averages three: single
    samples were unstable, the average of three was not."""
    if exemplars.dim() != 2 or exemplars.shape[0] == 0:
        raise ValueError(f"exemplars must be a non-empty (K, latent_dim) tensor, got shape {tuple(exemplars.shape)}")
    return exemplars.mean(dim=0)


def arithmetic(terms: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """sum(sign * concept_vector(exemplars)) over ``terms`` of (sign, exemplars), sign +-1."""
    if not terms:
        raise ValueError("vector arithmetic needs at least one term")
    out = None
    for sign, exemplars in terms:
        if sign not in (1, -1):
            raise ValueError(f"a term's sign must be +1 or -1, got {sign}")
        v = sign * concept_vector(exemplars)
        out = v if out is None else out + v
    return out


# The paper adds U(-0.25, 0.25) noise to z ~ U(-1, 1), whose std is 1/sqrt(3); the same
# noise relative to the spread of this project's z ~ N(0, 1) is U(-0.433, 0.433).
PAPER_NOISE_SCALE = 0.25 * math.sqrt(3)


def neighbourhood(z: torch.Tensor, count: int, scale: float = PAPER_NOISE_SCALE, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z`` (D,) and ``count`` neighbours z + U(-scale, scale) noise: (count + 1, D), exact
    z first. The paper renders the arithmetic result this way (8 neighbours)."""
    noise = (torch.rand(count, *z.shape, generator=generator, dtype=z.dtype) * 2 - 1) * scale
    return torch.cat([z[None], z[None] + noise.to(z.device)])


# ------------------------------------------------------------- feature maps
def feature_block(generator: nn.Module, layer: str | None = None) -> nn.Module:
    """The block whose output maps are studied; default the second-highest conv layer
    (``generator.feature_layers[-1]``: the last hidden block before ``to_rgb``)."""
    name = layer or generator.feature_layers[-1]
    block = getattr(generator.main, name, None)
    if block is None:
        raise ValueError(f"generator has no layer {name!r}; its feature layers are {generator.feature_layers}")
    return block


@torch.no_grad()
def feature_activations(generator: nn.Module, z: torch.Tensor, layer: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations (N, C, h, w) of ``layer``, images (N, 3, R, R)) for ``z``."""
    captured: list[torch.Tensor] = []
    handle = feature_block(generator, layer).register_forward_hook(lambda m, i, out: captured.append(out.detach().clone()))
    try:
        images = generator(z)
    finally:
        handle.remove()
    return captured[0], images


def boxes_to_mask(boxes: Sequence[Box], image_size: int, feature_size: int) -> torch.Tensor:
    """Feature-map positions (feature_size, feature_size) whose centre, in image pixels,
    lies inside any of ``boxes`` ([x0, y0, x1, y1], pixel edges, x1/y1 exclusive)."""
    centres = (torch.arange(feature_size, dtype=torch.float64) + 0.5) * (image_size / feature_size)
    mask = torch.zeros(feature_size, feature_size, dtype=torch.bool)
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is [x0, y0, x1, y1] in pixels, got {list(box)}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box {list(box)} is empty: need x1 > x0 and y1 > y0")
        inside_y = (centres >= y0) & (centres < y1)
        inside_x = (centres >= x0) & (centres < x1)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def pixel_mask_to_features(mask: torch.Tensor, feature_size: int) -> torch.Tensor:
    """A pixel mask (R, R) -> feature positions (feature_size, feature_size) that are at
    least half covered."""
    m = mask.float()[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(m, feature_size)[0, 0] >= 0.5


@dataclass
class LogisticRegression:
    """p(object | features) = sigmoid(features_standardized @ weight + bias).

    Weights are per standardized feature, so their size is comparable between maps;
    standardizing divides by a positive std, so a weight's sign is the same as on the
    raw activations (the paper's criterion)."""

    weight: torch.Tensor  # (C,)
    bias: float
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    accuracy: float  # class-balanced, on the training positions

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((features - self.mean) / self.std) @ self.weight + self.bias)


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, max_iter: int = 200) -> LogisticRegression:
    """L2-regularised logistic regression by L-BFGS, positives and negatives weighted
    equally (objects cover few positions; unweighted, "never the object" would win)."""
    x = features.detach().double()
    y = labels.detach().double().flatten()
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features (M, C) and labels (M,) must match, got {tuple(x.shape)} and {tuple(y.shape)}")
    n_pos = float(y.sum())
    n_neg = float(y.numel() - n_pos)
    if n_pos == 0:
        raise ValueError("no position of the feature grid falls inside the marks: mark the object on more "
                         "images, or with larger boxes (a position counts when its centre is inside a box)")
    if n_neg == 0:
        raise ValueError("the marks cover every position: the regression needs positions outside the object too; "
                         "add images marked with [] (no object) or draw tighter boxes")
    mean = x.mean(0)
    std = x.std(0)
    # A constant map (e.g. a dead ReLU) carries no evidence: its weight stays 0.
    std = torch.where(std > 1e-12, std, torch.full_like(std, float("inf")))
    xs = (x - mean) / std
    sample_weight = torch.where(y > 0, 0.5 / n_pos, 0.5 / n_neg)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        logits = xs @ w + b
        loss = (sample_weight * nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xs @ w + b) > 0
        accuracy = float(((pred & (y > 0)).sum() / n_pos + (~pred & (y == 0)).sum() / n_neg) / 2)
    return LogisticRegression(w.detach().float(), float(b.detach()), mean.float(), std.float(), accuracy)


@dataclass
class FeatureSelection:
    layer: str
    maps: list[int]  # indices of the maps to drop, strongest weight first
    weights: list[float]  # the regression weight of every map
    threshold: float
    accuracy: float
    positives: int
    negatives: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def select_maps_from_activations(
    activations: torch.Tensor, masks: torch.Tensor, threshold: float = 0.0, l2: float = 1e-3, layer: str = ""
) -> FeatureSelection:
    """Maps whose logistic-regression weight for "inside the marked object" exceeds
    ``threshold``. ``activations`` (N, C, h, w); ``masks`` (N, h, w) bool, True inside."""
    if activations.dim() != 4 or masks.shape != (activations.shape[0], *activations.shape[2:]):
        raise ValueError(f"masks {tuple(masks.shape)} must be (N, h, w) for activations {tuple(activations.shape)}")
    features = activations.permute(0, 2, 3, 1).reshape(-1, activations.shape[1])
    labels = masks.reshape(-1)
    model = fit_logistic_regression(features, labels, l2=l2)
    order = torch.argsort(model.weight, descending=True)
    maps = [int(i) for i in order if model.weight[i] > threshold]
    positives = int(labels.sum())
    return FeatureSelection(layer, maps, model.weight.tolist(), threshold, model.accuracy, positives, labels.numel() - positives)


def select_feature_maps(
    generator: nn.Module, z: torch.Tensor, masks: torch.Tensor, threshold: float = 0.0, l2: float = 1e-3, layer: str | None = None
) -> FeatureSelection:
    """The paper's selection on ``generator``: ``masks`` (N, h, w) marks, on the feature
    grid of ``layer``, the object in the images made from ``z`` (see :func:`boxes_to_mask`)."""
    name = layer or generator.feature_layers[-1]
    activations, _ = feature_activations(generator, z, name)
    return select_maps_from_activations(activations, masks, threshold, l2, name)


@torch.no_grad()
def change_inside_marks(
    generator: nn.Module, z: torch.Tensor, masks: torch.Tensor, maps: Sequence[int], layer: str | None = None
) -> tuple[float, float]:
    """Mean |image change| from dropping ``maps``, (inside, outside) the marked positions
    (``masks`` (N, h, w) on the feature grid, scaled up to the image). A selection that
    found the object's maps changes the inside much more than the outside."""
    before = generator(z)
    with feature_maps_dropped(generator, maps, layer):
        after = generator(z)
    change = (after - before).abs().mean(1)
    inside = nn.functional.interpolate(masks[:, None].float(), size=change.shape[-2:], mode="nearest")[:, 0] > 0
    return (float(change[inside].mean()) if inside.any() else float("nan"), float(change[~inside].mean()))


def drop_feature_maps(generator: nn.Module, maps: Sequence[int], layer: str | None = None):
    """Zero ``maps`` of ``layer``'s output at every position on every forward pass, until
    the returned handle's ``remove()``. The weights are not touched."""
    block = feature_block(generator, layer)
    index = torch.as_tensor(sorted({int(m) for m in maps}), dtype=torch.long)

    def zero_maps(module, inputs, output):
        if index.numel() and int(index.max()) >= output.shape[1]:
            raise ValueError(f"map index {int(index.max())} out of range: the layer has {output.shape[1]} maps")
        return output.index_fill(1, index.to(output.device), 0.0)

    return block.register_forward_hook(zero_maps)


@contextlib.contextmanager
def feature_maps_dropped(generator: nn.Module, maps: Sequence[int], layer: str | None = None) -> Iterator[nn.Module]:
    """``with feature_maps_dropped(g, maps): g(z)`` renders without ``maps``."""
    handle = drop_feature_maps(generator, maps, layer)
    try:
        yield generator
    finally:
        handle.remove()
