"""Per-level patch grids of a batch's pyramids in one call: the multi-scale input of hierarchical models.

`grids(batch, levels, patch)` cuts each requested mip level of every image into its dense grid of
patch x patch cells (levels 0..3 with patch 4 at 224² give the 56/28/14/7 grids of MViT's stages) and
returns them as tokens, `LevelGrid` (B, N_l, C, P, P) with their (row, col) cells, or with
`as_images=True` as level images, `LevelImage` (B, C, H_l, W_l) for conv consumers (an FPN). Every
requested level of every image of one array texture is read in ONE dispatch (`shaders/grids.comp`,
texelFetch of the stored texels, so a grid equals the level `PyramidBatch.level` reads, exactly) into
the context's token buffer, which reaches `device` in one transfer.

A sparse pyramid keeps, at each finer level, only the relevant cells: pass `masks` (one bool grid per
level), or a `relevance` map with a `threshold` or a per-level `budget`. Kept cells come back in
row-major order, padded per level to the batch's largest count, with `valid` marking the real ones.

Convention:
    cell (row, col) of level l covers level texels [col·P, col·P + P) x [row·P, row·P + P), row 0 the
    image's top. A level that P does not divide is padded at its right and bottom edges to the next
    multiple of P with zeros (as `torch.nn.functional.pad` before `unfold`, timm's dynamic padding):
    the grid is ceil(h_l / P) x ceil(w_l / P) cells and the texels past the level read 0. Level sizes
    follow OpenGL (max(1, floor(side / 2^l))). Values are float32: unorm formats normalised to [0, 1],
    sRGB textures decoded to linear, float32 as stored. In a mixed-size batch each image's cells are
    its own grid's; tokens are padded to the longest image (`valid` False, positions -1, zeros) and
    level images to the largest level at the bottom and right (zeros), with each image's own size in
    `sizes`. A cell's relevance is the area mean of the map over the part of the cell inside the level
    (the map spans the whole image, uv [0, 1]²).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np

from .gl.programs import NEAREST_MIPMAP, WRAP_MODES, bound_array, dispatch_flat, scratch
from .limits import MAX_PATCH, MAX_TOKEN_SAMPLES, check_count, check_storage, finite_float, positive_int
from .maps import as_relevance

if TYPE_CHECKING:
    import torch

# The batch is a `glmip.PyramidBatch`, typed `Any` here: pyramid.py imports this module for its `grids` method.
PyramidBatch = Any

__all__ = ["LevelGrid", "LevelImage", "grids", "cell_relevance", "IMAGE_TILE"]

IMAGE_TILE = 16  # texels a side of the cells level images are cut into, one shader invocation each
_FAR = 1 << 30  # x0 of padding cells: past any level, so the shader writes zeros there
_LOCAL = 64


@dataclass(frozen=True)
class LevelGrid:
    """The patch grid of one mip level for a batch (kept cells only when masked).

    Shapes (B images, N cells a row after padding, C channels, P = patch):
        tokens:    (B, N, C, P, P) float32 on the call's device; cell n of image b is its level's texels
                   [x, x + P) x [y, y + P) with (y, x) = P · positions[b, n], channel-first.
        positions: (B, N, 2) int64 (row, col) of each cell in its level's grid; -1 at padding.
        valid:     (B, N) bool, True = a real (kept) cell, False = padding (its token is zeros).
        grid:      (B, 2) int64, (rows, cols) of each image's full grid at this level.
        shape:     (rows, cols), Python ints: the largest full grid of the batch (static for torch.compile).
        relevance: (B, N) float32, each cell's mean relevance (0 at padding) when the call was given a
                   relevance map, else None: the per-token bias of `glmip.hierarchy.CrossScaleAttention`.
    """

    level: int
    patch: int
    tokens: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    grid: torch.Tensor
    shape: tuple[int, int]
    relevance: torch.Tensor | None = None


@dataclass(frozen=True)
class LevelImage:
    """One mip level of every image of a batch as an image batch for conv consumers.

    Shapes: image (B, C, H, W) float32, zero-padded at the bottom and right to the batch's largest level
    (and, with a patch, to a multiple of it); sizes (B, 2) int64, (height, width) of each image's level.
    """

    level: int
    image: torch.Tensor
    sizes: torch.Tensor


def cell_relevance(relevance: np.ndarray, level_size: tuple[int, int], patch: int) -> np.ndarray:
    """(rows, cols) float64: the area mean of `relevance` (h, w), spanning the whole image, over the in-level
    part of each patch x patch cell of a level of `level_size` = (width, height)."""

    def overlap(cells: int, level_side: int, map_side: int) -> np.ndarray:
        start = np.minimum(np.arange(cells) * patch, level_side) / level_side
        stop = np.minimum((np.arange(cells) + 1) * patch, level_side) / level_side
        texel = np.arange(map_side)
        return np.clip(np.minimum(stop[:, None], (texel[None, :] + 1) / map_side)
                       - np.maximum(start[:, None], texel[None, :] / map_side), 0.0, None)

    width, height = level_size
    rows, cols = -(-height // patch), -(-width // patch)
    wy = overlap(rows, height, relevance.shape[0])
    wx = overlap(cols, width, relevance.shape[1])
    return (wy @ relevance.astype(np.float64) @ wx.T) / (wy.sum(1)[:, None] * wx.sum(1)[None, :])


# -- argument checks (all before any allocation) -------------------------------------------------
def _checked_levels(levels: Any, available: int) -> list[int]:
    if isinstance(levels, (numbers.Integral,)) and not isinstance(levels, bool):
        levels = [levels]
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (Sequence, np.ndarray, range)):
        raise TypeError(f"levels must be a sequence of ints (e.g. [0, 1, 2, 3]), got {levels!r}")
    found = list(levels)
    if not found:
        raise ValueError("levels is empty; name at least one mip level")
    for value in found:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"levels must be ints, got {value!r} ({type(value).__name__}) in {found!r}")
    found = [int(v) for v in found]
    for a, b in zip(found, found[1:], strict=False):
        if a == b:
            raise ValueError(f"levels {found!r} name level {a} twice; each level once, increasing")
        if b < a:
            raise ValueError(f"levels {found!r} are not increasing ({a} before {b}); list them finest first")
    bad = [v for v in found if not 0 <= v < available]
    if bad:
        raise ValueError(f"level {bad[0]} does not exist; every image of this batch has levels 0..{available - 1}")
    return found


def _per_level(value: Any, count: int, what: str) -> list[Any]:
    """A scalar for every level but the first (the coarsest keeps all) or one value (or None) per level."""
    if value is None:
        return [None] * count
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        values = list(value)
        if len(values) != count:
            raise ValueError(f"{what} needs one value (or None) per level ({count}), got {len(values)}")
        return values
    if count == 1:
        raise ValueError(f"a single {what} applies to every level but the coarsest, which keeps all; with one level "
                         f"that selects nothing: pass [{value!r}] to select cells of the only level")
    return [value] * (count - 1) + [None]


def _as_mask(mask: Any, shape: tuple[int, int, int], level: int) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise TypeError(f"the mask of level {level} must be bool (True = keep), got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"the mask of level {level} must have shape (B, rows, cols) = {shape}, got {array.shape}")
    return array


def _relevance_maps(relevance: Any, count: int) -> list[np.ndarray]:
    if isinstance(relevance, (list, tuple)):
        if len(relevance) != count:
            raise ValueError(f"need one relevance map per image ({count}), got {len(relevance)}")
        return [as_relevance(r) for r in relevance]
    if getattr(relevance, "ndim", 0) == 3 and relevance.shape[-1] != 1:
        if relevance.shape[0] != count:
            raise ValueError(f"relevance (B, h, w) needs B = {count} maps, got {tuple(relevance.shape)}")
        return [as_relevance(r) for r in relevance]
    return [as_relevance(relevance)] * count


def _kept_cells(masks: Any, relevance: Any, threshold: Any, budget: Any, levels: list[int], patch: int,
                level_sizes: list[list[tuple[int, int]]]
                ) -> tuple[list[list[np.ndarray] | None], list[list[np.ndarray]] | None]:
    """Per level: None (every cell) or, per image, the kept cells' flat indices in its grid (row-major); and,
    where relevance is given, per level and image the (rows, cols) mean relevance of every cell."""
    count = len(level_sizes)
    grid = [[(-(-size[li][1] // patch), -(-size[li][0] // patch)) for size in level_sizes]
            for li in range(len(levels))]
    largest = [(max(r for r, _ in g), max(c for _, c in g)) for g in grid]
    if masks is not None and relevance is not None:
        raise ValueError("pass masks or relevance (with threshold or budget), not both")
    if relevance is None and (threshold is not None or budget is not None):
        raise ValueError("threshold and budget select cells by relevance; pass relevance= too")
    per_level: list[Any]
    if masks is not None:
        per_level = _per_level(masks, len(levels), "masks") if isinstance(masks, (list, tuple)) else None
        if per_level is None:
            raise TypeError(f"masks must be a list with one bool (B, rows, cols) mask or None per level, got "
                            f"{type(masks).__name__}")
        per_level = [None if m is None else _as_mask(m, (count, *largest[li]), levels[li])
                     for li, m in enumerate(per_level)]
    elif relevance is not None:
        if (threshold is None) == (budget is None):
            raise ValueError("with relevance pass exactly one of threshold (keep cells at or above it) or budget "
                             "(keep the most relevant cells)")
        maps = _relevance_maps(relevance, count)
        rules = _per_level(threshold if budget is None else budget, len(levels),
                           "threshold" if budget is None else "budget")
        scores_of = [[cell_relevance(maps[b], sizes[level], patch) for b, sizes in enumerate(level_sizes)]
                     for level in levels]
        per_level = []
        for li, rule in enumerate(rules):
            if rule is None:
                per_level.append(None)
                continue
            if budget is None:
                rule = finite_float(rule, f"threshold of level {levels[li]}", 0.0, 1.0)
            else:
                rule = positive_int(rule, f"budget of level {levels[li]}")
            mask = np.zeros((count, *largest[li]), bool)
            for b in range(count):
                scores = scores_of[li][b]
                if budget is None:
                    keep = scores >= rule
                else:
                    order = np.argsort(-scores.ravel(), kind="stable")[:rule]
                    keep = np.zeros(scores.size, bool)
                    keep[order] = True
                    keep = keep.reshape(scores.shape)
                mask[b, :keep.shape[0], :keep.shape[1]] = keep
            per_level.append(mask)
    else:
        return [None] * len(levels), None
    kept: list[list[np.ndarray] | None] = []
    for li, mask in enumerate(per_level):
        if mask is None:
            kept.append(None)
            continue
        cells = []
        for b in range(count):
            rows, cols = grid[li][b]
            own = np.flatnonzero(mask[b, :rows, :cols])
            if own.size == 0:
                raise ValueError(f"level {levels[li]} of image {b} keeps no cell after masking; keep at least one "
                                 "(lower the threshold, raise the budget, or leave the level unmasked)")
            cells.append(own)
        kept.append(cells)
    return kept, scores_of if relevance is not None else None


# -- the call ---------------------------------------------------------------------------------------
def grids(batch: PyramidBatch, levels: Any, patch: int | None = None, *, as_images: bool = False,
          masks: Any = None, relevance: Any = None, threshold: Any = None, budget: Any = None,
          device: Any = "cpu") -> list[LevelGrid] | list[LevelImage]:
    """The patch grids (or level images) of `levels` of every image of `batch`, one dispatch per array texture.

    levels: increasing distinct ints, each a level every image has. patch: cell side in texels of its level
    (a positive int up to `glmip.limits.MAX_PATCH`, not larger than both sides of any requested level);
    needed for tokens, optional with `as_images` (then images are padded to a multiple of it).
    masks: a list with one entry per level, None (keep every cell) or bool (B, rows, cols) over the batch's
    largest grid (True = keep; entries outside an image's own grid are ignored). relevance: one (h, w) map
    for all images, a list of B maps or a (B, h, w) array/tensor (values as `glmip.as_relevance`), with
    `threshold` (keep cells whose mean relevance is >= it) or `budget` (keep the `budget` most relevant
    cells, ties to the earlier cell): a scalar applies to every level but the coarsest requested, which
    keeps all (the base of the sparse pyramid); a list gives one value or None per level. Masking is for
    tokens only. device: where the tensors go ('cpu', 'cuda', ...).

    Returns one `LevelGrid` (or `LevelImage`) per level, in `levels` order; their tensors are views of one
    transfer. Raises ValueError/TypeError naming the bad value before anything is allocated, including a
    level that keeps no cell of some image.
    """
    import torch

    from .bridge import check_destination, persistent_buffer_to_tensor

    batch._check_open()
    if not isinstance(as_images, bool):
        raise TypeError(f"as_images must be a bool, got {as_images!r}")
    available = min(len(a.sizes) for a in batch.arrays)
    levels = _checked_levels(levels, available)
    if patch is None:
        if not as_images:
            raise ValueError("tokens need a patch (the cell side in texels, e.g. 4 or 16); or pass as_images=True")
    else:
        patch = positive_int(patch, "patch")
        if patch > MAX_PATCH:
            raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} texels a side; raise "
                             "glmip.limits.MAX_PATCH to go past it")
        for array in batch.arrays:
            for level in levels:
                w, h = array.sizes[level]
                if patch > max(w, h):
                    raise ValueError(f"patch {patch} is larger than level {level} ({w}x{h}) of a {array.width}x"
                                     f"{array.height} image in both directions; use a smaller patch or drop the "
                                     "level")
    image_levels = [batch.arrays[int(a)].sizes for a in batch.where[:, 0]]
    if as_images and (masks is not None or relevance is not None or threshold is not None or budget is not None):
        raise ValueError("masks, relevance, threshold and budget select token cells; level images are always whole "
                         "(pass as_images=False for a sparse pyramid)")
    kept, scores = _kept_cells(masks, relevance, threshold, budget, levels, patch or 1, image_levels)

    channels = batch.channels
    plans = (_image_plan(batch, levels, patch, image_levels) if as_images
             else _token_plan(batch, levels, patch, kept, scores, image_levels))
    total = sum(int(np.prod(shape)) for shape, _ in plans)
    check_count(total // max(channels, 1), f"texels of the requested grids ({total // channels})", MAX_TOKEN_SAMPLES,
                "request fewer levels or images per call, or raise glmip.limits.MAX_TOKEN_SAMPLES")
    check_storage(batch.context, total * 4, f"the grids of levels {levels}", "request fewer levels or images per call")
    check_destination(None, (total,), device)

    cells_by_array = _cells_by_array(batch, plans)
    ctx = batch.context
    program = ctx.program("grids.comp", CHANNELS=channels)
    samples = ctx.persistent_buffer("tokens", total * 4)
    sampler = ctx.sampler(*NEAREST_MIPMAP, WRAP_MODES["clamp"])
    gl = ctx.gl
    program["images"] = 0
    samples.bind_to_storage_buffer(2)
    for array, table in cells_by_array:
        with scratch(ctx) as buffers, bound_array(ctx, array.name, sampler):
            buffers.append(gl.buffer(table))
            buffers[0].bind_to_storage_buffer(0)
            program["cell_count"] = table.shape[0] // 2
            dispatch_flat(program, table.shape[0] // 2, _LOCAL)
    gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
    flat = persistent_buffer_to_tensor(ctx, "tokens", (total,), device=device).tensor

    results: list[Any] = []
    start = 0
    for li, (shape, meta) in enumerate(plans):
        size = int(np.prod(shape))
        values = flat[start:start + size].view(shape)
        start += size
        if as_images:
            results.append(LevelImage(levels[li], values, torch.from_numpy(meta["sizes"]).to(values.device)))
        else:
            results.append(LevelGrid(levels[li], int(patch), values,
                                     torch.from_numpy(meta["positions"]).to(values.device),
                                     torch.from_numpy(meta["valid"]).to(values.device),
                                     torch.from_numpy(meta["grid"]).to(values.device), meta["shape"],
                                     None if meta["relevance"] is None
                                     else torch.from_numpy(meta["relevance"]).to(values.device)))
    return results


def _token_plan(batch: PyramidBatch, levels: list[int], patch: int, kept: list[list[np.ndarray] | None],
                scores: list[list[np.ndarray]] | None, image_levels: list[list[tuple[int, int]]]
                ) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    """Per level: the output shape (B, N, C, P, P) and its cells: per image, the positions of its N slots
    (-1 at padding), valid mask, grid and (with relevance) each cell's mean relevance."""
    count, channels = len(batch), batch.channels
    plans = []
    for li, level in enumerate(levels):
        grid = np.array([(-(-sizes[level][1] // patch), -(-sizes[level][0] // patch)) for sizes in image_levels],
                        np.int64).reshape(count, 2)
        chosen = kept[li] if kept[li] is not None else [np.arange(r * c) for r, c in grid]
        n = max(len(c) for c in chosen)
        positions = np.full((count, n, 2), -1, np.int64)
        valid = np.zeros((count, n), bool)
        relevance = None if scores is None else np.zeros((count, n), np.float32)
        for b, cells in enumerate(chosen):
            positions[b, :len(cells), 0] = cells // grid[b, 1]
            positions[b, :len(cells), 1] = cells % grid[b, 1]
            valid[b, :len(cells)] = True
            if relevance is not None:
                relevance[b, :len(cells)] = scores[li][b].ravel()[cells]
        meta = {"level": level, "positions": positions, "valid": valid, "grid": grid, "relevance": relevance,
                "shape": (int(grid[:, 0].max()), int(grid[:, 1].max()))}
        plans.append(((count, n, channels, patch, patch), meta))
    return plans


def _image_plan(batch: PyramidBatch, levels: list[int], patch: int | None,
                image_levels: list[list[tuple[int, int]]]) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    """Per level: the output shape (B, C, H, W) (largest level, padded to a multiple of `patch` when given)."""
    count, channels = len(batch), batch.channels
    step = patch or 1
    plans = []
    for level in levels:
        sizes = np.array([(s[level][1], s[level][0]) for s in image_levels], np.int64).reshape(count, 2)
        height = -(-int(sizes[:, 0].max()) // step) * step
        width = -(-int(sizes[:, 1].max()) // step) * step
        plans.append(((count, channels, height, width), {"level": level, "sizes": sizes}))
    return plans


def _cells_by_array(batch: PyramidBatch, plans: list[tuple[tuple[int, ...], dict[str, Any]]]
                    ) -> list[tuple[Any, np.ndarray]]:
    """The cell table (2 uvec4 a cell: layer, level, x0, y0 / base, stride_c, stride_y, w | h << 16) of each
    array texture, every requested level of its images in one table."""
    where = batch.where
    images = np.arange(len(batch))[:, None]
    per_level = []  # (B, cells, 2, 4) per level
    start = 0
    for shape, meta in plans:
        if "positions" in meta:
            _, n, channels, patch, _ = shape
            positions, valid = meta["positions"], meta["valid"]
            x0 = np.where(valid, positions[..., 1] * patch, _FAR)
            y0 = np.where(valid, positions[..., 0] * patch, _FAR)
            base = start + (images * n + np.arange(n)) * (channels * patch * patch)
            per_level.append(_rows(where[:, 1:], meta["level"], x0, y0, base, patch * patch, patch, patch, patch))
        else:
            _, channels, height, width = shape
            ty, tx = np.meshgrid(np.arange(0, height, IMAGE_TILE), np.arange(0, width, IMAGE_TILE), indexing="ij")
            tx, ty = tx.ravel()[None, :], ty.ravel()[None, :]
            base = start + images * (channels * height * width) + ty * width + tx
            per_level.append(_rows(where[:, 1:], meta["level"], np.broadcast_to(tx, base.shape),
                                   np.broadcast_to(ty, base.shape), base, height * width, width,
                                   np.minimum(IMAGE_TILE, width - tx), np.minimum(IMAGE_TILE, height - ty)))
        start += int(np.prod(shape))
    tables = []
    for index, array in enumerate(batch.arrays):
        members = where[:, 0] == index
        tables.append((array, np.ascontiguousarray(np.concatenate([rows[members].reshape(-1, 4)
                                                                   for rows in per_level]))))
    return tables


def _rows(layer: np.ndarray, level: int, x0: np.ndarray, y0: np.ndarray, base: np.ndarray, stride_c: int,
          stride_y: int, width: Any, height: Any) -> np.ndarray:
    """The cells of every image as pairs of uvec4 rows: (B, cells, 2, 4) uint32 (layer is (B, 1))."""
    rows = np.empty((*base.shape, 2, 4), np.uint32)
    rows[..., 0, 0] = layer
    rows[..., 0, 1] = level
    rows[..., 0, 2] = x0
    rows[..., 0, 3] = y0
    rows[..., 1, 0] = base
    rows[..., 1, 1] = stride_c
    rows[..., 1, 2] = stride_y
    rows[..., 1, 3] = np.asarray(width, np.uint32) | (np.asarray(height, np.uint32) << 16)
    return rows
