"""Pictures of glmip's results: contact sheets of pyramid levels, saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "to_display_uint8", "contact_sheet", "save_png", "level_colours", "level_legend", "heat_colours", "overlay",
]


def to_display_uint8(level: np.ndarray) -> np.ndarray:
    """An `HxWxC` level of any glmip dtype as uint8 for display (float clipped to [0, 1])."""
    if level.dtype == np.uint8:
        return level
    if level.dtype == np.uint16:
        return (level >> 8).astype(np.uint8)
    return np.floor(np.clip(level, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def contact_sheet(levels: Sequence[np.ndarray], background: int = 32) -> np.ndarray:
    """The classic mip layout: level 0 on the left, levels 1.. stacked top-down to its right.

    Returns an RGBA uint8 image of (h0 + h1-stack) height by (w0 + w1 + gap) width.
    """
    gap = 4
    shown = [_as_rgba(to_display_uint8(level)) for level in levels]
    h0, w0 = shown[0].shape[:2]
    right_w = max((s.shape[1] for s in shown[1:]), default=0)
    right_h = sum(s.shape[0] + gap for s in shown[1:])
    sheet = np.full((max(h0, right_h), w0 + (right_w + gap if len(shown) > 1 else 0), 4), background, np.uint8)
    sheet[..., 3] = 255
    sheet[:h0, :w0] = shown[0]
    y = 0
    for s in shown[1:]:
        sheet[y:y + s.shape[0], w0 + gap:w0 + gap + s.shape[1]] = s
        y += s.shape[0] + gap
    return sheet


def _as_rgba(level: np.ndarray) -> np.ndarray:
    channels = level.shape[2]
    if channels == 1:
        level = np.repeat(level, 3, axis=2)
    elif channels == 2:  # luminance + alpha
        level = np.concatenate([np.repeat(level[..., :1], 3, axis=2), level[..., 1:]], axis=2)
    if level.shape[2] == 3:
        level = np.concatenate([level, np.full(level.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return level


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an `HxWxC` image as PNG, creating the folder; returns the path.

    uint8 is written as 8-bit PNG; uint16 as 16-bit PNG (pypng: PIL writes 16 bits only for grey);
    float32 (PNG has no float) as 16-bit PNG of the values clipped to [0, 1], round(v * 65535).
    OSError (an unwritable path) is raised as ValueError naming the path."""
    from PIL import Image

    path = Path(path)
    if image.dtype == np.float32:
        image = np.floor(np.clip(image, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"save_png writes uint8, uint16 or float32 images, got {image.dtype}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if image.dtype == np.uint16:
            import png

            height, width, channels = image.shape
            mode = ("L", "LA", "RGB", "RGBA")[channels - 1] + ";16"
            with open(path, "wb") as file:
                png.from_array(np.ascontiguousarray(image).reshape(height, width * channels), mode).write(file)
        else:
            Image.fromarray(image.squeeze(-1) if image.shape[2] == 1 else image).save(path, format="PNG")
    except OSError as error:
        raise ValueError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    return path


# Distinct colours for levels 0..11 (level 0 first); fractional levels blend neighbours.
LEVEL_PALETTE = np.array([
    (230, 25, 75), (245, 130, 48), (255, 225, 25), (60, 180, 75), (70, 240, 240), (0, 130, 200),
    (145, 30, 180), (240, 50, 230), (128, 128, 128), (170, 110, 40), (255, 250, 200), (0, 0, 128),
], dtype=np.float64)


def level_colours(lod: np.ndarray) -> np.ndarray:
    """False colour of a per-pixel LOD map (h, w): each level its palette colour, blended between levels."""
    top = len(LEVEL_PALETTE) - 1
    lod = np.clip(lod.astype(np.float64), 0, top)
    lower = np.floor(lod).astype(int)
    upper = np.minimum(lower + 1, top)
    t = (lod - lower)[..., None]
    return ((1 - t) * LEVEL_PALETTE[lower] + t * LEVEL_PALETTE[upper] + 0.5).astype(np.uint8)


def level_legend(levels: int, height: int, width: int) -> np.ndarray:
    """A strip of `levels` palette swatches labelled with their level numbers, (height, width, 3)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(strip)
    swatch = width / max(1, levels)
    for level in range(levels):
        colour = tuple(int(c) for c in LEVEL_PALETTE[min(level, len(LEVEL_PALETTE) - 1)])
        draw.rectangle([int(level * swatch), 0, int((level + 1) * swatch) - 2, height], fill=colour)
        draw.text((int(level * swatch) + 3, 2), str(level), fill=(0, 0, 0))
    return np.asarray(strip)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A dark-blue -> red -> yellow colour ramp of values in [0, 1], (h, w, 3) uint8."""
    stops = np.array([(0, 0, 80), (40, 40, 200), (220, 30, 30), (255, 150, 0), (255, 255, 120)], np.float64)
    x = np.clip(values.astype(np.float64), 0, 1) * (len(stops) - 1)
    lower = np.minimum(np.floor(x).astype(int), len(stops) - 2)
    t = (x - lower)[..., None]
    return ((1 - t) * stops[lower] + t * stops[lower + 1] + 0.5).astype(np.uint8)


def _rgb_rows(display: np.ndarray, y0: int, y1: int) -> np.ndarray:
    """Rows y0..y1 of a uint8 HxWxC display image as RGB (grey repeated; alpha dropped)."""
    rows = display[y0:y1]
    return np.repeat(rows[..., :1], 3, axis=2) if rows.shape[2] < 3 else rows[..., :3]


OVERLAY_ROWS = 256  # rows blended at a time: bounds overlay's scratch memory to a strip


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """`colours` (h, w, 3) blended over a displayable copy of `image` (resized to match); (h, w, 3) uint8.

    Convention: out = (base * (256 - a) + colours * a + 128) >> 8 with a = round(alpha * 256), in
    uint16 a strip of `OVERLAY_ROWS` rows at a time, so memory beyond the result is a few strips
    (an 8192^2 image needs its 192 MiB result and ~12 MiB more); within 1 LSB of float blending.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha!r}")
    display = to_display_uint8(image)
    height, width = colours.shape[:2]
    if display.shape[:2] != (height, width):
        from PIL import Image

        rgb = _rgb_rows(display, 0, display.shape[0])
        display = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, height)))
    weight = int(round(float(alpha) * 256))
    result = np.empty((height, width, 3), np.uint8)
    for y0 in range(0, height, OVERLAY_ROWS):
        y1 = min(height, y0 + OVERLAY_ROWS)
        blend = _rgb_rows(display, y0, y1).astype(np.uint16)
        blend *= 256 - weight
        blend += colours[y0:y1, :, :3].astype(np.uint16) * np.uint16(weight)
        blend += 128
        blend >>= 8
        result[y0:y1] = blend
    return result
