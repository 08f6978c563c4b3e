"""glmip: GPU mipmap pyramids with OpenGL, sampled at a per-region level of detail, for ViTs."""

from __future__ import annotations

from pathlib import Path

from .allocate import TokenLayout, allocate, lod_map
from .context import Context
from .pyramid import Pyramid, PyramidMethod, level_sizes
from .relevance import as_relevance, gaze
from .sampling import Filter, Wrap

__version__ = "0.1.0"

DEFAULT_IMAGE = Path(__file__).resolve().parent / "data" / "coffee.png"

__all__ = [
    "Context", "Pyramid", "PyramidMethod", "Filter", "Wrap", "TokenLayout", "allocate", "level_sizes", "lod_map",
    "as_relevance", "gaze", "DEFAULT_IMAGE", "__version__",
]
