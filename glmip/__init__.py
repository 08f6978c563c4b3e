"""glmip: GPU mipmap pyramids with OpenGL, sampled at a per-region level of detail, for ViTs.

The public surface is what `__all__` lists here, plus the public modules `glmip.reference`
(the numpy oracle), `glmip.bridge` (GL ↔ torch), `glmip.nn` (torch modules), `glmip.models`,
`glmip.data` (training data pipelines), `glmip.slides` (gigapixel slides), `glmip.viewer`, `glmip.errors`
and `glmip.gl` (the GL layer, for those who extend glmip). Each is an attribute after `import glmip`
alone, imported on first use, so `import glmip` imports neither torch nor tifffile.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from .allocate import ClassBudgets, TokenLayout, allocate, allocate_batch
from .context import Context
from .detail import detail_pyramid
from .errors import ClosedError, ForkedContextError, GLError, GlmipError, WrongThreadError
from .levels import level_sizes
from .maps import as_relevance, lod_map
from .pyramid import Pyramid, PyramidBatch, PyramidMethod
from .query import ClipScorer, query_relevance
from .refine import cover_layout, refine, refine_batch
from .relevance import RelevancePyramid, gaze, relevance_pyramid, saliency
from .sampling import Filter, Wrap
from .tokenize import tokenize, tokenize_pyramids
from .warp import Border, tilt_homography

__version__ = "0.1.0"

DEFAULT_IMAGE = Path(__file__).resolve().parent / "assets" / "coffee.png"


# Public submodules that `import glmip` leaves unimported (torch, tifffile, the viewer's GLFW), loaded on first access.
_SUBMODULES = ("bridge", "data", "errors", "gl", "models", "nn", "reference", "slides", "viewer")


def __getattr__(name: str):
    """`glmip.LodPatchEmbed`, `glmip.TokenBatch`, `glmip.Slide` and the public submodules (`glmip.data`,
    `glmip.nn`, `glmip.slides`, ...) without importing torch.nn or tifffile on `import glmip`."""
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name == "LodPatchEmbed":
        from .nn import LodPatchEmbed

        return LodPatchEmbed
    if name == "TokenBatch":
        from .token_batch import TokenBatch

        return TokenBatch
    if name == "Slide":
        from .slides import Slide

        return Slide
    raise AttributeError(f"module 'glmip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


__all__ = [
    "Context", "Pyramid", "PyramidBatch", "PyramidMethod", "Filter", "Wrap", "TokenLayout", "allocate",
    "allocate_batch", "level_sizes", "lod_map",
    "as_relevance", "gaze", "saliency", "relevance_pyramid", "RelevancePyramid", "ClassBudgets", "query_relevance",
    "ClipScorer", "LodPatchEmbed", "TokenBatch", "Slide", "DEFAULT_IMAGE", "__version__", "Border",
    "tilt_homography", "tokenize", "tokenize_pyramids", "refine", "refine_batch", "cover_layout",
    "detail_pyramid", "GlmipError", "ClosedError",
    "WrongThreadError", "ForkedContextError", "GLError",
]
