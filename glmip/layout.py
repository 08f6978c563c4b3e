"""Token layouts as data: where each token sits, how big it is, at which level it is sampled, and
the class budgets an allocation keeps. No GL and no allocation policy (that is `glmip.allocate`).

Convention:
    centres and sizes in level-0 pixels, (0, 0) the image's top-left corner; a token of level L
    spans size = patch * 2^L pixels; levels may be fractional (uniform grids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TokenLayout", "ClassBudgets", "LAYOUT_ARRAYS"]

# The per-token arrays of a TokenLayout, in the order token tables and saved files hold them.
LAYOUT_ARRAYS = ("cx", "cy", "size", "level")


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

    @classmethod
    def grid(cls, image_size: tuple[int, int], patch: int = 16, level: int = 0) -> TokenLayout:
        """Every whole (patch * 2^level)-pixel block of an image of `image_size` = (width, height), row-major
        as a ViT flattens its patch grid (a partial block at the right or bottom edge is left out)."""
        width, height = image_size
        side = patch << level
        rows, cols = np.mgrid[0:height // side, 0:width // side]
        n = rows.size
        return cls(cx=cols.ravel() * side + side / 2.0, cy=rows.ravel() * side + side / 2.0,
                   size=np.full(n, float(side)), level=np.full(n, level, np.int64), patch=patch,
                   image_size=(int(width), int(height)))

    @property
    def uv_centres(self) -> np.ndarray:
        """(N, 2) token centres in uv ((0, 0) top-left, (1, 1) bottom-right)."""
        return np.stack([self.cx / self.image_size[0], self.cy / self.image_size[1]], axis=1)

    def to_torch(self) -> dict[str, Any]:
        """The layout as torch tensors: centres (N, 2) float32 in uv, size (N,) float32, level (N,)
        float32 (fractional levels kept)."""
        import torch

        return {"centres": torch.from_numpy(self.uv_centres.astype(np.float32)),
                "size": torch.from_numpy(self.size.astype(np.float32)),
                "level": torch.from_numpy(self.level.astype(np.float32))}

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
        """The layout's boxes over `image` (dimmed to 75 %), each outlined in its level's colour;
        (h, w, 3) uint8. Works on one uint8 canvas: no float copy of the image."""
        from PIL import Image, ImageDraw

        from .image import as_image_array
        from .pictures import LEVEL_PALETTE, to_display_uint8

        canvas_pixels = to_display_uint8(as_image_array(image))
        if canvas_pixels.shape[2] < 3:
            canvas_pixels = np.repeat(canvas_pixels[..., :1], 3, axis=2)
        canvas_pixels = np.array(canvas_pixels[..., :3], dtype=np.uint8, order="C", copy=True)
        for rows in range(0, canvas_pixels.shape[0], 256):  # dim as `overlay` with alpha 0.25, 256 rows at a time
            strip = canvas_pixels[rows:rows + 256]
            strip[...] = ((strip.astype(np.uint16) * 192 + 128) >> 8).astype(np.uint8)
        canvas = Image.fromarray(canvas_pixels)
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
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
                raise TypeError(f"{name} must be a (min, max) pair of token counts, got {value!r}")
            lo, hi = value
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)) \
                    or not 0 <= lo <= hi or hi < 1:
                raise ValueError(f"{name} must be a (min, max) pair of ints with 0 <= min <= max, max >= 1; "
                                 f"got {(lo, hi)!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float, np.floating, np.integer)):
            raise TypeError(f"threshold must be a number in [0, 1], got {self.threshold!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:  # NaN fails this too
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")

    def range(self, relevant: bool) -> tuple[int, int]:
        return self.relevant if relevant else self.background
