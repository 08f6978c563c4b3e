"""From relevance to levels of detail: a per-pixel LOD map, and a token layout within a budget."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .relevance import RelevancePyramid, relevance_pyramid

if TYPE_CHECKING:
    from .context import Context

__all__ = ["TokenLayout", "ClassBudgets", "allocate"]


@dataclass(frozen=True)
class TokenLayout:
    """Square tokens tiling an image: token k covers `size[k]` level-0 pixels a side centred at
    (`cx[k]`, `cy[k]`) (pixels, (0, 0) the image's top-left corner) and is sampled at `level[k]`,
    so that `patch` x `patch` samples span it: size = patch * 2^level.

    Tokens on the right and bottom edges may reach past the image; sampling clamps there.
    """

    cx: np.ndarray
    cy: np.ndarray
    size: np.ndarray
    level: np.ndarray
    patch: int
    image_size: tuple[int, int]
    relevant: np.ndarray | None = None  # per token, with class budgets: the class it counted in

    def __len__(self) -> int:
        return int(self.level.shape[0])

    @property
    def uv_centres(self) -> np.ndarray:
        """(N, 2) token centres in uv ((0, 0) top-left, (1, 1) bottom-right)."""
        return np.stack([self.cx / self.image_size[0], self.cy / self.image_size[1]], axis=1)

    def to_torch(self) -> dict[str, Any]:
        """The layout as torch tensors: centres (N, 2) float32 in uv, size (N,) float32, level (N,) int64."""
        import torch

        return {"centres": torch.from_numpy(self.uv_centres.astype(np.float32)),
                "size": torch.from_numpy(self.size.astype(np.float32)),
                "level": torch.from_numpy(self.level.astype(np.int64))}

    def coverage(self) -> np.ndarray:
        """How many tokens cover each image pixel, (h, w) int32 (1 everywhere for a valid layout)."""
        width, height = self.image_size
        count = np.zeros((height, width), np.int32)
        for x0, y0, x1, y1 in self.boxes():
            count[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] += 1
        return count

    def boxes(self) -> np.ndarray:
        """(N, 4) int boxes x0, y0, x1, y1 in level-0 pixels (x1, y1 exclusive)."""
        half = self.size / 2
        return np.stack([self.cx - half, self.cy - half, self.cx + half, self.cy + half], 1).round().astype(int)

    def draw(self, image: Any) -> np.ndarray:
        """The layout's boxes over `image`, each outlined in its level's colour; (h, w, 3) uint8."""
        from PIL import Image, ImageDraw

        from .image import as_image_array
        from .pictures import LEVEL_PALETTE, overlay

        pixels = as_image_array(image)
        base = overlay(pixels, np.zeros(pixels.shape[:2] + (3,), np.uint8), alpha=0.25)
        canvas = Image.fromarray(base)
        draw = ImageDraw.Draw(canvas)
        for (x0, y0, x1, y1), level in zip(self.boxes(), self.level, strict=True):
            colour = tuple(int(c) for c in LEVEL_PALETTE[min(int(level), len(LEVEL_PALETTE) - 1)])
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour)
        return np.asarray(canvas)


@dataclass(frozen=True)
class ClassBudgets:
    """Token ranges per class, in the spirit of "64-400 tokens for relevant regions, 16-64 for the
    rest": a token is relevant when the largest relevance under it reaches `threshold`.

    Minimums are met first (the most relevant splits that raise a class below its minimum), as far
    as the image and `min_level` allow; maximums are never exceeded.
    """

    relevant: tuple[int, int] = (64, 400)
    background: tuple[int, int] = (16, 64)
    threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("relevant", "background"):
            lo, hi = getattr(self, name)
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)) \
                    or not 0 <= lo <= hi or hi < 1:
                raise ValueError(f"{name} must be a (min, max) pair of ints with 0 <= min <= max, max >= 1; "
                                 f"got {(lo, hi)!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")

    def range(self, relevant: bool) -> tuple[int, int]:
        return self.relevant if relevant else self.background


def allocate(relevance: Any, budget: int = 256, patch: int = 16, min_level: int = 0, max_level: int | None = None,
             image_size: tuple[int, int] | None = None, *, classes: ClassBudgets | None = None,
             context: Context | None = None) -> TokenLayout:
    """Split the image into at most `budget` square tokens, finest where relevance x area is largest.

    `relevance` is a map (any resolution, see `as_relevance`) or a `RelevancePyramid` whose cell is
    `patch << min_level`. A quadtree starts from a grid of cells at `max_level` (default: the finest
    level whose grid takes at most an eighth of the budget and fits `classes`) and repeatedly
    splits the cell holding the most relevance (its relevance-pyramid texel: mean x in-image area)
    into its quadrants inside the image, while the budget (and each class's maximum) allows and the
    cell is above `min_level`. Cells cover the image with no gaps and no overlaps.
    `image_size` = (width, height) of level 0, default the relevance map's own. With a `context`
    the relevance pyramid is built on the GPU, else by its numpy reference.
    """
    for name, value in (("budget", budget), ("patch", patch), ("min_level", min_level)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if patch < 1 or budget < 1 or min_level < 0:
        raise ValueError(f"need budget >= 1, patch >= 1, min_level >= 0; got {budget}, {patch}, {min_level}")
    if classes is not None and not isinstance(classes, ClassBudgets):
        raise TypeError(f"classes must be a glmip.ClassBudgets, got {type(classes).__name__}")
    cell = patch << min_level
    if isinstance(relevance, RelevancePyramid):
        pyramid = relevance
        if pyramid.cell != cell or (image_size is not None and tuple(image_size) != pyramid.image_size):
            raise ValueError(f"the relevance pyramid has cell {pyramid.cell} over {pyramid.image_size}; this "
                             f"allocation needs cell {cell} (patch << min_level) over {image_size or 'its image'}")
    else:
        pyramid = relevance_pyramid(relevance, cell, image_size, context)
    width, height = pyramid.image_size

    def texel(x: int, y: int, level: int) -> tuple[float, float, float]:
        k = level - min_level
        return pyramid.texel(k, x // (cell << k), y // (cell << k))

    def score(x: int, y: int, level: int) -> float:
        mean, _, area = texel(x, y, level)
        return mean * area

    def is_relevant(x: int, y: int, level: int) -> bool:
        return classes is not None and texel(x, y, level)[1] >= classes.threshold

    def grid(level: int) -> tuple[int, int]:
        side = patch << level
        return -(-width // side), -(-height // side)

    def roots(level: int) -> list[tuple[int, int, int]]:
        side = patch << level
        columns, rows = grid(level)
        return [(x * side, y * side, level) for y in range(rows) for x in range(columns)]

    def over_class_maximum(cells: list[tuple[int, int, int]]) -> bool:
        if classes is None:
            return False
        relevant = sum(is_relevant(*c) for c in cells)
        return relevant > classes.relevant[1] or len(cells) - relevant > classes.background[1]

    top = min_level + len(pyramid.levels) - 1  # one cell covers the image
    if max_level is None:
        max_level = min_level
        while max_level < top and (np.prod(grid(max_level)) > max(1, budget // 8)
                                   or over_class_maximum(roots(max_level))):
            max_level += 1
    elif max_level < min_level:
        raise ValueError(f"max_level {max_level} is below min_level {min_level}")
    elif max_level > top:
        max_level = top  # coarser roots than one cell over the image would be the same single cell
    cells = roots(max_level)
    if len(cells) > budget or over_class_maximum(cells):
        raise ValueError(f"a budget of {budget} tokens{' and class maxima ' + str(classes) if classes else ''} "
                         f"cannot cover a {width}x{height} image at max_level {max_level} (patch {patch}): it "
                         f"needs {len(cells)}; raise max_level or budget")
    return _split(cells, budget, patch, min_level, width, height, score, is_relevant, classes)


def _split(cells: list[tuple[int, int, int]], budget: int, patch: int, min_level: int, width: int, height: int,
           score: Any, is_relevant: Any, classes: ClassBudgets | None) -> TokenLayout:
    """The greedy quadtree: first the splits that raise a class below its minimum, then any split,
    always the highest-scoring cell whose split keeps to the budget and the class maxima."""
    leaves = set(cells)
    counts = {True: 0, False: 0}
    for c in cells:
        counts[is_relevant(*c)] += 1

    def children(x: int, y: int, level: int) -> list[tuple[int, int, int]]:
        half = patch << (level - 1)
        return [(cx, cy, level - 1) for cy in (y, y + half) for cx in (x, x + half) if cx < width and cy < height]

    def split_counts(parent: tuple[int, int, int]) -> tuple[dict[bool, int], list[tuple[int, int, int]]]:
        kids = children(*parent)
        after = dict(counts)
        after[is_relevant(*parent)] -= 1
        for kid in kids:
            after[is_relevant(*kid)] += 1
        return after, kids

    def fits(after: dict[bool, int]) -> bool:
        if after[True] + after[False] > budget:
            return False
        return classes is None or all(after[k] <= classes.range(k)[1] for k in (True, False))

    def deficient(tally: dict[bool, int]) -> set[bool]:
        return set() if classes is None else {k for k in (True, False) if tally[k] < classes.range(k)[0]}

    # Cells by relevance mass; ties (e.g. zero relevance) broken coarsest first, then in order, so budget
    # left over after the relevant cells spreads evenly instead of in one band.
    heap = [(-score(*c), -c[2], i, c) for i, c in enumerate(cells) if c[2] > min_level]
    heapq.heapify(heap)
    order = len(cells)

    def run(heap: list, wanted: Any) -> None:
        """Split greedily from `heap`: `wanted(counts after the split)` says True (split), None (skip
        this cell, try the next) or False (end the phase)."""
        nonlocal order
        skipped = []
        while heap:
            item = heapq.heappop(heap)
            parent = item[3]
            after, kids = split_counts(parent)
            verdict = wanted(after) if fits(after) else None
            if verdict is None:
                skipped.append(item)  # a smaller or other-class split elsewhere may still fit
                continue
            if verdict is False:
                heapq.heappush(heap, item)
                break
            leaves.remove(parent)
            counts.update(after)
            for kid in kids:
                leaves.add(kid)
                if kid[2] > min_level:
                    order += 1
                    heapq.heappush(heap, (-score(*kid), -kid[2], order, kid))
        for item in skipped:
            heapq.heappush(heap, item)

    if deficient(counts):  # phase 1: only splits that add tokens to a class below its minimum
        run(heap, lambda after: (any(after[k] > counts[k] for k in deficient(counts)) or None)
            if deficient(counts) else False)
    run(heap, lambda after: True)

    ordered = sorted(leaves, key=lambda c: (c[1], c[0], c[2]))
    cells_array = np.array(ordered, dtype=np.int64).reshape(-1, 3)
    sizes = (patch << cells_array[:, 2]).astype(np.float64)
    relevant = np.array([is_relevant(*c) for c in ordered], dtype=bool)
    return TokenLayout(cx=cells_array[:, 0] + sizes / 2, cy=cells_array[:, 1] + sizes / 2, size=sizes,
                       level=cells_array[:, 2].copy(), patch=patch, image_size=(int(width), int(height)),
                       relevant=relevant if classes is not None else None)
