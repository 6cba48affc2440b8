"""Figures for people: labelled image panels, operators between them, tiles.

What ``dcgan latent`` draws (walk sheets, vector arithmetic, before/after forgetting),
kept apart from the commands so the commands read as experiments.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gan.images import grid


def upscaled(array: np.ndarray, factor: int) -> Image.Image:
    img = Image.fromarray(array)
    return img if factor == 1 else img.resize((img.width * factor, img.height * factor), Image.NEAREST)


def font(size: int):
    return ImageFont.load_default(size=size)


def label(img: Image.Image, text: str, xy=(2, 1), size: int = 12) -> Image.Image:
    draw = ImageDraw.Draw(img)
    box = draw.textbbox(xy, text, font=font(size))
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font(size))
    return img


def hstack(panels: Sequence[Image.Image], separators: Sequence[str], gap: int = 28) -> Image.Image:
    """Panels side by side, vertically centred, with a symbol in each gap."""
    height = max(p.height for p in panels)
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, p in enumerate(panels):
        canvas.paste(p, (x, (height - p.height) // 2))
        x += p.width
        if i < len(separators):
            draw_operator(draw, separators[i], (x + gap // 2, height // 2), gap)
            x += gap
    return canvas


def draw_operator(draw: ImageDraw.ImageDraw, op: str, centre: tuple[int, int], gap: int) -> None:
    """+, - or = as bars (fonts' glyphs are too thin at these sizes)."""
    cx, cy = centre
    half, t = max(3, gap // 4), max(1, gap // 14)
    bars = {"-": [(0, 0)], "+": [(0, 0)], "=": [(0, -2 * t), (0, 2 * t)]}[op]
    for dx, dy in bars:
        draw.rectangle([cx - half + dx, cy + dy - t, cx + half + dx, cy + dy + t], fill=(255, 255, 255))
    if op == "+":
        draw.rectangle([cx - t, cy - half, cx + t, cy + half], fill=(255, 255, 255))


def vstack(panels: Sequence[Image.Image], gap: int = 6) -> Image.Image:
    width = max(p.width for p in panels)
    canvas = Image.new("RGB", (width, sum(p.height for p in panels) + gap * (len(panels) - 1)), (0, 0, 0))
    y = 0
    for p in panels:
        canvas.paste(p, ((width - p.width) // 2, y))
        y += p.height + gap
    return canvas


def grid_cells(images: torch.Tensor) -> list[np.ndarray]:
    return [grid(images[i:i + 1], 1, padding=0) for i in range(len(images))]


def marked_overlay(images: torch.Tensor, boxes_of, masks: torch.Tensor, ids: Sequence[int], factor: int) -> list[Image.Image]:
    """The marked images with their boxes drawn in red (or, for masks, tinted red)."""
    out = []
    for k, (i, cell) in enumerate(zip(ids, grid_cells(images))):
        img = upscaled(cell, factor)
        if boxes_of is not None:
            for b in boxes_of(i):
                ImageDraw.Draw(img).rectangle([b[0] * factor, b[1] * factor, b[2] * factor - 1, b[3] * factor - 1], outline=(255, 0, 0), width=max(1, factor // 2))
        else:
            alpha = Image.fromarray(masks[k].numpy().astype(np.uint8) * 90).resize(img.size, Image.NEAREST)
            img = Image.composite(Image.new("RGB", img.size, (255, 0, 0)), img, alpha)
        out.append(img)
    return out


def tile(cells: Sequence[Image.Image], nrow: int, padding: int = 2) -> Image.Image:
    w, h = cells[0].size
    rows = (len(cells) + nrow - 1) // nrow
    canvas = Image.new("RGB", (nrow * (w + padding) + padding, rows * (h + padding) + padding), (0, 0, 0))
    for k, c in enumerate(cells):
        canvas.paste(c, (padding + (k % nrow) * (w + padding), padding + (k // nrow) * (h + padding)))
    return canvas
