"""From relevance to levels of detail: a per-pixel LOD map, and a token layout within a budget."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from .relevance import as_relevance


def lod_map(relevance: Any, max_level: float = 4.0, *, min_level: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """Per-pixel LOD, float32 (h, w) at the relevance map's resolution.

    lod = min_level + (max_level - min_level) * (1 - relevance) ** gamma: relevance 1 gets
    `min_level` (full detail), relevance 0 gets `max_level`; gamma > 1 keeps detail further
    out from relevant regions, gamma < 1 drops it sooner.
    """
    r = as_relevance(relevance)
    if not (np.isfinite(min_level) and np.isfinite(max_level)) or min_level < 0 or max_level < min_level:
        raise ValueError(f"need 0 <= min_level <= max_level, got min_level={min_level}, max_level={max_level}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    return (min_level + (max_level - min_level) * (1.0 - r) ** gamma).astype(np.float32)


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


def allocate(relevance: Any, budget: int = 256, patch: int = 16, min_level: int = 0, max_level: int | None = None,
             image_size: tuple[int, int] | None = None) -> TokenLayout:
    """Split the image into at most `budget` square tokens, finest where relevance x area is largest.

    A quadtree starts from a grid of cells at `max_level` (default: the finest level whose grid
    takes at most an eighth of the budget, leaving the rest for detail) and repeatedly splits
    the cell holding the most relevance (mean relevance x area in pixels) into its four
    quadrants (those inside the image), while the budget allows and the cell is above
    `min_level`. Cells cover the image with no gaps and no overlaps.
    `image_size` = (width, height) of level 0, default the relevance map's own.
    """
    r = as_relevance(relevance)
    width, height = image_size or (r.shape[1], r.shape[0])
    for name, value in (("budget", budget), ("patch", patch), ("min_level", min_level)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if patch < 1 or budget < 1 or min_level < 0:
        raise ValueError(f"need budget >= 1, patch >= 1, min_level >= 0; got {budget}, {patch}, {min_level}")
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive, got {(width, height)}")

    def grid(level: int) -> tuple[int, int]:
        side = patch << level
        return -(-width // side), -(-height // side)

    if max_level is None:
        max_level = min_level
        while np.prod(grid(max_level)) > max(1, budget // 8) and (patch << max_level) < max(width, height):
            max_level += 1
    elif max_level < min_level:
        raise ValueError(f"max_level {max_level} is below min_level {min_level}")
    roots = grid(max_level)
    if roots[0] * roots[1] > budget:
        raise ValueError(f"a budget of {budget} tokens cannot cover a {width}x{height} image at max_level "
                         f"{max_level} (patch {patch}): it needs {roots[0] * roots[1]}; raise max_level or budget")

    integral = np.zeros((r.shape[0] + 1, r.shape[1] + 1))
    integral[1:, 1:] = r.astype(np.float64).cumsum(0).cumsum(1)
    sx, sy = r.shape[1] / width, r.shape[0] / height

    def score(x: int, y: int, level: int) -> float:
        side = patch << level
        x1, y1 = min(x + side, width), min(y + side, height)
        c0, r0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        c1 = min(max(int(np.ceil(x1 * sx)), c0 + 1), r.shape[1])  # at least one relevance pixel
        r1 = min(max(int(np.ceil(y1 * sy)), r0 + 1), r.shape[0])
        total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        mean = total / ((r1 - r0) * (c1 - c0))
        return mean * (x1 - x) * (y1 - y)

    side0 = patch << max_level
    cells = [(x * side0, y * side0, max_level) for y in range(roots[1]) for x in range(roots[0])]
    heap = [(-score(*cell), i, cell) for i, cell in enumerate(cells) if cell[2] > min_level]
    heapq.heapify(heap)
    leaves = {cell for cell in cells}
    order = len(cells)
    while heap:
        _, _, (x, y, level) = heapq.heappop(heap)
        half = patch << (level - 1)
        children = [(cx, cy, level - 1) for cy in (y, y + half) for cx in (x, x + half) if cx < width and cy < height]
        if len(leaves) - 1 + len(children) > budget:
            continue  # a smaller split elsewhere may still fit
        leaves.remove((x, y, level))
        for child in children:
            leaves.add(child)
            if child[2] > min_level:
                order += 1
                heapq.heappush(heap, (-score(*child), order, child))
    ordered = sorted(leaves, key=lambda c: (c[1], c[0], c[2]))
    cells_array = np.array(ordered, dtype=np.int64).reshape(-1, 3)
    sizes = (patch << cells_array[:, 2]).astype(np.float64)
    return TokenLayout(cx=cells_array[:, 0] + sizes / 2, cy=cells_array[:, 1] + sizes / 2, size=sizes,
                       level=cells_array[:, 2].copy(), patch=patch, image_size=(int(width), int(height)))
