"""Relevance maps: where in the image detail matters, as float32 (h, w) in [0, 1].

Convention: row 0 is the image's top; any resolution (consumers sample it by uv).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_relevance(relevance: Any) -> np.ndarray:
    """A validated relevance map: numpy/torch (h, w) or (h, w, 1), finite, non-empty.

    Values already in [0, 1] are kept as they are (a map that is low everywhere stays low);
    anything outside is rescaled linearly so that its min is 0 and its max 1.
    """
    if hasattr(relevance, "detach"):
        relevance = relevance.detach().cpu().numpy()
    if not isinstance(relevance, np.ndarray):
        raise TypeError(f"a relevance map must be a numpy array or torch tensor, got {type(relevance).__name__}")
    array = relevance[..., 0] if relevance.ndim == 3 and relevance.shape[2] == 1 else relevance
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a relevance map must be a non-empty (h, w) array, got shape {relevance.shape}")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"a relevance map must hold numbers, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("the relevance map holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    return np.ascontiguousarray(array)


def gaze(size: tuple[int, int], point: tuple[float, float], radius: float = 0.12) -> np.ndarray:
    """A foveal relevance map of `size` = (width, height): 1 at the gaze `point` (uv in [0, 1]^2,
    (0, 0) top-left), falling off as a Gaussian of sigma `radius` x the image's larger side."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive (width, height), got {size}")
    x, y = point
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"the gaze point is uv in [0, 1]^2, got {point}")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    sigma = radius * max(width, height)
    cols = (np.arange(width) + 0.5) - x * width
    rows = (np.arange(height) + 0.5) - y * height
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2
    return np.exp(-0.5 * d2 / sigma**2).astype(np.float32)
