"""From relevance to levels of detail: a continuous per-pixel LOD map (token budgets come later)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .relevance import as_relevance


def lod_map(relevance: Any, max_level: float = 4.0, *, min_level: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """Per-pixel LOD, float32 (h, w) at the relevance map's resolution.

    lod = min_level + (max_level - min_level) * (1 - relevance) ** gamma: relevance 1 gets
    `min_level` (full detail), relevance 0 gets `max_level`; gamma > 1 keeps detail further
    out from relevant regions, gamma < 1 drops it sooner.
    """
    r = as_relevance(relevance)
    if not (np.isfinite(min_level) and np.isfinite(max_level)) or min_level < 0 or max_level < min_level:
        raise ValueError(f"need 0 <= min_level <= max_level, got min_level={min_level}, max_level={max_level}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    return (min_level + (max_level - min_level) * (1.0 - r) ** gamma).astype(np.float32)
