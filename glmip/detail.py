"""The detail (distortion) pyramid: what each quadtree cell loses when it is represented one level coarser,
measured on the GPU from the image's own mip chain.

A token of level L is patch x patch samples of mip level L over a square of patch * 2^L pixels, so a
cell of the allocation grid at level L holds what mip level L keeps there, and merging it with its
siblings into one token of level L + 1 replaces those texels by level L + 1 interpolated back: the
detail a Laplacian pyramid keeps between the two levels. `glmip.allocate(..., detail=...)` spends the
budget where relevance times that loss is largest.

Convention:
    Level k of a `DetailPyramid` belongs to token level L = min_level + k; its grid is the relevance
    pyramid's of cell = patch << min_level (the base grid ceil(W / cell) x ceil(H / cell), halving with
    rounding up), so a cell of level k is texel (x >> k, y >> k). Texel (x, y) of level k holds

        E = sum over texels t of mip level L whose centre lies in the cell's square
            [x s, (x + 1) s) x [y s, (y + 1) s), s = patch << L (level-0 pixels)
            of  area_L * sum over the image's channels c of (level_L[t, c] - up_L[t, c])^2

    where up_L is mip level L + 1 sampled bilinearly at t's centre (GL's rule: texel i of a level of w
    texels has its centre at (i + 0.5) / w in uv; clamp to edge), area_L = (W / w_L) (H / h_L) the
    level-0 pixels a texel of level L covers, and values are those the sampler returns (unorm in
    [0, 1], float32 as stored, sRGB decoded to linear light). E is a squared L2 norm in (value^2 x
    level-0 pixels): summed over a level's cells it is W x H x the mean squared error of replacing
    level L by level L + 1 upsampled. Levels with no coarser mip level (L + 1 past the chain) hold 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .gl.programs import TRILINEAR, WRAP_MODES, bound_array, scratch
from .limits import MAX_OUTPUT_PIXELS, MAX_PATCH, check_pixels, check_pyramid_or_batch, check_storage, positive_int

if TYPE_CHECKING:
    from .pyramid import LayerArray

__all__ = ["DetailPyramid", "detail_pyramid", "check_detail", "Criterion", "grid_chain"]


class Criterion(str, enum.Enum):
    """What a token split is scored by (`glmip.tokenize(criterion=...)`)."""

    RELEVANCE = "relevance"  # relevance mass standing out above the image's typical relevance
    DETAIL = "detail"  # relevance-weighted detail lost (`glmip.detail`)

    @classmethod
    def parse(cls, value: str | Criterion) -> Criterion:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"unknown criterion {value!r}; choose one of {names}") from None


def grid_chain(size: tuple[int, int], cell: int) -> list[tuple[int, int]]:
    """(width, height) of every level of the allocation grid: ceil(size / cell), halved rounding up to 1x1."""
    sizes = [(-(-size[0] // cell), -(-size[1] // cell))]
    while sizes[-1] != (1, 1):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


@dataclass(frozen=True)
class DetailPyramid:
    """Per allocation cell and level, the energy lost by representing the cell one mip level coarser
    (see the module's convention). `levels[k]` is (gh_k, gw_k) float32, the grid of a relevance
    pyramid of cell `patch << min_level` over an image of `image_size` = (width, height)."""

    levels: tuple[np.ndarray, ...]
    patch: int
    min_level: int
    image_size: tuple[int, int]

    @property
    def cell(self) -> int:
        """Level-0 pixels a side of a base cell."""
        return self.patch << self.min_level

    @property
    def grid_size(self) -> tuple[int, int]:
        """Base grid (width, height) in cells."""
        return self.levels[0].shape[1], self.levels[0].shape[0]


def check_detail(detail: Any, patch: int, min_level: int, image_size: tuple[int, int], what: str = "detail") -> None:
    """Raise TypeError/ValueError unless `detail` is a `DetailPyramid` for tokens of `patch` samples from
    `min_level` over an image of `image_size`, with every value finite and >= 0 (the first bad one named)."""
    if not isinstance(detail, DetailPyramid):
        raise TypeError(f"{what} must be a glmip.detail.DetailPyramid (from glmip.detail.detail_pyramid), got "
                        f"{type(detail).__name__}")
    if (detail.patch, detail.min_level, tuple(detail.image_size)) != (patch, min_level, tuple(image_size)):
        raise ValueError(f"{what} was built for patch {detail.patch}, min_level {detail.min_level} over a "
                         f"{detail.image_size[0]}x{detail.image_size[1]} image; this allocation is patch {patch}, "
                         f"min_level {min_level} over {image_size[0]}x{image_size[1]}: build it from this image "
                         "with the same patch and min_level")
    expected = grid_chain(tuple(image_size), patch << min_level)
    shapes = [tuple(np.shape(level)) for level in detail.levels]
    if shapes != [(h, w) for w, h in expected]:
        raise ValueError(f"{what} has level shapes {shapes}; a {image_size[0]}x{image_size[1]} image with cell "
                         f"{patch << min_level} needs {[(h, w) for w, h in expected]}")
    for k, level in enumerate(detail.levels):
        values = np.asarray(level)
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            y, x = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"{what} level {k} holds {float(values[y, x])!r} at cell ({x}, {y}); detail energies must "
                             "be finite and >= 0 (a NaN or infinite pixel in a float32 image gives this)")


def detail_pyramid(pyramid: Any, patch: int = 16, min_level: int = 0) -> Any:
    """The detail pyramid of a `Pyramid`, or of every image of a `PyramidBatch` (a list in batch order),
    for tokens of `patch` samples a side from token level `min_level` up (see the module's convention).

    Built on the GPU: per array texture of the batch one dispatch per allocation level over all its
    layers (work-group z = layer), every level of every layer in one buffer, read back once.
    """
    batch = check_pyramid_or_batch(pyramid)
    patch = positive_int(patch, "patch")
    if patch > MAX_PATCH:
        raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} samples a side; "
                         "raise glmip.limits.MAX_PATCH to go past it")
    if not isinstance(min_level, (int, np.integer)) or isinstance(min_level, bool):
        raise TypeError(f"min_level must be an int in 0..30, got {min_level!r}")
    if not 0 <= min_level <= 30:
        raise ValueError(f"min_level must be an int in 0..30, got {min_level!r}")
    patch, min_level = int(patch), int(min_level)
    parts = [(a, 0, a.layers) for a in pyramid.arrays] if batch else [(pyramid.array, pyramid.layer, 1)]
    for array, _, count in parts:
        chain = grid_chain((array.width, array.height), patch << min_level)
        check_pixels(chain[0], f"the detail pyramid's base grid (image_size / cell {patch << min_level})",
                     MAX_OUTPUT_PIXELS, "use a larger patch or min_level, or raise glmip.limits.MAX_OUTPUT_PIXELS")
        check_storage(pyramid.context, count * sum(w * h for w, h in chain) * 4,
                      f"the detail pyramids of {count} images", "pass fewer images at a time")
    blocks = [_detail_levels(array, first, count, patch, min_level) for array, first, count in parts]
    if not batch:
        return blocks[0][0]
    return [blocks[int(a)][int(layer)] for a, layer in pyramid.where]


def texel_bounds(n_pixels: int, n_texels: int, side: int, n_cells: int) -> np.ndarray:
    """(n_cells + 1,) int64: cell x holds the texels i of a level of `n_texels` (over `n_pixels` level-0
    pixels) in bounds[x]..bounds[x + 1] - 1, those whose centre (i + 0.5) n_pixels / n_texels lies in
    [x side, (x + 1) side); exact integer arithmetic."""
    edges = 2 * np.arange(n_cells + 1, dtype=np.int64) * side * n_texels - n_pixels
    first = -(-edges // (2 * n_pixels))  # ceil: the first i with (2 i + 1) n_pixels >= 2 x side n_texels
    return np.clip(first, 0, n_texels)


def _detail_levels(array: LayerArray, first: int, count: int, patch: int, min_level: int) -> list[DetailPyramid]:
    """The detail pyramids of layers first..first + count - 1 of one array texture: one dispatch per
    allocation level (z = layer) and one read."""
    import moderngl

    ctx = array.context
    size = (array.width, array.height)
    chain = grid_chain(size, patch << min_level)
    offsets = np.concatenate([[0], np.cumsum([count * w * h for w, h in chain])]).astype(np.int64)
    bounds: list[np.ndarray] = []
    jobs = []
    for k, (gw, gh) in enumerate(chain):
        level = min_level + k
        if level + 1 >= len(array.sizes):
            continue  # no coarser level to lose detail to: the energy stays 0
        (fw, fh) = array.sizes[level]
        side = patch << level
        column_first = sum(len(b) for b in bounds)
        bounds.append(texel_bounds(size[0], fw, side, gw))
        row_first = column_first + gw + 1
        bounds.append(texel_bounds(size[1], fh, side, gh))
        jobs.append((k, level, column_first, row_first))
    values = np.zeros(int(offsets[-1]), np.float32)
    if jobs:
        program = ctx.program("detail.comp", CHANNELS=array.channels)
        sampler = ctx.sampler(*TRILINEAR, WRAP_MODES["clamp"])
        with scratch(ctx) as buffers, bound_array(ctx, array.name, sampler):
            bound_buffer = ctx.gl.buffer(np.concatenate(bounds).astype(np.int32))
            energy = ctx.gl.buffer(reserve=int(offsets[-1]) * 4)
            buffers += [bound_buffer, energy]
            bound_buffer.bind_to_storage_buffer(0)
            energy.bind_to_storage_buffer(1)
            program["image"] = 0
            program["first_layer"] = int(first)
            for k, level, column_first, row_first in jobs:
                (fw, fh), (cw, ch), (gw, gh) = array.sizes[level], array.sizes[level + 1], chain[k]
                program["fine_level"] = level
                program["fine_size"] = (fw, fh)
                program["coarse_size"] = (cw, ch)
                program["grid_size"] = (gw, gh)
                program["column_first"] = column_first
                program["row_first"] = row_first
                program["out_first"] = int(offsets[k])
                program["texel_area"] = (size[0] / fw) * (size[1] / fh)
                program.run(-(-gw // 8), -(-gh // 8), count)
            ctx.gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
            # levels past the mip chain were never written: read only what was, keep the zeros elsewhere
            written = int(offsets[max(k for k, *_ in jobs) + 1])
            energy.read_into(values[:written], size=written * 4)
    per_level = [values[offsets[k]:offsets[k + 1]].reshape(count, h, w) for k, (w, h) in enumerate(chain)]
    return [DetailPyramid(tuple(np.ascontiguousarray(level[z]) for level in per_level), patch, min_level, size)
            for z in range(count)]
