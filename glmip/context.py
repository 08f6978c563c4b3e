"""`glmip.Context`: the GL context (`glmip.gl.GLContext`) with the engine's conveniences on top.

The GL layer knows nothing of pyramids; this class is where a context meets the stages:
`ctx.pyramid(image)` makes a `Pyramid` that closes with the context.
"""

from __future__ import annotations

from typing import Any

from .gl.context import GLContext
from .pyramid import Pyramid

__all__ = ["Context"]


class Context(GLContext):
    """A headless EGL OpenGL 4.5 core context; use as `with glmip.Context() as ctx:`.

    `device` picks the EGL device by index (`glmip info` lists them); `cuda_device` picks the EGL
    device that is torch's CUDA device of that index (matched by UUID, else EGL_NV_device_cuda),
    which the CUDA-GL interop path of `glmip.bridge` needs. With both, they must agree. With
    neither: the first NVIDIA EGL device, else EGL's first. The context belongs to the thread and
    process that created it (see `glmip.errors`).
    """

    def __enter__(self) -> Context:
        return self

    def pyramid(self, image: Any, method: str = "hardware", srgb: bool = False) -> Pyramid:
        """Upload `image` and build its full mip chain; see `glmip.Pyramid`. Closed with this context."""
        return Pyramid(self, image, method=method, srgb=srgb)

    def slide(self, source: Any, **options: Any) -> Any:
        """Open a whole-slide image (a pyramidal tiled TIFF path) or an image of any size through GPU tiles;
        see `glmip.Slide` (needs the `slide` extra for files)."""
        from .slides import Slide

        return Slide(self, source, **options)
