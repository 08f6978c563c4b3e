"""Relevance maps: where in the image detail matters, as float32 (h, w) in [0, 1].

Convention: row 0 is the image's top; any resolution (consumers sample it by uv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .gl.programs import TRILINEAR, WRAP_MODES, bound_texture, scratch
from .limits import (
    MAX_OUTPUT_PIXELS,
    check_context,
    check_pixels,
    check_pyramid,
    check_storage,
    finite_float,
    positive_int,
    size_pair,
)
from .maps import as_relevance, rescale_to_unit

if TYPE_CHECKING:
    from .gl.context import GLContext
    from .gl.texture import MipTexture

__all__ = ["gaze", "RelevancePyramid", "relevance_pyramid", "prepare_relevance", "build_relevance_pyramid",
           "saliency"]


def gaze(size: tuple[int, int], point: tuple[float, float], radius: float = 0.12) -> np.ndarray:
    """A foveal relevance map of `size` = (width, height): 1 at the gaze `point` (uv in [0, 1]^2,
    (0, 0) top-left), falling off as a Gaussian of sigma `radius` x the image's larger side."""
    width, height = size_pair(size, "size", MAX_OUTPUT_PIXELS,
                              "make the map smaller (it is sampled by uv) or raise glmip.limits.MAX_OUTPUT_PIXELS")
    try:
        x, y = point
    except (TypeError, ValueError):
        raise TypeError(f"the gaze point must be (u, v), two numbers, got {point!r}") from None
    what = "the gaze point (uv in [0, 1]^2)"
    x, y = finite_float(x, f"{what} u", 0.0, 1.0), finite_float(y, f"{what} v", 0.0, 1.0)
    # Under 1e-4 of the larger side the Gaussian is a single pixel or less, whatever the size.
    radius = finite_float(radius, "radius", 1e-4)
    sigma = radius * max(width, height)
    cols = (np.arange(width) + 0.5) - x * width
    rows = (np.arange(height) + 0.5) - y * height
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2
    return np.exp(-0.5 * d2 / sigma**2).astype(np.float32)


@dataclass(frozen=True)
class RelevancePyramid:
    """Relevance summarised per quadtree cell, so any cell's relevance is one texel fetch.

    Level 0 has one texel per `cell` x `cell` block of image pixels (the finest token's square);
    each level above halves the grid, rounding up, so a block of 2^k x 2^k base cells is texel
    (x >> k, y >> k) of level k. Each texel holds (mean, max, area): the area-weighted mean
    relevance over the block's in-image pixels, the largest relevance texel it touches, and its
    in-image area in pixels. mean x area is the block's relevance mass.
    """

    levels: tuple[np.ndarray, ...]  # (gh_k, gw_k, 3) float32 per level
    cell: int
    image_size: tuple[int, int]

    @property
    def grid_size(self) -> tuple[int, int]:
        """Base grid (width, height) in cells."""
        return self.levels[0].shape[1], self.levels[0].shape[0]

    def texel(self, level: int, x: int, y: int) -> tuple[float, float, float]:
        """(mean, max, area) of the block of base cells at texel (x, y) of `level`."""
        mean, peak, area = self.levels[level][y, x]
        return float(mean), float(peak), float(area)


def prepare_relevance(relevance: Any, cell: int, image_size: tuple[int, int] | None
                      ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """`relevance_pyramid`'s checks alone: the validated map, the cell and the image size (width,
    height), with the base grid under its limit. What `build_relevance_pyramid` takes."""
    r = as_relevance(relevance)
    cell = positive_int(cell, "cell (pixels a token side)")
    size = size_pair((r.shape[1], r.shape[0]) if image_size is None else image_size, "image_size")
    grid = (-(-size[0] // cell), -(-size[1] // cell))
    check_pixels(grid, f"the relevance pyramid's base grid (image_size / cell {cell})", MAX_OUTPUT_PIXELS,
                 "use a larger cell or raise glmip.limits.MAX_OUTPUT_PIXELS")
    return r, cell, size


def relevance_pyramid(relevance: Any, cell: int, image_size: tuple[int, int] | None = None,
                      context: GLContext | None = None) -> RelevancePyramid:
    """The max/mean pyramid of `relevance` over an image of `image_size` (default the map's own),
    with `cell`-pixel base cells. Built on the GPU when a `context` is given (one dispatch per
    level), else by the numpy reference (`glmip.reference.relevance_pyramid`), which it matches.
    """
    if context is not None:
        check_context(context)
    return build_relevance_pyramid(*prepare_relevance(relevance, cell, image_size), context)


def build_relevance_pyramid(r: np.ndarray, cell: int, size: tuple[int, int],
                            context: GLContext | None = None) -> RelevancePyramid:
    """The pyramid of a map `prepare_relevance` returned (so a batch checks every map before it builds
    any, and no map twice); see `relevance_pyramid`."""
    if context is None:
        from . import reference

        return RelevancePyramid(tuple(reference.relevance_pyramid(r, cell, size)), cell, size)
    import moderngl

    grid = (-(-size[0] // cell), -(-size[1] // cell))
    how = "use a larger cell or a smaller relevance map"
    check_storage(context, max(r.nbytes, grid[0] * grid[1] * 16), "this relevance pyramid", how)
    gl = context.gl
    levels: list[np.ndarray] = []
    with scratch(context) as buffers:
        buffers.append(gl.buffer(r))
        base = context.program("relevance_base.comp")
        buffers.append(gl.buffer(reserve=grid[0] * grid[1] * 16))
        buffers[0].bind_to_storage_buffer(0)
        buffers[1].bind_to_storage_buffer(1)
        base["map_size"] = (r.shape[1], r.shape[0])
        base["image_size"] = size
        base["grid_size"] = grid
        base["cell"] = cell
        base.run(-(-grid[0] // 8), -(-grid[1] // 8))
        sizes = [grid]
        while sizes[-1] != (1, 1):
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        reduce = context.program("relevance_reduce.comp")
        for fine, coarse in zip(sizes, sizes[1:], strict=False):
            gl.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
            buffers.append(gl.buffer(reserve=coarse[0] * coarse[1] * 16))
            buffers[-2].bind_to_storage_buffer(0)
            buffers[-1].bind_to_storage_buffer(1)
            reduce["fine_size"] = fine
            reduce["coarse_size"] = coarse
            reduce.run(-(-coarse[0] // 8), -(-coarse[1] // 8))
        gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
        for (w, h), buffer in zip(sizes, buffers[1:], strict=True):
            level = np.empty((h, w, 4), np.float32)
            buffer.read_into(level)
            levels.append(np.ascontiguousarray(level[..., :3]))
    return RelevancePyramid(tuple(levels), cell, size)


SALIENCY_CENTRES = (1, 2, 3)
SALIENCY_DELTAS = (2, 3)


def saliency(pyramid: MipTexture, size: tuple[int, int] | None = None, *, centres: tuple[int, ...] = SALIENCY_CENTRES,
             deltas: tuple[int, ...] = SALIENCY_DELTAS, normalise: bool = True) -> np.ndarray:
    """A saliency map that needs no weights, computed on the GPU from the image's own pyramid:
    centre-surround contrast of intensity and two colour-opponent features, summed over centre
    levels `centres` and surround levels centre + `deltas` (consecutive ints each).

    `size` = (width, height) of the map, default the size of level 2. Returns float32 (h, w),
    rescaled to [0, 1] (a flat image gives zeros) unless `normalise` is False.
    """
    check_pyramid(pyramid)
    for name, values in (("centres", centres), ("deltas", deltas)):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"{name} must be a tuple of consecutive ints, got {values!r}")
        values = tuple(values)
        if (not values or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in values)
                or list(values) != list(range(values[0], values[0] + len(values)))):
            raise ValueError(f"{name} must be consecutive ints, got {values!r}")
    if max(centres) + max(deltas) > 64:
        raise ValueError(f"centre + delta levels must be at most 64, got {centres!r} and {deltas!r}")
    if min(centres) < 0 or min(deltas) < 1:
        raise ValueError(f"need centres >= 0 and deltas >= 1, got {centres!r}, {deltas!r}")
    if size is None:
        size = pyramid.sizes[min(2, pyramid.levels - 1)]
    how = "ask for a smaller map (consumers sample it by uv)"
    width, height = size_pair(size, "size", MAX_OUTPUT_PIXELS, how + " or raise glmip.limits.MAX_OUTPUT_PIXELS")
    check_storage(pyramid.context, width * height * 4, f"a {width}x{height} saliency map", how)
    import moderngl

    ctx = pyramid.context
    texture = pyramid.texture
    program = ctx.program("saliency.comp", CHANNELS=pyramid.channels)
    with scratch(ctx) as buffers:
        out = ctx.gl.buffer(reserve=width * height * 4)
        buffers.append(out)
        with bound_texture(ctx, texture, ctx.sampler(*TRILINEAR, WRAP_MODES["clamp"]), program):
            program["size"] = (int(width), int(height))
            program["centre_first"] = int(centres[0])
            program["centre_count"] = len(centres)
            program["delta_first"] = int(deltas[0])
            program["delta_count"] = len(deltas)
            out.bind_to_storage_buffer(0)
            program.run(-(-int(width) // 8), -(-int(height) // 8))
        ctx.gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
        values = np.empty((int(height), int(width)), np.float32)
        out.read_into(values)
    return rescale_to_unit(values) if normalise else values
