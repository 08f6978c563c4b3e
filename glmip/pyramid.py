"""`Pyramid`: an image uploaded as one GL texture with its full mip chain.

Convention:
    the texture stores the image's row 0 (its top) first, so GL's texture coordinate t
    runs down the image and uv (0, 0) is the image's top-left corner; level i is
    max(1, floor(width / 2^i)) x max(1, floor(height / 2^i)); levels hold the image's own
    channel count and dtype (uint8/uint16 as unorm, float32 as is).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np

from .errors import ClosedError
from .gl.formats import internal_format, texel_format
from .gl.programs import encode_texels, groups, scratch
from .image import as_image_array
from .levels import LANCZOS_A, level_sizes
from .limits import check_compute_build
from .maps import default_max_level

if TYPE_CHECKING:
    from .gl.context import GLContext

__all__ = ["PyramidMethod", "Pyramid"]


class PyramidMethod(str, enum.Enum):
    """How the levels below 0 are made."""

    HARDWARE = "hardware"  # glGenerateMipmap: the driver's own filter
    BOX = "box"  # compute: area-weighted 2x2 (3x3 on odd sizes) mean in float
    LANCZOS = "lanczos"  # compute: separable Lanczos-3, sharper than box

    @classmethod
    def parse(cls, value: str | PyramidMethod) -> PyramidMethod:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"unknown pyramid method {value!r}; choose one of {names}") from None


def _nests(size_above: int, size: int) -> bool:
    """Whether each texel of a level covers whole texels of the level above along this axis."""
    return size_above == 2 * size or size_above == size == 1


class Pyramid:
    """A GPU mip pyramid of one image; made by `Context.pyramid(image, method, srgb)`.

    `method`: "hardware" (glGenerateMipmap, default), "box" or "lanczos" (compute shaders
    filtering in float from the unrounded level above). `srgb=True` (8-bit RGB/RGBA only)
    stores the texture as sRGB so every method filters in linear light.
    """

    def __init__(self, context: GLContext, image: Any, method: str | PyramidMethod = "hardware",
                 srgb: bool = False) -> None:
        context.check_open()
        self.method = PyramidMethod.parse(method)
        if not isinstance(srgb, bool):
            raise TypeError(f"srgb must be a bool, got {srgb!r}")
        pixels = as_image_array(image, max_side=context.max_texture_size)
        height, width, channels = pixels.shape
        if srgb and (pixels.dtype != np.uint8 or channels < 3):
            raise ValueError(f"srgb=True needs an 8-bit RGB or RGBA image, got {pixels.dtype} with "
                             f"{channels} channel(s); convert it to RGB first or pass srgb=False")
        limit = context.max_texture_size
        if width > limit or height > limit:
            raise ValueError(f"image of {width}x{height} exceeds this device's maximum texture size "
                             f"{limit}x{limit}; downscale or crop it (tiling is not supported yet)")
        if self.method is not PyramidMethod.HARDWARE:
            check_compute_build(context, width, height, self.method.value)
        self.context = context
        self.width, self.height, self.channels = width, height, channels
        self.dtype = pixels.dtype
        self.srgb = srgb
        self.sizes = level_sizes(width, height)
        self._texture: moderngl.Texture | None = None
        self._texture_name = 0
        self._closed = False
        internal = internal_format(self.dtype.name, channels, srgb)
        try:
            self._texture_name = context.raw.create_texture_storage(len(self.sizes), internal, width, height)
            self._texture = context.gl.external_texture(
                self._texture_name, (width, height), channels, 0, texel_format(self.dtype.name).moderngl
            )
            self._texture.write(pixels, level=0, alignment=1)
            if self.method is PyramidMethod.HARDWARE:
                self._texture.build_mipmaps(0, len(self.sizes) - 1)
            else:
                self._build_compute()
            self._texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
            self._texture.repeat_x = self._texture.repeat_y = False
        except BaseException:
            self.close()
            raise
        context.adopt(self)

    # -- building -----------------------------------------------------------------------
    def _build_compute(self) -> None:
        """Every level in float, rounded once: decode level 0, two separable passes a level, encode, upload.

        "lanczos" filters the float level above. "box" is the exact area mean of the level-0
        texels a texel covers: from the float level above where both axes halve exactly (the
        footprints nest, so the mean of means is exact), else from level 0 itself (odd sizes).
        """
        gl = self.context.gl
        box = self.method is PyramidMethod.BOX
        resample = self.context.program(
            "resample.comp", **({"FILTER_BOX": 1} if box else {"FILTER_LANCZOS": 1, "LANCZOS_A": LANCZOS_A})
        )
        decode = self.context.program("decode.comp")
        w0, h0 = self.sizes[0]
        w1, h1 = self.sizes[1] if len(self.sizes) > 1 else (1, 1)
        texel = 16  # vec4 of float32
        with scratch(self.context) as buffers:
            # Float RGBA texels of level 0, and two scratch buffers that fit every pass's output.
            level0 = gl.buffer(reserve=w0 * h0 * texel)
            buffers.append(level0)
            pool = [gl.buffer(reserve=w1 * h0 * texel), gl.buffer(reserve=w1 * h0 * texel)]
            buffers += pool
            packed = gl.buffer(reserve=groups(w1 * h1 * self.channels * self.dtype.itemsize, 4) * 4)
            buffers.append(packed)
            self._texture.use(0)
            decode["source_texture"] = 0
            decode["size"] = (w0, h0)
            level0.bind_to_storage_buffer(0)
            decode.run(groups(w0, 16), groups(h0, 16))
            gl.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
            current = level0
            for level, (w, h) in enumerate(self.sizes[1:], start=1):
                sw, sh = self.sizes[level - 1]
                if box and not (_nests(sw, w) and _nests(sh, h)):
                    current, (sw, sh) = level0, (w0, h0)
                current = self._resample(resample, current, pool, (sw, sh), (w, sh), 0)
                current = self._resample(resample, current, pool, (w, sh), (w, h), 1)
                encode_texels(self.context, current, packed, w * h, self.dtype, self.channels, self.srgb)
                gl.memory_barrier(moderngl.PIXEL_BUFFER_BARRIER_BIT | moderngl.TEXTURE_UPDATE_BARRIER_BIT)
                self.context.raw.upload_level_from_buffer(
                    self._texture_name, level, (w, h), self.channels, self.dtype.name, packed.glo)

    @staticmethod
    def _resample(program: moderngl.ComputeShader, source: moderngl.Buffer, pool: list[moderngl.Buffer],
                  source_size: tuple[int, int], destination_size: tuple[int, int], axis: int) -> moderngl.Buffer:
        """One separable pass into a `pool` buffer other than `source`; returns the buffer holding
        the result (`source` itself when the axis keeps its size)."""
        if source_size == destination_size:
            return source
        destination = pool[1] if source is pool[0] else pool[0]
        source.bind_to_storage_buffer(0)
        destination.bind_to_storage_buffer(1)
        program["source_size"] = source_size
        program["destination_size"] = destination_size
        program["axis"] = axis
        program.run(groups(destination_size[0], 16), groups(destination_size[1], 16))
        program.ctx.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
        return destination

    # -- reading ------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Number of mip levels (level 0 is the image itself)."""
        return len(self.sizes)

    @property
    def texture(self) -> moderngl.Texture:
        """The GL texture (moderngl) holding every level; valid until `close()`."""
        self._check_open()
        assert self._texture is not None
        return self._texture

    @property
    def nbytes(self) -> int:
        """Bytes of texel data over all levels in the texture's internal format (~4/3 of level 0)."""
        texel = self.channels * self.dtype.itemsize
        return sum(w * h * texel for w, h in self.sizes)

    def level(self, i: int, out: str = "numpy") -> Any:
        """Level `i` as `HxWxC` in the image's dtype, row 0 the image's top; `out` "numpy" or "torch"."""
        self._check_open()
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"level index must be an int, got {type(i).__name__}")
        if not 0 <= i < self.levels:
            raise ValueError(f"level {i} does not exist; this pyramid has levels 0..{self.levels - 1}")
        if out not in ("numpy", "torch"):
            raise ValueError(f"out must be 'numpy' or 'torch', got {out!r}")
        from .bridge import level_to_tensor

        tensor = level_to_tensor(self, int(i)).tensor
        return tensor if out == "torch" else tensor.numpy()

    @property
    def default_max_level(self) -> int:
        """The coarsest level relevance maps send the periphery to by default: 5 (1/32 scale) or the last."""
        return default_max_level(self.levels)

    # -- sampling (conveniences: the operations live in glmip.sampling) --------------------
    def sample(self, *args: Any, **options: Any) -> Any:
        """`glmip.sampling.sample(self, uv, lod, ...)`: N points in one dispatch, (N, C) float32."""
        from .sampling import sample

        return sample(self, *args, **options)

    def tokens(self, *args: Any, **options: Any) -> Any:
        """`glmip.sampling.tokens(self, layout, patch, filter, ...)`: torch (N, C, patch, patch) float32."""
        from .sampling import tokens

        return tokens(self, *args, **options)

    def render(self, *args: Any, **options: Any) -> Any:
        """`glmip.sampling.render(self, lod_map, ...)`: the image composited at per-pixel levels."""
        from .sampling import render

        return render(self, *args, **options)

    def warp(self, matrix: Any, size: tuple[int, int], **options: Any) -> Any:
        """This image through homography `matrix` (output pixel -> input pixel; (3, 3) or (B, 3, 3)) into
        `size` = (width, height), rasterized: torch float32 (B, C, height, width). See `glmip.warp.warp`."""
        from .warp import warp

        return warp(self, matrix, size, **options)

    # -- life cycle ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Pyramid is closed")
        self.context.check_open()

    def close(self) -> None:
        """Release the texture now. Safe to call twice. From a thread other than its context's it
        raises `WrongThreadError` and leaves the pyramid open (only that thread can delete it)."""
        if self._closed:
            return
        if not self.context.closed:
            self.context.make_current()
        self._closed = True
        if self._texture is not None:
            self._texture.release()
            self._texture = None
        if self._texture_name and not self.context.closed:
            self.context.raw.delete_texture(self._texture_name)
        self._texture_name = 0

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.levels} levels, {self.nbytes / 2**20:.2f} MiB"
        return (f"glmip.Pyramid({self.width}x{self.height}x{self.channels} {self.dtype}, "
                f"method={self.method.value!r}, srgb={self.srgb}, {state})")
