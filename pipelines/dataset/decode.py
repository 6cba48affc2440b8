"""One encoded image -> the square RGB pixels the dataset stores (PIL only).

decode -> EXIF orientation -> RGB -> centre square -> antialiased resize. The resize
is Pillow's BILINEAR, which widens its support with the scale factor (so it
antialiases when shrinking): the filter torchvision's ``Resize`` applies in the
DCGAN reference pipeline (pytorch/examples dcgan: Resize + CenterCrop). The whole
image is decoded (no JPEG draft mode) so that equal decoded pixels give equal
output pixels whatever the codec: exact-duplicate detection relies on that.

Conversions, each chosen so a real photo is never thrown away for its encoding:
grayscale, palette and CMYK become RGB; 16-bit images are scaled to 8 bits (Pillow's
own conversion would clip them to white); transparency is flattened onto white.
What cannot be used raises :class:`UnreadableImage` with the reason the manifest lists.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class UnreadableImage(ValueError):
    """A source file that holds no usable image; ``str(e)`` is the reason."""


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # 16-bit samples span 0..65535; mode "I" here comes from 16-bit PNGs.
        scaled = (np.asarray(im, dtype=np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = ((arr - lo) * (255.0 / (hi - lo or 1.0))).round().astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def square_resize(im: Image.Image, resolution: int) -> np.ndarray:
    """RGB image -> its centre square resized to uint8 (resolution, resolution, 3); no upscaling."""
    width, height = im.size
    side = min(width, height)
    if side < resolution:
        raise UnreadableImage(
            f"too small: {width}x{height}; the shorter side must be at least {resolution} px (no upscaling)"
        )
    left, top = (width - side) // 2, (height - side) // 2
    # Crop first: resize(box=...) would let the filter reach past the square's edges.
    square = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(square, dtype=np.uint8)


def decode_square(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> uint8 (resolution, resolution, 3); raises UnreadableImage."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC warnings say nothing about usability
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                im = to_rgb(ImageOps.exif_transpose(opened))
    except UnidentifiedImageError:
        raise UnreadableImage(f"not an image: no known image format in {len(data)} bytes") from None
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableImage(f"cannot decode ({type(e).__name__}: {e})") from None
    return square_resize(im, resolution)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)
