"""GPU tiles of a slide level: a grid of interiors, each uploaded with a halo as an ordinary glmip `Pyramid`,
and an LRU of those pyramids bounded in bytes.

A slide keeps every level (see `glmip.slides.levels`) and tiles each one on its own: a sample reads a level
with one bilinear (or nearest) tap, so it reaches at most one texel past the texel holding it; a halo of
`HALO` texels keeps every read of a point in a tile's interior on real pixels of that level, and the tile's
clamp-to-edge border is the level's own where the tile meets the level's edge. Only each tile pyramid's
level 0 is read, so any size tiles exactly, odd and 1 x N included.

Convention: positions in the level's own pixels, (0, 0) its top-left corner; tile (column, row) has interior
[column * interior, (column + 1) * interior) x [row * interior, ...) and data [x0, x1) x [y0, y1), the
interior grown by the halo and cut at the level's edges.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..pyramid import Pyramid

__all__ = ["HALO", "TileSpec", "TileGrid", "PyramidCache"]

DEFAULT_GL_CACHE_BYTES = 256 << 20
HALO = 2  # texels: a bilinear tap reads one past its texel; one more for float rounding of the position


@dataclass(frozen=True)
class TileSpec:
    """One GPU tile: its slide level, grid position, and the level pixels it holds (halo included)."""

    level: int
    column: int
    row: int
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one slide level of `width` x `height` pixels: interiors of `interior` pixels and a
    `halo`; one tile (no halo) when the level fits `interior` on both axes."""

    level: int
    width: int
    height: int
    interior: int
    halo: int

    @staticmethod
    def make(level: int, width: int, height: int, tile: int, max_texture: int) -> TileGrid:
        """The grid for `tile`-pixel interiors with a `HALO`-texel halo. Raises ValueError where one tile with
        its halo would exceed `max_texture`."""
        if width <= tile and height <= tile:
            return TileGrid(level, width, height, max(width, height), 0)
        if tile + 2 * HALO > max_texture:
            raise ValueError(f"a {tile}-pixel tile with its {HALO}-pixel halo exceeds the device's texture limit "
                             f"{max_texture}; use a smaller tile")
        return TileGrid(level, width, height, tile, HALO)

    @property
    def shape(self) -> tuple[int, int]:
        """(columns, rows)."""
        return -(-self.width // self.interior), -(-self.height // self.interior)

    def locate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The flat tile index (row * columns + column) whose interior holds each level position (clamped)."""
        columns, rows = self.shape
        column = np.clip(np.floor(x / self.interior), 0, columns - 1).astype(np.int64)
        row = np.clip(np.floor(y / self.interior), 0, rows - 1).astype(np.int64)
        return row * columns + column

    def spec(self, index: int) -> TileSpec:
        columns = self.shape[0]
        column, row = index % columns, index // columns
        x0 = max(0, column * self.interior - self.halo)
        y0 = max(0, row * self.interior - self.halo)
        x1 = min(self.width, (column + 1) * self.interior + self.halo)
        y1 = min(self.height, (row + 1) * self.interior + self.halo)
        return TileSpec(self.level, column, row, x0, y0, x1, y1)


class PyramidCache:
    """Tile pyramids by `TileSpec`, least recently used first out once their texture bytes exceed
    `max_bytes` (the tile in use always stays). Evicted pyramids are closed at once."""

    def __init__(self, max_bytes: int = DEFAULT_GL_CACHE_BYTES) -> None:
        if not isinstance(max_bytes, (int, np.integer)) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"gl_cache_bytes must be a non-negative int, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.builds = 0
        self._pyramids: OrderedDict[TileSpec, Pyramid] = OrderedDict()

    def get(self, spec: TileSpec, build: Callable[[TileSpec], Pyramid]) -> Pyramid:
        pyramid = self._pyramids.get(spec)
        if pyramid is not None and not pyramid.closed:
            self._pyramids.move_to_end(spec)
            return pyramid
        self._evict(keep=0)
        pyramid = build(spec)
        self.builds += 1
        self._pyramids[spec] = pyramid
        self.nbytes += pyramid.nbytes
        self._evict(keep=1)
        return pyramid

    def _evict(self, keep: int) -> None:
        while len(self._pyramids) > keep and self.nbytes > self.max_bytes:
            _, old = self._pyramids.popitem(last=False)
            self.nbytes -= old.nbytes
            old.close()

    def close(self) -> None:
        for pyramid in self._pyramids.values():
            pyramid.close()
        self._pyramids.clear()
        self.nbytes = 0
