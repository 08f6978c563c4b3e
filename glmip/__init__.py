"""glmip: GPU mipmap pyramids with OpenGL, sampled at a per-region level of detail, for ViTs."""

from __future__ import annotations

from pathlib import Path

from .allocate import ClassBudgets, TokenLayout, allocate, lod_map
from .context import Context
from .pyramid import Pyramid, PyramidMethod, level_sizes
from .query import ClipScorer, query_relevance
from .relevance import RelevancePyramid, as_relevance, gaze, relevance_pyramid, saliency
from .sampling import Filter, Wrap
from .warp import Border, tilt_homography

__version__ = "0.1.0"

DEFAULT_IMAGE = Path(__file__).resolve().parent / "data" / "coffee.png"



def __getattr__(name: str):
    """`glmip.LodPatchEmbed` without importing torch.nn on `import glmip`."""
    if name == "LodPatchEmbed":
        from .nn import LodPatchEmbed

        return LodPatchEmbed
    raise AttributeError(f"module 'glmip' has no attribute {name!r}")


__all__ = [
    "Context", "Pyramid", "PyramidMethod", "Filter", "Wrap", "TokenLayout", "allocate", "level_sizes", "lod_map",
    "as_relevance", "gaze", "saliency", "relevance_pyramid", "RelevancePyramid", "ClassBudgets", "query_relevance",
    "ClipScorer", "LodPatchEmbed", "DEFAULT_IMAGE", "__version__", "Border", "tilt_homography",
]
