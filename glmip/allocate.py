"""From relevance to levels of detail: a per-pixel LOD map, and a token layout within a budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .detail import DetailPyramid, check_detail
from .layout import ClassBudgets, TokenLayout
from .limits import MAX_PATCH, check_context
from .relevance import RelevancePyramid, build_relevance_pyramid, prepare_relevance

if TYPE_CHECKING:
    from .gl.context import GLContext

MAX_BUDGET = 1 << 31  # tokens an image: past any texture (32768² / 1² cells is 2^30)
MAX_ALLOCATION_LEVEL = 30  # patch << level must stay a plain int: 16 << 30 pixels is past any image

__all__ = ["TokenLayout", "ClassBudgets", "allocate", "allocate_batch", "spread_rank", "root_level", "FLOOR_SHARE"]


def allocate(relevance: Any, budget: int = 256, patch: int = 16, min_level: int = 0, max_level: int | None = None,
             image_size: tuple[int, int] | None = None, *, classes: ClassBudgets | None = None,
             context: GLContext | None = None, detail: DetailPyramid | None = None) -> TokenLayout:
    """Split the image into at most `budget` square tokens, finest where relevance stands out most.

    `relevance` is a map (any resolution, see `as_relevance`) or a `RelevancePyramid` whose cell is
    `patch << min_level`. `image_size` = (width, height) of level 0, default the relevance map's own.
    One image of `allocate_batch`, which documents the rule; with a `context` the relevance pyramid
    is built on the GPU, else by its numpy reference. `detail`: the image's `glmip.detail.DetailPyramid`
    (same patch and min_level) to split by relevance-weighted detail lost instead (see `allocate_batch`).
    """
    return allocate_batch([relevance], budget, patch, image_sizes=None if image_size is None else [image_size],
                          classes=classes, min_level=min_level, max_level=max_level, context=context,
                          detail=None if detail is None else [detail])[0]


def allocate_batch(relevances: Sequence[Any], budget: int = 256, patch: int = 16, *,
                   image_sizes: Sequence[tuple[int, int] | None] | None = None, classes: ClassBudgets | None = None,
                   min_level: int = 0, max_level: int | None = None,
                   context: GLContext | None = None,
                   detail: Sequence[DetailPyramid] | None = None) -> list[TokenLayout]:
    """Token layouts for a batch of images, each at most `budget` square tokens, computed together.

    `relevances`: one relevance map (see `as_relevance`) or already built `RelevancePyramid` (cell
    `patch << min_level`) per image; `image_sizes`: one (width, height) or None (the map's own) per image.

    The rule, per image: a quadtree starts from a grid of root cells at `max_level` (default: the
    finest level whose grid takes at most an eighth of the budget and fits `classes`) and splits
    cells into their quadrants inside the image, greedily, in the order of their split score, while
    the budget (and each class's maximum) allows and the cell is above `min_level`. Cells cover the
    image with no gaps and no overlaps. With `ClassBudgets`, a first phase takes only the splits that
    add tokens to a class below its minimum. This is the greedy `glmip.reference.allocate_greedy`,
    computed without a loop over cells: the order is static, so each phase is a few vectorised
    passes of cumulative token counts over the cells in that order.

    Convention (score and order):
        score = in-image area x max(mean - floor, 0), mean the cell's relevance-pyramid mean and floor
        the median of the finest level's means: the relevance mass standing out above the image's
        typical relevance. A median under `FLOOR_SHARE` (a tenth) of the largest mean counts as no
        background at all (floor 0: a gaze's tail, a 0/1 mask), and the score is the plain relevance
        mass. Subtracting the floor is what lets a map spread over a broad
        range (saliency) concentrate tokens: plain mass puts a coarse cell ahead of any cell of a
        quarter its area unless the latter is 4x as relevant, which ends in the uniform grid.
        A cell's effective score is the smallest score along its ancestry (a cell is never taken
        before its parent); cells go in decreasing effective score, ties by the larger relevance mass
        (mean x area, capped likewise), then coarsest level first, then in the level's bit-reversed
        Morton order, which spreads tied cells over the image (tied cells
        that do not all fit are spread evenly, not packed into the top-left corner).

    With `detail` (one `glmip.detail.DetailPyramid` per image, built with this `patch` and `min_level`
    from the image itself), cells go by the relevance-weighted distortion a split removes instead:
        gain(c) = sum over c's quadrants q inside the image of mean(q) x detail(q),
    mean(q) the quadrant's relevance-pyramid mean and detail(q) the energy q loses when represented one
    level coarser (at c's level), so each split lowers sum over tokens of relevance x detail lost by its
    gain; a cell's score is the largest gain of the cell or of any splittable cell below it (a split that
    opens the way to a large gain further down ranks with that gain; parents so never rank below their
    kids, and raising relevance somewhere cannot lift a cap on cells elsewhere). No floor is subtracted
    (relevance is a weight: uniform relevance gives the content-only quadtree, a gaze weighs detail by
    closeness to it; a subtree of zero relevance or zero detail is split last). Ties as above. Every
    detail pyramid is checked (type, patch, min_level, image size, grid, finite and >= 0) before any
    relevance pyramid is built.
    """
    if isinstance(relevances, (np.ndarray, RelevancePyramid)) or hasattr(relevances, "detach") \
            or not isinstance(relevances, Sequence):
        raise TypeError(f"relevances must be a list of relevance maps or RelevancePyramids, got "
                        f"{type(relevances).__name__}")
    for name, value in (("budget", budget), ("patch", patch), ("min_level", min_level)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if patch < 1 or budget < 1 or min_level < 0:
        raise ValueError(f"need budget >= 1, patch >= 1, min_level >= 0; got {budget}, {patch}, {min_level}")
    if budget > MAX_BUDGET:
        raise ValueError(f"budget {budget} is over the limit of {MAX_BUDGET} tokens an image")
    budget, patch, min_level = int(budget), int(patch), int(min_level)
    if patch > MAX_PATCH:
        raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} samples a side; "
                         "raise glmip.limits.MAX_PATCH to go past it")
    if min_level > MAX_ALLOCATION_LEVEL:
        raise ValueError(f"min_level {min_level} is over {MAX_ALLOCATION_LEVEL} (a token of patch << level pixels "
                         "would be wider than any image)")
    if max_level is not None and (not isinstance(max_level, (int, np.integer)) or isinstance(max_level, bool)):
        raise TypeError(f"max_level must be an int or None, got {max_level!r}")
    if max_level is not None and max_level < min_level:
        raise ValueError(f"max_level {max_level} is below min_level {min_level}")
    if context is not None:
        check_context(context)
    if classes is not None and not isinstance(classes, ClassBudgets):
        raise TypeError(f"classes must be a glmip.ClassBudgets, got {type(classes).__name__}")
    if classes is not None and classes.relevant[0] + classes.background[0] > budget:
        raise ValueError(f"a budget of {budget} tokens is below the class minimums {classes.relevant[0]} + "
                         f"{classes.background[0]} of {classes}; need budget >= their sum")
    if detail is not None:
        if isinstance(detail, DetailPyramid) or not isinstance(detail, Sequence):
            raise TypeError(f"detail must be a list of glmip.detail.DetailPyramid, one per image, got "
                            f"{type(detail).__name__}")
        if len(detail) != len(relevances):
            raise ValueError(f"detail has {len(detail)} pyramids for {len(relevances)} relevance maps; give one per "
                             "image")
    if image_sizes is None:
        image_sizes = [None] * len(relevances)
    if len(image_sizes) != len(relevances):
        raise ValueError(f"image_sizes has {len(image_sizes)} entries for {len(relevances)} relevance maps; "
                         "give one (width, height) or None per map")
    for size in image_sizes:
        if size is not None and (not hasattr(size, "__len__") or len(size) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)):
            raise ValueError(f"an image size must be two positive ints (width, height) or None, got {size!r}")
    cell = patch << min_level
    pyramids = []
    validated = []
    for relevance, size in zip(relevances, image_sizes, strict=True):
        if isinstance(relevance, RelevancePyramid):
            if relevance.cell != cell or (size is not None and tuple(size) != relevance.image_size):
                raise ValueError(f"a relevance pyramid has cell {relevance.cell} over {relevance.image_size}; this "
                                 f"allocation needs cell {cell} (patch << min_level) over {size or 'its image'}")
            validated.append(relevance)
        else:  # every map checked before any pyramid is built, and only once
            validated.append(prepare_relevance(relevance, cell, None if size is None else tuple(size)))
    if detail is not None:
        for index, (prepared, pyramid_detail) in enumerate(zip(validated, detail, strict=True)):
            size = prepared.image_size if isinstance(prepared, RelevancePyramid) else prepared[2]
            check_detail(pyramid_detail, patch, min_level, size, f"detail pyramid {index}")
    for prepared in validated:
        pyramids.append(prepared if isinstance(prepared, RelevancePyramid)
                        else build_relevance_pyramid(*prepared, context))
    if not pyramids:
        return []
    # Images sharing one pyramid object (uniform relevance, one map for all) get one allocation.
    keys = [id(p) for p in pyramids] if detail is None else [(id(p), id(d)) for p, d in zip(pyramids, detail,
                                                                                         strict=True)]
    first_of = {key: i for i, key in reversed(list(enumerate(keys)))}
    distinct = sorted(set(first_of.values()))
    if detail is None:
        floors = _floors([pyramids[i].levels[0][..., 0] for i in distinct])
        trees = [_Tree.build(pyramids[i], budget, patch, min_level, max_level, classes, floor)
                 for i, floor in zip(distinct, floors, strict=True)]
    else:
        trees = [_Tree.build(pyramids[i], budget, patch, min_level, max_level, classes, 0.0, detail[i])
                 for i in distinct]
    split = _greedy_splits(trees, budget, classes)
    layouts = {distinct[k]: tree.layout(s, patch, min_level, classes)
               for k, (tree, s) in enumerate(zip(trees, split, strict=True))}
    return [layouts[first_of[key]] for key in keys]


def _detail_gain(means: np.ndarray, energy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) float64 split scores of a level of `shape` from its quadrants' relevance means and detail
    energies (the finer level's (2h', 2w') texels, h' <= h): the sum of mean x energy over each cell's
    quadrants, added in the order (top-left, top-right, bottom-left, bottom-right) as the reference does."""
    h, w = shape
    weighted = np.zeros((2 * h, 2 * w))
    weighted[:means.shape[0], :means.shape[1]] = means.astype(np.float64) * energy.astype(np.float64)
    return weighted[0::2, 0::2] + weighted[0::2, 1::2] + weighted[1::2, 0::2] + weighted[1::2, 1::2]


def _detail_reach(levels: tuple[np.ndarray, ...], detail: DetailPyramid, root: int) -> dict[int, np.ndarray]:
    """Per splittable level k (1..root), (h_k, w_k) float64: the largest `_detail_gain` of the cell or of any
    splittable cell below it, computed from the finest level up."""
    reach: dict[int, np.ndarray] = {}
    for k in range(1, root + 1):
        shape = levels[k].shape[:2]
        gain = _detail_gain(levels[k - 1][..., 0], detail.levels[k - 1], shape)
        if k > 1:
            below = np.zeros((2 * shape[0], 2 * shape[1]))
            below[:reach[k - 1].shape[0], :reach[k - 1].shape[1]] = reach[k - 1]
            gain = np.maximum(gain, below.reshape(shape[0], 2, shape[1], 2).max(axis=(1, 3)))
        reach[k] = gain
    return reach


FLOOR_SHARE = 0.1  # a typical relevance below this share of the peak counts as no background at all


def _floors(means: list[np.ndarray]) -> list[float]:
    """The relevance each score subtracts: the median of an image's finest cells' means, or 0 where that
    median is under `FLOOR_SHARE` of the largest mean (a near-zero background, as a gaze's tail).
    Computed for all images of one grid shape in one pass."""
    floors = [0.0] * len(means)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, grid in enumerate(means):
        by_shape.setdefault(grid.shape, []).append(index)
    for members in by_shape.values():
        stack = np.stack([means[i] for i in members]).reshape(len(members), -1)
        medians, peaks = np.median(stack, axis=1), stack.max(axis=1)
        for i, median, peak in zip(members, medians, peaks, strict=True):
            floors[i] = float(median) if median >= FLOOR_SHARE * float(peak) else 0.0
    return floors


def spread_rank(x: np.ndarray, y: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The tie order of cells (x, y) of a (width, height) grid: their Morton code (x bits even, y bits
    odd) with its bits reversed, so consecutive ranks lie far apart (0, then the middle row, column,
    centre, then quarters ...). int64, unique within the grid."""
    bits = max(1, int(max(grid) - 1).bit_length())
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    morton = np.zeros_like(x)
    for b in range(bits):
        morton |= ((x >> b) & 1) << (2 * b) | ((y >> b) & 1) << (2 * b + 1)
    rank = np.zeros_like(morton)
    for b in range(2 * bits):
        rank |= ((morton >> b) & 1) << (2 * bits - 1 - b)
    return rank


def root_level(pyramid: RelevancePyramid, budget: int, patch: int, min_level: int, max_level: int | None,
               classes: ClassBudgets | None) -> int:
    """The quadtree's root level (see `allocate_batch`); ValueError when its grid does not fit."""
    top = min_level + len(pyramid.levels) - 1  # one cell covers the image

    def over(level: int) -> bool:
        texels = pyramid.levels[level - min_level]
        if texels.shape[0] * texels.shape[1] > budget:
            return True
        if classes is None:
            return False
        relevant = int((texels[..., 1].astype(np.float64) >= classes.threshold).sum())
        return relevant > classes.relevant[1] or texels.shape[0] * texels.shape[1] - relevant > classes.background[1]

    if max_level is None:
        level = min_level
        while level < top and (pyramid.levels[level - min_level].shape[0] * pyramid.levels[level - min_level].shape[1]
                               > max(1, budget // 8) or over(level)):
            level += 1
    else:
        level = min(max_level, top)  # coarser roots than one cell over the image would be the same single cell
    if over(level):
        width, height = pyramid.image_size
        count = pyramid.levels[level - min_level].shape[0] * pyramid.levels[level - min_level].shape[1]
        raise ValueError(f"a budget of {budget} tokens{' and class maxima ' + str(classes) if classes else ''} "
                         f"cannot cover a {width}x{height} image at max_level {level} (patch {patch}): it "
                         f"needs {count}; raise max_level or budget")
    return level


@dataclass(frozen=True)
class _StaticTree:
    """The cells of every splittable level of a quadtree over grids `shapes` (pyramid levels 0..top),
    coarsest level first, each level in spread order; a tree rooted at level r is the suffix from
    `tail[r]` (levels r..1), `count[r]` cells."""

    level: np.ndarray
    x: np.ndarray
    y: np.ndarray
    kids: np.ndarray  # quadrants inside the image
    parent: np.ndarray  # index of the parent cell, -1 at the top level
    blocks: dict[int, slice]
    tail: dict[int, int]
    count: dict[int, int]


@lru_cache(maxsize=64)
def _static_tree(shapes: tuple[tuple[int, int], ...]) -> _StaticTree:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("level", "x", "y", "kids", "parent")}
    blocks, tail = {}, {}
    index_above = None
    offset = 0
    for k in range(len(shapes) - 1, 0, -1):
        h, w = shapes[k]
        yy, xx = np.mgrid[:h, :w]
        order = np.argsort(spread_rank(xx.ravel(), yy.ravel(), (w, h)), kind="stable")
        x, y = xx.ravel()[order], yy.ravel()[order]
        index = np.empty((h, w), np.int64)
        index[y, x] = offset + np.arange(h * w)
        fine_h, fine_w = shapes[k - 1]
        parts["level"].append(np.full(h * w, k, np.int64))
        parts["x"].append(x)
        parts["y"].append(y)
        parts["kids"].append((np.minimum(2 * x + 2, fine_w) - 2 * x) * (np.minimum(2 * y + 2, fine_h) - 2 * y))
        parts["parent"].append(np.full(h * w, -1, np.int64) if index_above is None else index_above[y >> 1, x >> 1])
        blocks[k] = slice(offset, offset + h * w)
        tail[k] = offset
        index_above, offset = index, offset + h * w
    tail[0] = offset
    count = {k: offset - t for k, t in tail.items()}
    arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    return _StaticTree(**arrays, blocks=blocks, tail=tail, count=count)


@dataclass
class _Tree:
    """One image's splittable cells (pyramid levels 1..root, coarsest first, each level in spread order)
    as flat arrays, with what the greedy needs per cell."""

    pyramid: RelevancePyramid
    root: int  # pyramid level of the roots (level - min_level)
    level: np.ndarray  # pyramid level of each cell
    x: np.ndarray
    y: np.ndarray
    parent: np.ndarray  # index of the parent cell in these arrays, -1 for a root
    effective: np.ndarray  # float64 effective score
    mass: np.ndarray  # float64 relevance mass (mean x area): the first tie-break among equal effective scores
    delta: np.ndarray  # (n, 3) int64: tokens, relevant tokens, background tokens a split adds
    roots: np.ndarray  # (3,) int64 token counts of the root grid
    keep: np.ndarray  # bool: cells the greedy may split (the others provably never split)

    @staticmethod
    def build(pyramid: RelevancePyramid, budget: int, patch: int, min_level: int, max_level: int | None,
              classes: ClassBudgets | None, floor: float, detail: DetailPyramid | None = None) -> _Tree:
        root = root_level(pyramid, budget, patch, min_level, max_level, classes) - min_level
        levels = pyramid.levels
        shapes = tuple(level.shape[:2] for level in levels[:root + 1])
        static = _static_tree(shapes)
        threshold = classes.threshold if classes is not None else np.inf
        relevant = [level[..., 1].astype(np.float64) >= threshold for level in levels[:root + 1]]
        effective_parts, mass_parts, delta_parts = [], [], []
        effective_above = mass_above = None
        reach = _detail_reach(levels, detail, root) if detail is not None else {}
        for k in range(root, 0, -1):
            x, y, kids = static.x[static.blocks[k]], static.y[static.blocks[k]], static.kids[static.blocks[k]]
            texels = levels[k]
            if detail is None:
                score = texels[..., 2].astype(np.float64) * np.maximum(texels[..., 0].astype(np.float64) - floor, 0.0)
            else:
                score = reach[k]
            if effective_above is not None:
                h, w = score.shape
                score = np.minimum(score, np.repeat(np.repeat(effective_above, 2, 0), 2, 1)[:h, :w])
            effective_above = score
            effective_parts.append(score[y, x])
            mass = texels[..., 2].astype(np.float64) * texels[..., 0].astype(np.float64)
            if mass_above is not None:  # capped by the parent's too, so a parent always comes before its kids
                h, w = mass.shape
                mass = np.minimum(mass, np.repeat(np.repeat(mass_above, 2, 0), 2, 1)[:h, :w])
            mass_above = mass
            mass_parts.append(mass[y, x])
            if classes is not None:
                h, w = score.shape
                fine_h, fine_w = levels[k - 1].shape[:2]
                fine = np.zeros((2 * h, 2 * w), np.int64)
                fine[:fine_h, :fine_w] = relevant[k - 1]
                relevant_kids = fine.reshape(h, 2, w, 2).sum(axis=(1, 3))[y, x]
                parent_relevant = relevant[k][y, x].astype(np.int64)
                delta_parts.append(np.stack([kids - 1, relevant_kids - parent_relevant,
                                             kids - relevant_kids - (1 - parent_relevant)], axis=1))
            else:
                delta_parts.append(np.stack([kids - 1, np.zeros_like(kids), np.zeros_like(kids)], axis=1))
        n = static.count[root]
        n_roots = shapes[root][0] * shapes[root][1]
        n_relevant = int(relevant[root].sum())
        effective = np.concatenate(effective_parts) if effective_parts else np.zeros(0)
        mass = np.concatenate(mass_parts) if mass_parts else np.zeros(0)
        delta = np.concatenate(delta_parts) if delta_parts else np.zeros((0, 3), np.int64)
        keep = np.ones(n, bool)
        if classes is None and n > budget:
            # After the first split that does not fit, fewer than 3 tokens are left, so only cells with
            # fewer than 4 kids can split; that split comes before the (budget + single-kid cells + 1)-th
            # best score, since that many splits add more tokens than the budget holds.
            m = min(n, budget + int((delta[:, 0] == 0).sum()) + 1)
            bar = np.partition(effective, n - m)[n - m]
            keep = (effective >= bar) | (delta[:, 0] < 3)
        tail = static.tail[root]
        return _Tree(pyramid, root, level=static.level[tail:], x=static.x[tail:], y=static.y[tail:],
                     parent=np.where(static.parent[tail:] >= tail, static.parent[tail:] - tail, -1),
                     effective=effective, mass=mass, delta=delta, keep=keep,
                     roots=np.array([n_roots, n_relevant, n_roots - n_relevant], np.int64))

    def layout(self, split: np.ndarray, patch: int, min_level: int, classes: ClassBudgets | None) -> TokenLayout:
        """The leaves of the quadtree whose split cells are `split` (bool per cell), sorted by (y, x, level)."""
        levels = self.pyramid.levels
        cells: list[np.ndarray] = []
        parent_split = np.ones(levels[self.root].shape[:2], bool)
        for k in range(self.root, -1, -1):
            h, w = levels[k].shape[:2]
            is_split = np.zeros((h, w), bool)
            if k > 0:
                members = self.level == k
                is_split[self.y[members], self.x[members]] = split[members]
            leaf_y, leaf_x = np.nonzero(parent_split & ~is_split)
            cells.append(np.stack([leaf_x, leaf_y, np.full(leaf_x.shape, k)], axis=1))
            if k > 0:
                fine_h, fine_w = levels[k - 1].shape[:2]
                parent_split = np.repeat(np.repeat(is_split, 2, axis=0), 2, axis=1)[:fine_h, :fine_w]
        leaves = np.concatenate(cells)
        side = patch << (leaves[:, 2] + min_level)
        px, py = leaves[:, 0] * side, leaves[:, 1] * side
        order = np.lexsort((leaves[:, 2], px, py))
        leaves, side, px, py = leaves[order], side[order], px[order], py[order]
        relevant = None
        if classes is not None:
            relevant = np.zeros(len(leaves), bool)
            for k in np.unique(leaves[:, 2]):
                m = leaves[:, 2] == k
                relevant[m] = levels[k][leaves[m, 1], leaves[m, 0], 1].astype(np.float64) >= classes.threshold
        sizes = side.astype(np.float64)
        width, height = self.pyramid.image_size
        return TokenLayout(cx=px + sizes / 2, cy=py + sizes / 2, size=sizes, level=leaves[:, 2] + min_level,
                           patch=patch, image_size=(int(width), int(height)), relevant=relevant)


def _greedy_splits(trees: list[_Tree], budget: int, classes: ClassBudgets | None) -> list[np.ndarray]:
    """Which cells of each tree the greedy splits (bool per cell), for all trees at once.

    The greedy visits cells in one static order (decreasing effective score, then decreasing
    relevance mass, both capped by the parent's, then coarser, then spread rank), so its choices
    depend only on the running token counts: a cell splits when its
    parent split and its tokens fit (phase 1: and it adds tokens to a class below its minimum).
    Class counts never fall (a parent's max is the max of its kids'), so a cell that does not fit
    now never will: each pass drops those, splits the longest prefix whose cumulative counts fit,
    and repeats from the first cell that no longer fits; a handful of passes per phase.
    """
    sizes = [len(t.level) for t in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    image = np.repeat(np.arange(len(trees)), sizes)
    level = np.concatenate([t.level for t in trees])
    parent = np.concatenate([np.where(t.parent >= 0, t.parent + o, -1) for t, o in zip(trees, offsets, strict=False)])
    effective = np.concatenate([t.effective for t in trees])
    mass = np.concatenate([t.mass for t in trees])
    delta = np.concatenate([t.delta for t in trees]).reshape(-1, 3)
    keep = np.concatenate([t.keep for t in trees])
    kept = np.nonzero(keep)[0]  # global index order is (image, static position)
    # the greedy's visiting order, image by image: effective score, then mass, then the static order
    order = kept[np.lexsort((-mass[kept], -effective[kept], image[kept]))]
    counts = np.stack([t.roots for t in trees])  # (B, 3) tokens, relevant, background
    maxima = np.array([budget, classes.relevant[1], classes.background[1]] if classes is not None
                      else [budget, budget, budget], np.int64)
    minima = np.array([0, classes.relevant[0], classes.background[0]] if classes is not None else [0, 0, 0], np.int64)
    split = np.zeros(len(level), bool)
    levels_desc = range(int(level.max(initial=0)), 0, -1)

    at_level = [level == k for k in levels_desc]

    def reachable(candidate: np.ndarray) -> np.ndarray:
        """Cells whose parent is split or itself a reachable candidate (parents come first in the order)."""
        ok = np.zeros(len(level), bool)
        for here in at_level:  # coarse to fine, so a parent is decided before its kids
            cells = np.nonzero(candidate & here)[0]
            p = parent[cells]
            ok[cells] = (p < 0) | split[np.maximum(p, 0)] | ok[np.maximum(p, 0)] & (p >= 0)
        return ok

    def run(phase_one: bool) -> None:
        active = np.ones(len(trees), bool)
        if phase_one:
            active &= (counts[:, 1:] < minima[1:]).any(axis=1)
        candidate = keep & ~split & active[image]
        while True:
            room = maxima[None, :] - counts  # (B, 3)
            candidate &= active[image]
            cells = np.nonzero(candidate)[0]
            wanted = (delta[cells] <= room[image[cells]]).all(axis=1)
            if phase_one:
                deficient = counts < minima[None, :]
                deficient[:, 0] = False
                wanted &= ((delta[cells] > 0) & deficient[image[cells]]).any(axis=1)
            candidate[cells[~wanted]] = False
            candidate &= reachable(candidate)
            visit = order[candidate[order]]
            if len(visit) == 0:
                return
            owner = image[visit]
            starts = np.searchsorted(owner, np.arange(len(trees)))
            running = np.cumsum(delta[visit], axis=0)
            running -= np.concatenate([np.zeros((1, 3), np.int64), running])[starts][owner]  # per-image cumsum
            after = counts[owner] + running
            stop = (after > maxima[None, :]).any(axis=1)
            if phase_one:  # a class reaching its minimum changes which splits phase 1 wants: re-decide there
                before = after - delta[visit]
                deficient_now = counts[owner, 1:] < minima[1:]
                stop |= ((before[:, 1:] < minima[1:]) != deficient_now).any(axis=1)
            first_stop = np.full(len(trees), len(visit))
            np.minimum.at(first_stop, owner[stop], np.nonzero(stop)[0])
            take = np.arange(len(visit)) < first_stop[owner]
            split[visit[take]] = True
            np.add.at(counts, owner[take], delta[visit[take]])
            candidate[visit[take]] = False
            stopped = np.zeros(len(trees), bool)
            stopped[owner[stop]] = True
            if phase_one:
                stopped &= (counts[:, 1:] < minima[1:]).any(axis=1)
            active &= stopped
            if not active.any():
                return

    if classes is not None:
        run(phase_one=True)
    run(phase_one=False)
    return [split[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
