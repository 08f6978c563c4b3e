"""`glmip.Context`: the GL context (`glmip.gl.GLContext`) with the engine's conveniences on top.

The GL layer knows nothing of pyramids; this class is where a context meets the stages:
`ctx.pyramids(images)` builds a batch's pyramids together (a `PyramidBatch`), `ctx.pyramid(image)`
a batch of one (a `Pyramid`); both close with the context.
"""

from __future__ import annotations

from typing import Any

from .gl.context import GLContext
from .pyramid import Pyramid, PyramidBatch

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
        """Upload `image` and build its full mip chain; see `glmip.Pyramid`. A batch of one: the
        pyramid owns it. Closed with this context, by `close()`, or when garbage-collected."""
        return Pyramid.of(self, image, method=method, srgb=srgb)

    def pyramids(self, images: Any, method: str = "hardware", srgb: bool = False) -> PyramidBatch:
        """Upload a batch of images and build their mip chains together; see `glmip.PyramidBatch`.
        `images`: a list (sizes may differ), a BxCxHxW tensor (CPU or CUDA) or a BxHxWxC array."""
        return PyramidBatch(self, images, method=method, srgb=srgb)

    def slide(self, source: Any, **options: Any) -> Any:
        """Open a whole-slide image (a pyramidal tiled TIFF path) or an image of any size through GPU tiles;
        see `glmip.Slide` (needs the `slide` extra for files)."""
        from .slides import Slide

        return Slide(self, source, **options)
