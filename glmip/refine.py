"""Coarse-to-fine refinement: split the tokens a model scores highest into their quadrants, within a budget,
and sample only the tokens that are new from the pyramids already built.

A quadtree layout (what `glmip.allocate` returns, or `cover_layout`'s uniform grid) goes in with one score
per token (`glmip.nn.class_attention`: where the class token looked); `refine` splits the best-scored
tokens one level finer while the budget allows and says which tokens of the result are new.
`sample_refined` samples just those from the same `PyramidBatch` (one dispatch per array texture, no
rebuild) and merges them with the tokens kept into the `TokenBatch` that sampling the refined layouts
from scratch gives, bit for bit. `refine_passes` runs the loop: coarse tokens -> scores -> refined
tokens -> scores -> ...

Convention (children, order):
    a token of level L covers [left, left + s) x [top, top + s), s = patch << L, left and top multiples of
    s (the quadtree's cells). Its children are the four quadrants of side s / 2 at level L - 1, those whose
    top-left corner lies inside the image: allocate's rule (a quadrant past the right or bottom edge is not
    a token), so edge tokens may have 2 children, or 1 (splitting such a token costs no token). Tokens keep
    allocate's order: by top edge, then left edge (row-major over the image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .allocate import MAX_ALLOCATION_LEVEL, MAX_BUDGET, spread_rank
from .layout import TokenLayout
from .limits import positive_int

if TYPE_CHECKING:
    import torch

    from .pyramid import PyramidBatch
    from .token_batch import TokenBatch

__all__ = ["Refinement", "refine", "refine_batch", "cover_layout", "sample_refined", "merge_refined",
           "refine_passes", "RefinePass"]


@dataclass(frozen=True)
class Refinement:
    """A layout refined one step: `layout` (the result), `source` (the layout refined), and the bookkeeping
    that lets a caller sample only what is new.

    new:     (K,) int64, increasing: indices into `layout` of the tokens made by splitting.
    kept:    (M,) int64, increasing: indices into `source` of the tokens carried over unchanged.
    kept_at: (M,) int64: where `source[kept]` sit in `layout` (increasing too: the order is kept).
    split:   (S,) int64, increasing: indices into `source` of the tokens that were split.
    len(layout) = M + K; len(source) = M + S.
    """

    layout: TokenLayout
    source: TokenLayout
    new: np.ndarray
    kept: np.ndarray
    kept_at: np.ndarray
    split: np.ndarray

    @property
    def new_layout(self) -> TokenLayout:
        """The new tokens alone, in `layout`'s order: the layout to sample (`PyramidBatch.tokens`)."""
        return _subset(self.layout, self.new)


def cover_layout(image_size: tuple[int, int], patch: int = 16, level: int = 2) -> TokenLayout:
    """The uniform quadtree cover of an image of `image_size` = (width, height) at `level`: every cell of
    the level's grid, ceil(width / s) x ceil(height / s) tokens of side s = patch << level, row-major,
    those on the right and bottom edges reaching past the image (sampling clamps there). Unlike
    `TokenLayout.grid`, which leaves partial blocks out, it covers every pixel exactly once, so it can
    be refined. The coarse pass of `refine_passes`."""
    width, height = _image_size(image_size, "image_size")
    patch = positive_int(patch, "patch")
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or not 0 <= level <= MAX_ALLOCATION_LEVEL:
        raise ValueError(f"level must be an int in 0..{MAX_ALLOCATION_LEVEL}, got {level!r}")
    side = patch << int(level)
    rows, cols = np.mgrid[0:-(-height // side), 0:-(-width // side)]
    n = rows.size
    return TokenLayout(cx=cols.ravel() * float(side) + side / 2.0, cy=rows.ravel() * float(side) + side / 2.0,
                       size=np.full(n, float(side)), level=np.full(n, int(level), np.int64), patch=patch,
                       image_size=(width, height))


def refine(layout: TokenLayout, scores: Any, budget: int, *, min_level: int = 0,
           image_size: tuple[int, int] | None = None) -> Refinement:
    """Split the tokens of `layout` with the highest `scores` into their children one level finer, as many
    as `budget` (the most tokens the result may hold) allows; one image of `refine_batch`, which documents
    the rule. `image_size`: the (width, height) the layout must be for (checked when given)."""
    return refine_batch([layout], [scores], budget, min_level=min_level,
                        image_sizes=None if image_size is None else [image_size])[0]


def refine_batch(layouts: Sequence[TokenLayout], scores_per_image: Sequence[Any], budget: int | Sequence[int], *,
                 min_level: int = 0, image_sizes: Sequence[tuple[int, int]] | None = None) -> list[Refinement]:
    """Refine each image's layout by its scores: layouts[b] (a quadtree cover, see below) with
    scores_per_image[b] (len(layouts[b]) finite numbers >= 0, numpy or torch) under budget (one int for
    every image, or one per image).

    The rule, per image: the tokens above `min_level` are visited in decreasing score; ties go coarser
    first, then in the level's bit-reversed Morton order (`glmip.allocate.spread_rank`, as allocate breaks
    ties: tied tokens that do not all fit are spread over the image). A token splits when its children
    fit: a split adds (children - 1) tokens (3 inside the image, fewer on its right and bottom edges), and
    a token whose split does not fit is passed over for later, cheaper ones. Children are not split again
    in the same call (one call, one level). This is the sequential greedy of `glmip.reference.refine_greedy`;
    it is monotone (raising one token's score, the others unchanged, never stops it being split: the
    tokens ahead of it become a prefix of those ahead before, which used no more of the budget).

    Every layout, score vector and budget is checked before any is refined: a layout must be a quadtree
    cover (integer levels >= min_level, size = patch << level, cells on their level's grid, every pixel of
    its image covered exactly once; `glmip.allocate` and `cover_layout` make them), of `image_sizes[b]`
    when given; scores of its length, finite, >= 0; the budget >= the layout's token count. ValueError
    (TypeError for wrong types) naming the image and the value otherwise; min_level < 0 (refining past
    level 0) too.
    """
    if isinstance(layouts, TokenLayout) or not isinstance(layouts, Sequence):
        raise TypeError(f"layouts must be a list of glmip.TokenLayout, one per image, got {type(layouts).__name__}")
    if not isinstance(scores_per_image, Sequence) or isinstance(scores_per_image, (str, bytes)):
        raise TypeError(f"scores_per_image must be a list of score vectors, one per image, got "
                        f"{type(scores_per_image).__name__}")
    if len(scores_per_image) != len(layouts):
        raise ValueError(f"scores_per_image has {len(scores_per_image)} entries for {len(layouts)} layouts; give "
                         "one score vector per image")
    if not isinstance(min_level, (int, np.integer)) or isinstance(min_level, bool):
        raise TypeError(f"min_level must be an int, got {min_level!r}")
    if min_level < 0:
        raise ValueError(f"min_level {min_level} is below 0: level 0 is the image's own resolution, nothing refines "
                         "past it")
    budgets = _budgets(budget, len(layouts))
    if image_sizes is not None:
        if len(image_sizes) != len(layouts):
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {len(layouts)} layouts")
        image_sizes = [_image_size(size, f"image_sizes[{b}]") for b, size in enumerate(image_sizes)]
    checked = []
    for b, (layout, scores) in enumerate(zip(layouts, scores_per_image, strict=True)):
        where = f"layout {b}" if len(layouts) > 1 else "the layout"
        cells = _quadtree_cells(layout, int(min_level), where)
        if image_sizes is not None and tuple(layout.image_size) != image_sizes[b]:
            raise ValueError(f"{where} was made for an image of {layout.image_size[0]}x{layout.image_size[1]}, not "
                             f"{image_sizes[b][0]}x{image_sizes[b][1]}")
        values = _scores(scores, len(layout), where)
        if budgets[b] < len(layout):
            raise ValueError(f"a budget of {budgets[b]} tokens is below the {len(layout)} tokens {where} already "
                             "holds; refining only adds tokens")
        checked.append((layout, cells, values))
    return [_refine_one(layout, cells, values, budgets[b], int(min_level))
            for b, (layout, cells, values) in enumerate(checked)]


def _refine_one(layout: TokenLayout, cells: tuple[np.ndarray, np.ndarray, np.ndarray], scores: np.ndarray,
                budget: int, min_level: int) -> Refinement:
    left, top, level = cells
    width, height = layout.image_size
    side = np.int64(layout.patch) << level
    half = side >> 1
    splittable = np.nonzero(level > min_level)[0]
    kids_x = 1 + (left[splittable] + half[splittable] < width)
    kids_y = 1 + (top[splittable] + half[splittable] < height)
    delta = kids_x * kids_y - 1
    rank = np.empty(len(splittable), np.int64)
    for value in np.unique(level[splittable]):  # the spread order within each level's own grid
        members = level[splittable] == value
        s = int(layout.patch) << int(value)
        rank[members] = spread_rank(left[splittable][members] // s, top[splittable][members] // s,
                                    (-(-width // s), -(-height // s)))
    visit = np.lexsort((rank, -level[splittable], -scores[splittable]))
    taken = _greedy_prefixes(delta[visit], budget - len(layout))
    split = np.sort(splittable[visit[taken]])
    is_split = np.zeros(len(layout), bool)
    is_split[split] = True
    kept = np.nonzero(~is_split)[0]
    # children: the four quadrants of each split token, those whose top-left corner is inside the image
    child_left = (left[split, None] + np.array([0, 1, 0, 1]) * half[split, None]).ravel()
    child_top = (top[split, None] + np.array([0, 0, 1, 1]) * half[split, None]).ravel()
    child_level = np.repeat(level[split] - 1, 4)
    child_parent = np.repeat(split, 4)
    inside = (child_left < width) & (child_top < height)
    all_left = np.concatenate([left[kept], child_left[inside]])
    all_top = np.concatenate([top[kept], child_top[inside]])
    all_level = np.concatenate([level[kept], child_level[inside]])
    origin = np.concatenate([kept, child_parent[inside]])  # the source token each came from
    order = np.lexsort((all_left, all_top))
    is_new = np.zeros(len(order), bool)
    is_new[len(kept):] = True
    rank_of = np.empty(len(order), np.int64)
    rank_of[order] = np.arange(len(order))
    sizes = (np.int64(layout.patch) << all_level[order]).astype(np.float64)
    relevant = None if layout.relevant is None else np.asarray(layout.relevant)[origin[order]]
    refined = TokenLayout(cx=all_left[order] + sizes / 2, cy=all_top[order] + sizes / 2, size=sizes,
                          level=all_level[order], patch=int(layout.patch), image_size=tuple(layout.image_size),
                          relevant=relevant)
    return Refinement(layout=refined, source=layout, new=np.sort(rank_of[is_new]), kept=kept,
                      kept_at=rank_of[:len(kept)], split=split)


def _greedy_prefixes(delta: np.ndarray, room: int) -> np.ndarray:
    """Which of the visits (tokens adding `delta` each, in visiting order) the sequential greedy takes with
    `room` tokens to spare: each in turn while it fits, passing over those that do not. Computed a prefix at
    a time: take the longest prefix that fits, drop what no longer can (delta > room left), repeat; room
    falls below the stopping delta (<= 3) each round, so there are at most four."""
    taken = np.zeros(len(delta), bool)
    candidates = np.arange(len(delta))
    while len(candidates):
        running = np.cumsum(delta[candidates])
        fits = running <= room
        if fits.all():
            taken[candidates] = True
            break
        stop = int(np.argmin(fits))
        taken[candidates[:stop]] = True
        room -= int(running[stop - 1]) if stop else 0
        candidates = candidates[stop + 1:]
        candidates = candidates[delta[candidates] <= room]
    return taken


# -- checks -------------------------------------------------------------------------------
def _image_size(size: Any, what: str) -> tuple[int, int]:
    if not hasattr(size, "__len__") or isinstance(size, (str, bytes)) or len(size) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size):
        raise ValueError(f"{what} must be two positive ints (width, height), got {size!r}")
    return int(size[0]), int(size[1])


def _budgets(budget: Any, count: int) -> list[int]:
    values = list(budget) if isinstance(budget, Sequence) and not isinstance(budget, (str, bytes)) else None
    if values is None:
        values = [budget] * count
    elif len(values) != count:
        raise ValueError(f"budget has {len(values)} entries for {count} layouts; give one int, or one per image")
    for value in values:
        positive_int(value, "budget")
        if value > MAX_BUDGET:
            raise ValueError(f"budget {value} is over the limit of {MAX_BUDGET} tokens an image")
    return [int(v) for v in values]


def _scores(scores: Any, count: int, where: str) -> np.ndarray:
    """`scores` as a float64 (count,) array; TypeError/ValueError naming what is wrong."""
    if hasattr(scores, "detach"):  # a torch tensor, on any device, with or without a graph
        scores = scores.detach().cpu().numpy()
    try:
        values = np.asarray(scores)
    except (TypeError, ValueError) as error:
        raise TypeError(f"scores of {where} must be a 1-D array of numbers, got {type(scores).__name__}") from error
    if values.dtype.kind not in "fiu" or values.dtype.kind == "b":
        raise TypeError(f"scores of {where} must be numbers, got dtype {values.dtype}")
    if values.shape != (count,):
        raise ValueError(f"scores of {where} have shape {values.shape}; need one score per token, ({count},)")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(f"scores of {where} must be finite and >= 0; token {index} has {float(values[index])}")
    return values


def _quadtree_cells(layout: Any, min_level: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, top, level) int64 per token of a quadtree cover; ValueError naming what breaks it."""
    if not isinstance(layout, TokenLayout):
        raise TypeError(f"{where} must be a glmip.TokenLayout, got {type(layout).__name__}")
    width, height = _image_size(layout.image_size, f"{where}'s image_size")
    patch = positive_int(layout.patch, f"{where}'s patch")
    arrays = [np.asarray(getattr(layout, name), np.float64) for name in ("cx", "cy", "size", "level")]
    if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays) or not len(arrays[0]):
        raise ValueError(f"{where}: cx, cy, size and level must be 1-D arrays of one length, at least one token")
    cx, cy, size, level = arrays
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"{where} has non-finite centres, sizes or levels")
    if (level != np.round(level)).any() or level.min() < min_level or level.max() > MAX_ALLOCATION_LEVEL:
        raise ValueError(f"{where} has levels {level.min():g}..{level.max():g}; refining needs integer levels in "
                         f"{min_level}..{MAX_ALLOCATION_LEVEL} (min_level..), as glmip.allocate makes them")
    levels = level.astype(np.int64)
    side = np.int64(patch) << levels
    left_f, top_f = cx - size / 2, cy - size / 2
    left, top = np.round(left_f).astype(np.int64), np.round(top_f).astype(np.int64)
    off_grid = (size != side) | (left != left_f) | (top != top_f) | (left % side != 0) | (top % side != 0) \
        | (left < 0) | (top < 0) | (left >= width) | (top >= height)
    if off_grid.any():
        k = int(np.argmax(off_grid))
        raise ValueError(f"{where}: token {k} (centre {cx[k]:g}, {cy[k]:g}, size {size[k]:g}, level {levels[k]}) is "
                         f"not a quadtree cell of a {width}x{height} image with patch {patch} (size patch << level, "
                         "corner on its level's grid, inside the image)")
    area = int(((np.minimum(left + side, width) - left) * (np.minimum(top + side, height) - top)).sum())
    if area != width * height or _nested(left, top, levels, patch):
        raise ValueError(f"{where} does not cover its {width}x{height} image exactly once (its tokens cover "
                         f"{area} pixel(s) of {width * height}, or overlap); was it made for another image size?")
    return left, top, levels


def _nested(left: np.ndarray, top: np.ndarray, level: np.ndarray, patch: int) -> bool:
    """Whether any cell equals or lies inside another (quadtree cells never overlap otherwise)."""
    for value in np.unique(level):
        s = np.int64(patch) << value
        here = level == value
        keys = left[here] // s * (1 << 32) + top[here] // s
        if len(np.unique(keys)) != len(keys):
            return True
        finer = level < value
        if finer.any() and np.isin(left[finer] // s * (1 << 32) + top[finer] // s, keys).any():
            return True
    return False


def _subset(layout: TokenLayout, index: np.ndarray) -> TokenLayout:
    return TokenLayout(cx=layout.cx[index], cy=layout.cy[index], size=layout.size[index], level=layout.level[index],
                       patch=layout.patch, image_size=layout.image_size,
                       relevant=None if layout.relevant is None else layout.relevant[index])


# -- sampling only what is new -----------------------------------------------------------
def sample_refined(batch: PyramidBatch, coarse: TokenBatch, refinements: Sequence[Refinement], *,
                   filter: str = "trilinear", lod_bias: float = 0.0) -> TokenBatch:
    """The refined layouts' `TokenBatch`, sampling only their new tokens from `batch` (the pyramids `coarse`
    was sampled from, still open: no rebuild): one `batch.tokens` call over every image's `new_layout`
    (one dispatch per array texture), then `merge_refined`. Equal, bit for bit, to
    `TokenBatch.from_sampled(batch.tokens(layouts), layouts)` of the refined layouts, when `filter` and
    `lod_bias` are those `coarse` was sampled with. Everything is checked before anything is sampled:
    one refinement per image of `batch`, each of the layout `coarse` holds for that image and made for its
    image size."""
    _check_merge(coarse, refinements)
    sizes = getattr(batch, "image_sizes", None)
    if sizes is None or not hasattr(batch, "tokens"):
        raise TypeError(f"batch must be a glmip.PyramidBatch (ctx.pyramids(images)), got {type(batch).__name__}")
    if len(sizes) != len(refinements):
        raise ValueError(f"the pyramid batch holds {len(sizes)} images, the refinements {len(refinements)}")
    for b, (size, refinement) in enumerate(zip(sizes, refinements, strict=True)):
        if tuple(size) != tuple(refinement.layout.image_size):
            raise ValueError(f"refinement {b} is of a {refinement.layout.image_size[0]}x"
                             f"{refinement.layout.image_size[1]} image; image {b} of the batch is {size[0]}x{size[1]}")
    new_layouts = [r.new_layout for r in refinements]
    if sum(len(layout) for layout in new_layouts):
        new_tokens = batch.tokens(new_layouts, coarse.patch, filter, lod_bias, device=coarse.device)
    else:
        new_tokens = coarse.tokens.new_empty((0, *coarse.tokens.shape[1:]))
    return merge_refined(coarse, new_tokens, refinements)


def merge_refined(coarse: TokenBatch, new_tokens: torch.Tensor, refinements: Sequence[Refinement]) -> TokenBatch:
    """Old tokens kept + new tokens -> the refined `TokenBatch`, in the refined layouts' order.

    coarse:      the `TokenBatch` of the layouts refined (refinements[b].source is image b's layout).
    new_tokens:  (sum of len(r.new), C, P, P): every image's `new_layout` tokens, packed image after image
                 (what `PyramidBatch.tokens([r.new_layout for r in refinements])` returns).
    Returns a `TokenBatch` on coarse's device; one gather of the kept rows and one scatter of each part.
    `coarse.extra` is not carried over (its rows would not cover the new tokens).
    """
    import torch

    from .token_batch import TokenBatch

    _check_merge(coarse, refinements)
    expected = (sum(len(r.new) for r in refinements), *coarse.tokens.shape[1:])
    if not isinstance(new_tokens, torch.Tensor) or tuple(new_tokens.shape) != expected:
        raise ValueError(f"new_tokens must be a tensor of shape {expected} (the refinements' new tokens, packed), "
                         f"got {tuple(getattr(new_tokens, 'shape', ()))}")
    out_start = np.concatenate([[0], np.cumsum([len(r.layout) for r in refinements])])
    coarse_start = np.concatenate([[0], np.cumsum(coarse.lengths)])
    destination_old = np.concatenate([out_start[b] + r.kept_at for b, r in enumerate(refinements)])
    source_old = np.concatenate([coarse_start[b] + r.kept for b, r in enumerate(refinements)])
    destination_new = np.concatenate([out_start[b] + r.new for b, r in enumerate(refinements)])
    device = coarse.tokens.device
    merged = coarse.tokens.new_empty((int(out_start[-1]), *coarse.tokens.shape[1:]))
    merged[torch.from_numpy(destination_old).to(device)] = coarse.tokens[torch.from_numpy(source_old).to(device)]
    merged[torch.from_numpy(destination_new).to(device)] = new_tokens.to(device=device, dtype=merged.dtype)
    return TokenBatch.from_sampled(merged, [r.layout for r in refinements])


def _check_merge(coarse: Any, refinements: Any) -> None:
    from .token_batch import TokenBatch

    if not isinstance(coarse, TokenBatch):
        raise TypeError(f"coarse must be the glmip.TokenBatch of the layouts refined, got {type(coarse).__name__}")
    if not isinstance(refinements, Sequence) or not all(isinstance(r, Refinement) for r in refinements):
        raise TypeError("refinements must be a list of glmip.refine.Refinement (refine_batch's result)")
    if len(refinements) != len(coarse):
        raise ValueError(f"{len(refinements)} refinements for a batch of {len(coarse)} images; give one per image")
    for b, (layout, refinement) in enumerate(zip(coarse.layouts, refinements, strict=True)):
        source = refinement.source
        if layout is not source and (len(layout) != len(source) or tuple(layout.image_size) != tuple(
                source.image_size) or not all(np.array_equal(getattr(layout, n), getattr(source, n))
                                              for n in ("cx", "cy", "size", "level"))):
            raise ValueError(f"refinement {b} refines a layout of {len(source)} tokens over "
                             f"{source.image_size[0]}x{source.image_size[1]}, not the {len(layout)} tokens image {b} "
                             "of the coarse batch holds")


# -- the loop -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RefinePass:
    """One pass of `refine_passes`: the batch the model saw, how many tokens were sampled to make it, and the
    refinements that led to it (None for the coarse pass)."""

    tokens: TokenBatch
    sampled: int
    refinements: list[Refinement] | None


def refine_passes(batch: PyramidBatch, layouts: Sequence[TokenLayout], score: Callable[[TokenBatch], Sequence[Any]],
                  budgets: Sequence[int | Sequence[int]], *, min_level: int = 0, filter: str = "trilinear",
                  device: Any = "cpu") -> list[RefinePass]:
    """Coarse to fine: sample `layouts` (e.g. `cover_layout` per image) from `batch`, then per budget in
    `budgets`: score the last pass's tokens (`score(token_batch)` -> one (N_b,) vector per image, e.g.
    `lambda t: glmip.nn.class_attention(model, t)`), refine every image's layout to at most that budget,
    and sample only the new tokens. Returns every pass, coarse first; the last one's tokens go to the model.
    The layouts (quadtree covers of their images, as `refine_batch` requires) and the budgets (each an int or
    one per image, none below the coarse token counts, not decreasing) are checked before the coarse pass is
    sampled."""
    from .token_batch import TokenBatch

    if isinstance(budgets, (int, np.integer)) or not isinstance(budgets, Sequence):
        raise TypeError(f"budgets must be a list (one budget per refinement pass), got {budgets!r}")
    sizes = list(batch.image_sizes)
    if isinstance(layouts, TokenLayout) or not isinstance(layouts, Sequence) or len(layouts) != len(sizes):
        raise ValueError(f"need one layout per image of the batch ({len(sizes)}), got {layouts!r:.80}")
    for b, (layout, size) in enumerate(zip(layouts, sizes, strict=True)):
        _quadtree_cells(layout, int(min_level), f"layout {b}")
        if tuple(layout.image_size) != tuple(size):
            raise ValueError(f"layout {b} was made for an image of {layout.image_size[0]}x{layout.image_size[1]}; "
                             f"image {b} of the batch is {size[0]}x{size[1]}")
    checked = [_budgets(budget, len(layouts)) for budget in budgets]
    floor = [len(layout) for layout in layouts]
    for step, values in enumerate(checked):
        for b, (value, least) in enumerate(zip(values, floor, strict=True)):
            if value < least:
                raise ValueError(f"pass {step + 1}'s budget {value} for image {b} is below the {least} tokens it "
                                 "holds by then; budgets never fall")
        floor = values
    tokens = batch.tokens(list(layouts), layouts[0].patch if layouts else None, filter, device=device)
    current = TokenBatch.from_sampled(tokens, list(layouts))
    passes = [RefinePass(current, int(tokens.shape[0]), None)]
    for values in checked:
        refinements = refine_batch(list(current.layouts), list(score(current)), values, min_level=min_level,
                                   image_sizes=sizes)
        current = sample_refined(batch, current, refinements, filter=filter)
        passes.append(RefinePass(current, sum(len(r.new) for r in refinements), refinements))
    return passes
