"""`MipTexture`: what the sampling and transfer stages need of a mip-mapped GL texture.

`glmip.Pyramid` is one; a slide tile or any other owner of a full mip chain can be another.
Stages type against this protocol, so they never import the class that builds the texture.

Convention:
    the texture stores the image's row 0 (its top) first; `sizes[i]` is level i's (width,
    height) with OpenGL's floor rule; `dtype` is the stored numpy dtype (unorm for integers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import moderngl
    import numpy as np

    from .context import GLContext

__all__ = ["MipTexture"]


class MipTexture(Protocol):
    context: GLContext
    width: int
    height: int
    channels: int
    dtype: np.dtype
    srgb: bool
    sizes: list[tuple[int, int]]

    @property
    def levels(self) -> int: ...

    @property
    def texture(self) -> moderngl.Texture: ...

    def _check_open(self) -> Any: ...
