"""Pictures of glmip's results: contact sheets of pyramid levels, saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
    """Write an `HxWxC` uint8 image as PNG, creating the folder; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.squeeze(-1) if image.shape[2] == 1 else image).save(path)
    return path
