"""Relevance maps: where in the image detail matters, as float32 (h, w) in [0, 1].

Convention: row 0 is the image's top; any resolution (consumers sample it by uv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .gl.programs import TRILINEAR, WRAP_MODES, bound_array, scratch
from .limits import (
    MAX_OUTPUT_PIXELS,
    check_context,
    check_pixels,
    check_pyramid_or_batch,
    check_storage,
    finite_float,
    positive_int,
    size_pair,
)
from .maps import as_relevance, rescale_to_unit

if TYPE_CHECKING:
    from .gl.context import GLContext

__all__ = ["gaze", "RelevancePyramid", "relevance_pyramid", "prepare_relevance", "build_relevance_pyramid",
           "build_relevance_pyramids", "batch_relevance_pyramids", "saliency"]


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
    return build_relevance_pyramids(r[None], cell, size, context)[0]


def _grid_chain(size: tuple[int, int], cell: int) -> list[tuple[int, int]]:
    """(width, height) of every relevance-pyramid level: the base grid, halved rounding up to 1x1."""
    sizes = [(-(-size[0] // cell), -(-size[1] // cell))]
    while sizes[-1] != (1, 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def build_relevance_pyramids(maps: np.ndarray, cell: int, size: tuple[int, int],
                             context: GLContext) -> list[RelevancePyramid]:
    """The relevance pyramids of n validated maps of one resolution (`maps` (n, h, w) float32) over
    images of one `size`, on the GPU: one base dispatch and one dispatch per level for all n, every
    level of every map in one buffer, read back once.

    Convention: level k of map z sits at texel `first_k + z * cells_k` of the buffer (layer-major)."""
    import moderngl

    count = int(maps.shape[0])
    sizes = _grid_chain(size, cell)
    firsts = np.concatenate([[0], np.cumsum([count * w * h for w, h in sizes])]).astype(np.int64)
    how = "use a larger cell, a smaller relevance map, or fewer images per batch"
    check_storage(context, max(maps.nbytes, int(firsts[-1]) * 16), "these relevance pyramids", how)
    gl = context.gl
    source = context.persistent_buffer("relevance_maps", maps.nbytes)
    source.write(np.ascontiguousarray(maps, np.float32))
    levels = context.persistent_buffer("relevance_levels", int(firsts[-1]) * 16)
    source.bind_to_storage_buffer(0)
    levels.bind_to_storage_buffer(1)
    base = context.program("relevance_base.comp")
    base["map_size"] = (maps.shape[2], maps.shape[1])
    base["image_size"] = size
    base["grid_size"] = sizes[0]
    base["cell"] = cell
    base.run(-(-sizes[0][0] // 8), -(-sizes[0][1] // 8), count)
    reduce = context.program("relevance_reduce.comp")
    for level, (fine, coarse) in enumerate(zip(sizes, sizes[1:], strict=False)):
        gl.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
        reduce["fine_size"] = fine
        reduce["coarse_size"] = coarse
        reduce["fine_first"] = int(firsts[level])
        reduce["coarse_first"] = int(firsts[level + 1])
        reduce.run(-(-coarse[0] // 8), -(-coarse[1] // 8), count)
    gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
    texels = np.empty((int(firsts[-1]), 4), np.float32)
    levels.read_into(texels, size=texels.nbytes)
    per_level = [texels[firsts[k]:firsts[k + 1], :3].reshape(count, h, w, 3) for k, (w, h) in enumerate(sizes)]
    return [RelevancePyramid(tuple(np.ascontiguousarray(level[z]) for level in per_level), cell, tuple(size))
            for z in range(count)]


def batch_relevance_pyramids(relevance: Any, image_sizes: list[tuple[int, int]], cell: int,
                             context: GLContext | None, batch: Any = None) -> list[RelevancePyramid]:
    """One `RelevancePyramid` per image of a batch, built with as few passes and reads as the source allows.

    relevance: None (uniform: one pyramid per distinct image size, from the numpy reference, no GL),
    one map for every image (one pyramid per distinct size), a list of maps (one per image: maps of
    one resolution over images of one size are built in one dispatch chain and read back once), or a
    callable `(pyramid) -> map` (called per image with `batch[b]`: it costs what the callable
    costs, per image; `glmip.saliency` itself runs once per array texture of `batch`). Images with
    equal sources share one pyramid object, so the allocator can allocate them once. Every map is
    checked before any pyramid is built.
    """
    count = len(image_sizes)
    if relevance is None or (not callable(relevance) and not isinstance(relevance, (list, tuple))):
        if relevance is not None and not (hasattr(relevance, "ndim") and relevance.ndim in (2, 3)):
            raise TypeError(f"relevance must be a map, a list of maps, a callable (pyramid) -> map or None, got "
                            f"{type(relevance).__name__}")
        shared = np.ones((1, 1), np.float32) if relevance is None else relevance
        by_size: dict[tuple[int, int], RelevancePyramid] = {}
        for size in dict.fromkeys(image_sizes):
            prepared = prepare_relevance(shared, cell, size)
            by_size[size] = build_relevance_pyramid(*prepared, None if relevance is None else context)
        return [by_size[size] for size in image_sizes]
    if relevance is saliency and batch is not None:
        maps = saliency(batch)
    elif callable(relevance):
        if batch is None:
            raise TypeError("a callable relevance needs the images' pyramids; pass maps to allocate directly")
        maps = [relevance(batch[b]) for b in range(count)]
    else:
        maps = list(relevance)
        if len(maps) != count:
            raise ValueError(f"got {len(maps)} relevance maps for {count} images; pass one per image, one map "
                             "for all, a callable (pyramid) -> map, or None for uniform")
    prepared = []
    for index, (source, size) in enumerate(zip(maps, image_sizes, strict=True)):
        try:
            prepared.append(prepare_relevance(source, cell, size))
        except (TypeError, ValueError) as error:
            raise type(error)(f"relevance map {index}: {error}") from None
    result: list[RelevancePyramid | None] = [None] * count
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, (r, _, size) in enumerate(prepared):
        groups.setdefault((r.shape, size), []).append(index)
    for (_, size), members in groups.items():
        if context is None:
            built = [build_relevance_pyramid(*prepared[i], None) for i in members]
        else:
            built = build_relevance_pyramids(np.stack([prepared[i][0] for i in members]), cell, size, context)
        for index, pyramid in zip(members, built, strict=True):
            result[index] = pyramid
    return result  # type: ignore[return-value]


SALIENCY_CENTRES = (1, 2, 3)
SALIENCY_DELTAS = (2, 3)


def saliency(pyramid: Any, size: tuple[int, int] | None = None, *, centres: tuple[int, ...] = SALIENCY_CENTRES,
             deltas: tuple[int, ...] = SALIENCY_DELTAS, normalise: bool = True) -> Any:
    """A saliency map that needs no weights, computed on the GPU from the image's own pyramid:
    centre-surround contrast of intensity and two colour-opponent features, summed over centre
    levels `centres` and surround levels centre + `deltas` (consecutive ints each).

    `pyramid`: a `Pyramid`, or a `PyramidBatch` (every image of each of its array textures in one
    dispatch and one read). `size` = (width, height) of the map, default the size of level 2.
    Returns float32 (h, w) — for a batch, a list of them in batch order — each rescaled to [0, 1]
    (a flat image gives zeros) unless `normalise` is False.
    """
    batch = check_pyramid_or_batch(pyramid)
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
    how = "ask for a smaller map (consumers sample it by uv)"
    parts = [(a, 0, a.layers) for a in pyramid.arrays] if batch else [(pyramid.array, pyramid.layer, 1)]
    sizes = []
    for array, _, count in parts:
        wanted = array.sizes[min(2, len(array.sizes) - 1)] if size is None else size
        width, height = size_pair(wanted, "size", MAX_OUTPUT_PIXELS, how + " or raise glmip.limits.MAX_OUTPUT_PIXELS")
        check_storage(pyramid.context, count * width * height * 4, f"{count} saliency maps of {width}x{height}", how)
        sizes.append((width, height))
    maps = [_saliency_maps(array, first, count, map_size, centres, deltas)
            for (array, first, count), map_size in zip(parts, sizes, strict=True)]
    if normalise:
        maps = [np.stack([rescale_to_unit(m) for m in block]) for block in maps]
    if not batch:
        return maps[0][0]
    return [maps[int(a)][int(layer)] for a, layer in pyramid.where]


def _saliency_maps(array: Any, first: int, count: int, size: tuple[int, int], centres: tuple[int, ...],
                   deltas: tuple[int, ...]) -> np.ndarray:
    """Raw saliency of layers first..first+count-1 of a batch array texture: (count, h, w) float32, one
    dispatch (z = layer) and one read."""
    import moderngl

    ctx = array.context
    width, height = size
    program = ctx.program("saliency.comp", CHANNELS=array.channels)
    with scratch(ctx) as buffers, bound_array(ctx, array.name, ctx.sampler(*TRILINEAR, WRAP_MODES["clamp"])):
        out = ctx.gl.buffer(reserve=count * width * height * 4)
        buffers.append(out)
        program["image"] = 0
        program["size"] = (int(width), int(height))
        program["first_layer"] = int(first)
        program["centre_first"] = int(centres[0])
        program["centre_count"] = len(centres)
        program["delta_first"] = int(deltas[0])
        program["delta_count"] = len(deltas)
        out.bind_to_storage_buffer(0)
        program.run(-(-int(width) // 8), -(-int(height) // 8), count)
        ctx.gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
        values = np.empty((count, int(height), int(width)), np.float32)
        out.read_into(values)
    return values
