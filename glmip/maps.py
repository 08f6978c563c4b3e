"""Relevance maps and LOD maps: their validation and the curve from one to the other.

A relevance map says where detail matters (float32 (h, w) in [0, 1]); a LOD map says which mip
level each pixel is drawn from (float32 (h, w), fractional). Both may have any resolution: the
consumers sample them by uv.

Convention:
    row 0 is the image's top; relevance 1 means full detail (level `min_level`), 0 the coarsest
    level (`max_level`).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["as_relevance", "rescale_to_unit", "lod_map", "as_lod_map", "default_max_level"]


def default_max_level(levels: int) -> int:
    """The coarsest level relevance sends the periphery to by default, for a pyramid of `levels`
    levels: 5 (1/32 scale) or its last level."""
    return min(5, levels - 1)


def _host_array(values: Any, what: str) -> Any:
    """A torch tensor as numpy (a meta tensor refused: it holds no data); anything else as given."""
    if hasattr(values, "detach"):
        if getattr(getattr(values, "device", None), "type", None) == "meta":
            raise TypeError(f"{what} is a meta tensor, which holds no data; pass a CPU or CUDA tensor")
        return values.detach().cpu().numpy()
    return values


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def rescale_to_unit(values: np.ndarray) -> np.ndarray:
    """`values` mapped linearly so that their min is 0 and their max 1; a constant map gives zeros."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def as_relevance(relevance: Any) -> np.ndarray:
    """A validated relevance map: numpy/torch (h, w) or (h, w, 1), finite, non-empty.

    Values already in [0, 1] are kept as they are (a map that is low everywhere stays low);
    anything outside is rescaled linearly so that its min is 0 and its max 1.
    """
    relevance = _host_array(relevance, "a relevance map")
    if not isinstance(relevance, np.ndarray):
        raise TypeError(f"a relevance map must be a numpy array or torch tensor, got {type(relevance).__name__}")
    array = relevance[..., 0] if relevance.ndim == 3 and relevance.shape[2] == 1 else relevance
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a relevance map must be a non-empty (h, w) array, got shape {relevance.shape}")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"a relevance map must hold numbers, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("the relevance map holds NaN or infinite values")
    if float(array.min()) < 0.0 or float(array.max()) > 1.0:
        array = rescale_to_unit(array)
    return np.ascontiguousarray(array)


def lod_map(relevance: Any, max_level: float = 4.0, *, min_level: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """Per-pixel LOD, float32 (h, w) at the relevance map's resolution.

    lod = min_level + (max_level - min_level) * (1 - relevance) ** gamma: relevance 1 gets
    `min_level` (full detail), relevance 0 gets `max_level`; gamma > 1 keeps detail further
    out from relevant regions, gamma < 1 drops it sooner.
    """
    min_level, max_level = _number(min_level, "min_level"), _number(max_level, "max_level")
    gamma = _number(gamma, "gamma")
    r = as_relevance(relevance)
    if not (np.isfinite(min_level) and np.isfinite(max_level)) or min_level < 0 or max_level < min_level:
        raise ValueError(f"need 0 <= min_level <= max_level, got min_level={min_level}, max_level={max_level}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    return (min_level + (max_level - min_level) * (1.0 - r) ** gamma).astype(np.float32)


def as_lod_map(lod_map: Any) -> np.ndarray:
    """A per-pixel LOD map (numpy or torch, h x w, finite) as C-contiguous float32."""
    lod_map = _host_array(lod_map, "a LOD map")
    array = np.asarray(lod_map)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a LOD map must be a non-empty 2-D (h, w) array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise TypeError(f"a LOD map must hold numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError("the LOD map holds NaN or infinite values")
    return array
