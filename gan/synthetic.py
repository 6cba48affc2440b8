"""SYNTHETIC bedrooms: the project's embedded, offline dataset.

The project cannot ship LSUN, so the default data is drawn procedurally: a room in
one-point perspective (back wall, side walls, ceiling, floor), a bed against the
back wall with a headboard, pillows and a blanket, a window with sky and curtains,
a night stand with a lamp, sometimes a picture and a rug, under a soft light
falloff. Colours, sizes and positions vary; every image is a pure function of
(seed, index, resolution), so a dataset is reproducible anywhere without a file.

These are not photographs: runs on them are labelled ``synthetic-bedrooms``.
"""

from __future__ import annotations

import colorsys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DATASET_NAME = "synthetic-bedrooms"
_SUPERSAMPLE = 4  # draw large, then downsample with antialiasing


def _hsv(rng: np.random.Generator, h: tuple[float, float], s: tuple[float, float], v: tuple[float, float]):
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(*h) % 1.0, rng.uniform(*s), rng.uniform(*v))
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(color, factor: float):
    return tuple(int(max(0, min(255, c * factor))) for c in color)


def _lerp(p, q, t: float):
    return (p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t)


@dataclass
class _Room:
    """One bedroom being drawn: the canvas, its random stream and the back wall's corners."""

    rng: np.random.Generator
    img: Image.Image
    draw: ImageDraw.ImageDraw
    s: float
    bx0: float  # the back wall: corners, width and height
    by0: float
    bx1: float
    by1: float
    bw: float
    bh: float


def render_bedroom(seed: int, resolution: int = 64, index: int = 0) -> np.ndarray:
    """One synthetic bedroom as uint8 (resolution, resolution, 3).

    The parts are drawn back to front, each consuming the random stream in a fixed
    order, so (seed, index) fixes the image."""
    rng = np.random.default_rng([seed, index])
    size = resolution * _SUPERSAMPLE
    room = _walls(rng, size)
    _window(room)
    if rng.random() < 0.5:
        _picture(room)
    if rng.random() < 0.4:
        _rug(room)
    hx0, hx1, wood = _bed(room)
    if rng.random() < 0.85:
        _night_stand_with_lamp(room, hx0, hx1, wood, size)
    return _photo_finish(room, resolution)


def _walls(rng: np.random.Generator, size: int) -> _Room:
    """Back wall, side walls, ceiling and floor. The back wall's placement sets the
    perspective (the camera's position)."""
    s = float(size)
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    bw = rng.uniform(0.45, 0.7) * s
    bh = rng.uniform(0.4, 0.6) * s
    bx0 = rng.uniform(0.05 * s, s - bw - 0.05 * s)
    by0 = rng.uniform(0.12 * s, 0.32 * s)
    bx1, by1 = bx0 + bw, by0 + bh
    tl, tr, br, bl = (bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)

    wall = _hsv(rng, (0.0, 1.0), (0.05, 0.35), (0.65, 0.95))
    ceiling = _shade(wall, 1.12)
    floor_kind = rng.integers(3)
    if floor_kind == 0:  # wood
        floor = _hsv(rng, (0.05, 0.11), (0.4, 0.7), (0.35, 0.65))
    elif floor_kind == 1:  # carpet
        floor = _hsv(rng, (0.0, 1.0), (0.1, 0.4), (0.35, 0.7))
    else:  # tiles / light
        floor = _hsv(rng, (0.05, 0.15), (0.05, 0.2), (0.6, 0.85))

    draw.polygon([(0, 0), (s, 0), tr, tl], fill=ceiling)
    draw.polygon([(0, s), (s, s), br, bl], fill=floor)
    draw.polygon([(0, 0), tl, bl, (0, s)], fill=_shade(wall, 0.85))
    draw.polygon([(s, 0), tr, br, (s, s)], fill=_shade(wall, 0.78))
    draw.rectangle([tl, br], fill=wall)
    if floor_kind == 0:  # floor boards converge to the back wall
        for t in np.linspace(0.0, 1.0, 9)[1:-1]:
            draw.line([_lerp(bl, br, t), (t * s * 1.6 - 0.3 * s, s)], fill=_shade(floor, 0.8), width=_SUPERSAMPLE)
    edge = _shade(wall, 0.7)
    for p, q in ((tl, (0, 0)), (tr, (s, 0)), (bl, (0, s)), (br, (s, s))):
        draw.line([p, q], fill=edge, width=_SUPERSAMPLE)
    return _Room(rng, img, draw, s, bx0, by0, bx1, by1, bw, bh)


def _window_quad(room: _Room, on_back_wall: bool) -> list[tuple[float, float]]:
    """The window's corners: a rectangle on the back wall, or a perspective quad on a side wall."""
    rng, s = room.rng, room.s
    if on_back_wall:
        ww, wh = rng.uniform(0.2, 0.35) * room.bw, rng.uniform(0.3, 0.45) * room.bh
        wx0 = room.bx0 + rng.uniform(0.05, 0.95) * (room.bw - ww)
        wy0 = room.by0 + rng.uniform(0.08, 0.2) * room.bh
        return [(wx0, wy0), (wx0 + ww, wy0), (wx0 + ww, wy0 + wh), (wx0, wy0 + wh)]
    left = rng.random() < 0.5
    near_x, far_x = (0.0, room.bx0) if left else (s, room.bx1)
    t0, t1 = rng.uniform(0.2, 0.45), rng.uniform(0.65, 0.85)
    xa, xb = near_x + (far_x - near_x) * t0, near_x + (far_x - near_x) * t1

    def y_on_side(x, frac):  # frac 0 = ceiling edge, 1 = floor edge
        t = (x - near_x) / (far_x - near_x)
        top, bottom = t * room.by0, s + t * (room.by1 - s)
        return top + frac * (bottom - top)

    f0, f1 = rng.uniform(0.22, 0.3), rng.uniform(0.55, 0.62)
    return [(xa, y_on_side(xa, f0)), (xb, y_on_side(xb, f0)), (xb, y_on_side(xb, f1)), (xa, y_on_side(xa, f1))]


def _window(room: _Room) -> None:
    """A framed window with sky, mullions and, often, curtains."""
    rng, draw = room.rng, room.draw
    sky_top = _hsv(rng, (0.55, 0.62), (0.3, 0.7), (0.75, 1.0))
    sky_bottom = _shade(sky_top, 1.15)
    frame = (235, 235, 230) if rng.random() < 0.7 else _hsv(rng, (0.05, 0.1), (0.5, 0.8), (0.3, 0.5))
    quad = _window_quad(room, on_back_wall=rng.random() < 0.55)
    draw.polygon(quad, fill=frame)
    inner = [_lerp(quad[0], quad[2], 0.06), _lerp(quad[1], quad[3], 0.06), _lerp(quad[2], quad[0], 0.06), _lerp(quad[3], quad[1], 0.06)]
    draw.polygon(inner, fill=sky_top)
    draw.polygon([_lerp(inner[0], inner[3], 0.55), _lerp(inner[1], inner[2], 0.55), inner[2], inner[3]], fill=sky_bottom)
    mid_top, mid_bottom = _lerp(inner[0], inner[1], 0.5), _lerp(inner[3], inner[2], 0.5)
    draw.line([mid_top, mid_bottom], fill=frame, width=2 * _SUPERSAMPLE)
    draw.line([_lerp(inner[0], inner[3], 0.45), _lerp(inner[1], inner[2], 0.45)], fill=frame, width=2 * _SUPERSAMPLE)
    if rng.random() < 0.6:  # curtains
        curtain = _hsv(rng, (0.0, 1.0), (0.3, 0.7), (0.4, 0.85))
        cw = 0.22
        draw.polygon([quad[0], _lerp(quad[0], quad[1], cw), _lerp(quad[3], quad[2], cw * 0.8), quad[3]], fill=curtain)
        draw.polygon([_lerp(quad[1], quad[0], cw), quad[1], quad[2], _lerp(quad[2], quad[3], cw * 0.8)], fill=_shade(curtain, 0.9))


def _picture(room: _Room) -> None:
    """A framed picture on the back wall."""
    rng, bw, bh = room.rng, room.bw, room.bh
    pw, ph = rng.uniform(0.12, 0.22) * bw, rng.uniform(0.12, 0.2) * bh
    px0 = room.bx0 + rng.uniform(0.1, 0.9) * (bw - pw)
    py0 = room.by0 + rng.uniform(0.1, 0.25) * bh
    room.draw.rectangle([px0, py0, px0 + pw, py0 + ph], fill=(60, 45, 35))
    m = 0.12 * pw
    room.draw.rectangle([px0 + m, py0 + m, px0 + pw - m, py0 + ph - m], fill=_hsv(rng, (0.0, 1.0), (0.3, 0.8), (0.4, 0.9)))


def _rug(room: _Room) -> None:
    """A rug on the floor in front of the bed."""
    rng, s, bw = room.rng, room.s, room.bw
    rug = _hsv(rng, (0.0, 1.0), (0.3, 0.7), (0.3, 0.7))
    ry0 = room.by1 + rng.uniform(0.2, 0.35) * (s - room.by1)
    room.draw.polygon([(room.bx0 + 0.1 * bw, ry0), (room.bx1 - 0.1 * bw, ry0), (room.bx1 + 0.1 * bw, s * 0.98),
                       (room.bx0 - 0.1 * bw, s * 0.98)], fill=rug)


def _bed(room: _Room) -> tuple[float, float, tuple[int, int, int]]:
    """Headboard against the back wall, mattress coming toward the viewer, blanket and
    pillows; returns the headboard's x extent and its wood colour (the night stand matches)."""
    rng, draw, bw, bh, by1 = room.rng, room.draw, room.bw, room.bh, room.by1
    bed_w = rng.uniform(0.45, 0.75) * bw
    bed_cx = room.bx0 + rng.uniform(0.3, 0.7) * bw
    hx0, hx1 = bed_cx - bed_w / 2, bed_cx + bed_w / 2
    head_h = rng.uniform(0.25, 0.45) * bh
    wood = _hsv(rng, (0.04, 0.1), (0.3, 0.7), (0.2, 0.6))
    draw.rectangle([hx0, by1 - head_h, hx1, by1], fill=wood)
    depth = rng.uniform(0.6, 1.05)  # how far the bed reaches toward the viewer
    mattress_h = 0.12 * bh
    vp = (bed_cx, room.by0 + 0.4 * bh)

    def toward_viewer(p, t):  # move a back-wall point along the ray away from the vanishing point
        return (p[0] + (p[0] - vp[0]) * t * 1.4, p[1] + (p[1] - vp[1]) * t * 1.4)

    back_l, back_r = (hx0, by1 - mattress_h), (hx1, by1 - mattress_h)
    front_l, front_r = toward_viewer(back_l, depth), toward_viewer(back_r, depth)
    sheet = (240, 238, 232) if rng.random() < 0.6 else _hsv(rng, (0.0, 1.0), (0.05, 0.2), (0.8, 0.95))
    blanket = _hsv(rng, (0.0, 1.0), (0.35, 0.85), (0.35, 0.9))
    skirt = mattress_h * (1 + depth * 1.4) * 1.2
    draw.polygon([front_l, front_r, (front_r[0], front_r[1] + skirt), (front_l[0], front_l[1] + skirt)], fill=_shade(blanket, 0.75))
    draw.polygon([back_l, back_r, front_r, front_l], fill=sheet)
    fold = rng.uniform(0.3, 0.5)  # blanket covers the front part of the mattress
    draw.polygon([_lerp(back_l, front_l, fold), _lerp(back_r, front_r, fold), front_r, front_l], fill=blanket)
    draw.line([_lerp(back_l, front_l, fold), _lerp(back_r, front_r, fold)], fill=_shade(blanket, 1.2), width=2 * _SUPERSAMPLE)
    n_pillows = int(rng.integers(1, 3)) if bed_w < 0.5 * bw else 2
    pillow = (250, 250, 248) if rng.random() < 0.7 else _hsv(rng, (0.0, 1.0), (0.2, 0.5), (0.7, 0.95))
    pw = bed_w / n_pillows
    for i in range(n_pillows):
        a = _lerp(back_l, back_r, (i + 0.08) / n_pillows)
        b = _lerp(back_l, back_r, (i + 0.92) / n_pillows)
        a2, b2 = toward_viewer(a, depth * 0.22), toward_viewer(b, depth * 0.22)
        draw.rounded_rectangle([min(a[0], a2[0]), a[1] - 0.18 * pw, max(b[0], b2[0]), a2[1]], radius=0.15 * pw, fill=pillow, outline=_shade(pillow, 0.85), width=_SUPERSAMPLE)
    return hx0, hx1, wood


def _night_stand_with_lamp(room: _Room, hx0: float, hx1: float, wood, size: int) -> None:
    """A night stand beside the bed, with a lamp and its glow."""
    rng, draw, bw, bh, by1 = room.rng, room.draw, room.bw, room.bh, room.by1
    side = -1 if rng.random() < 0.5 else 1
    ns_w = 0.13 * bw
    ns_x0 = hx0 - ns_w * 1.15 if side < 0 else hx1 + ns_w * 0.15
    ns_h = 0.2 * bh
    draw.rectangle([ns_x0, by1 - ns_h, ns_x0 + ns_w, by1 + 0.02 * bh], fill=_shade(wood, 1.1))
    draw.line([(ns_x0, by1 - ns_h * 0.5), (ns_x0 + ns_w, by1 - ns_h * 0.5)], fill=_shade(wood, 0.7), width=_SUPERSAMPLE)
    lamp_cx = ns_x0 + ns_w / 2
    stem_top = by1 - ns_h - 0.14 * bh
    draw.line([(lamp_cx, by1 - ns_h), (lamp_cx, stem_top)], fill=(80, 70, 60), width=2 * _SUPERSAMPLE)
    shade_col = _hsv(rng, (0.08, 0.15), (0.2, 0.6), (0.85, 1.0))
    sw = 0.1 * bw
    draw.polygon([(lamp_cx - sw * 0.35, stem_top - 0.1 * bh), (lamp_cx + sw * 0.35, stem_top - 0.1 * bh), (lamp_cx + sw * 0.6, stem_top), (lamp_cx - sw * 0.6, stem_top)], fill=shade_col)
    glow = Image.new("L", (size, size), 0)
    ImageDraw.Draw(glow).ellipse([lamp_cx - sw * 1.6, stem_top - 0.25 * bh, lamp_cx + sw * 1.6, stem_top + 0.15 * bh], fill=90)
    glow = glow.filter(ImageFilter.GaussianBlur(sw * 0.6))
    room.img = Image.composite(Image.new("RGB", (size, size), (255, 240, 200)), room.img, glow)


def _photo_finish(room: _Room, resolution: int) -> np.ndarray:
    """Downsample, then light falloff (brighter near the window / centre) and a little
    noise, like a photo."""
    rng = room.rng
    arr = np.asarray(room.img.resize((resolution, resolution), Image.LANCZOS), dtype=np.float32)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    lx, ly = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.5)
    light = 1.1 - 0.45 * np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) * rng.uniform(0.6, 1.2)
    arr = arr * light[..., None] * rng.uniform(0.8, 1.1)
    arr += rng.normal(0.0, 2.0, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _render_range(args):
    seed, resolution, start, stop = args
    return np.stack([render_bedroom(seed, resolution, i) for i in range(start, stop)])


def synthetic_bedrooms(count: int, resolution: int = 64, seed: int = 0, workers: int = 1) -> np.ndarray:
    """``count`` synthetic bedrooms as uint8 (count, resolution, resolution, 3)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    chunk = 256
    ranges = [(seed, resolution, i, min(i + chunk, count)) for i in range(0, count, chunk)]
    if workers > 1 and len(ranges) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_range, ranges))
    else:
        parts = [_render_range(r) for r in ranges]
    return np.concatenate(parts)
