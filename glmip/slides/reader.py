"""Reading slide pixels: pyramid levels of a tiled TIFF (through tiffslide/tifffile) or of an in-memory array,
as regions of any level, through an LRU cache of decoded file tiles with a byte limit.

Convention: a level is (width, height) pixels with `mip` = log2 of its downsample from level 0 (an int: a
file level whose downsample is not a power of two within 2 % is not used). Region coordinates are that
level's pixels, (0, 0) its top-left corner; arrays come back (h, w, C) in the slide's dtype, row 0 on top.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError
from ..image import as_image_array
from .levels import exact_levels

__all__ = ["SlideReadError", "Level", "TileCache", "TiffReader", "ArrayReader"]

DEFAULT_CACHE_BYTES = 256 << 20
VIRTUAL_LEVEL_STEP = 2  # arrays get a level every 2 mips (4x), as scanners write them
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")


class SlideReadError(CorruptFileError):
    """A slide file could not be read: a `glmip.errors.CorruptFileError` whose `member` is "header" (not a
    TIFF tiffslide opens: empty, truncated before its directories, another format) or the tile and level
    that is truncated or does not decode (the other tiles stay readable)."""


@dataclass(frozen=True)
class Level:
    """One stored pyramid level: its size in pixels and its mip (log2 of the downsample from level 0)."""

    width: int
    height: int
    mip: int


class TileCache:
    """Least-recently-used decoded tiles, evicted once their bytes exceed `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(max_bytes, (int, np.integer)) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative int, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._tiles: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, load: Any) -> np.ndarray:
        with self._lock:
            if key in self._tiles:
                self._tiles.move_to_end(key)
                self.hits += 1
                return self._tiles[key]
        tile = load()
        with self._lock:
            self.misses += 1
            if tile.nbytes <= self.max_bytes:
                self._tiles[key] = tile
                self.nbytes += tile.nbytes
                while self.nbytes > self.max_bytes:
                    _, old = self._tiles.popitem(last=False)
                    self.nbytes -= old.nbytes
        return tile

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self.nbytes = 0


def _mip_of(downsample: float) -> int | None:
    mip = round(math.log2(downsample)) if downsample > 0 else -1
    return mip if mip >= 0 and abs(downsample / 2.0**mip - 1.0) <= 0.02 else None


class TiffReader:
    """The pyramid of a tiled TIFF / OME-TIFF / SVS, opened with tiffslide; tiles decoded by tifffile.

    Why glmip reads the tiles itself (tifffile's `TiffPage.decode`, its own `TileCache`, regions assembled
    here) rather than through `tiffslide.TiffSlide.read_region` or `tifffile.aszarr` + zarr: replaying the
    reads `Slide` makes (halo'd 2052-px GPU tiles and 256-row area-mean bands over 512-px file tiles, so
    each file tile is read about three times) with `python -m bench.slide_read` (llvmpipe machine, 2 shared
    cores, best of 3 fresh processes), this reader took 0.48 s on the 100,000 x 80,000 deflate slide and
    0.25 s on a 12,288-px textured JPEG slide; zarr behind its `CacheStore` (decoded tiles cached as here)
    1.06 s / 0.40 s, its per-read overhead (zarr 3's async bridge, a copy out of the cache) being the
    difference; `read_region` 1.50 s / 0.60 s, as zarr 3 keeps no decoded tiles, so every read decodes
    again. `read_region` also takes level-0 coordinates and divides by the level's downsample, which at a
    level whose downsample is not exact (1562 x 1250 of 100,000 x 80,000: 64.01) reads a row off, and a
    corrupt tile surfaces as a bare codec error (imagecodecs' DeflateError) without the tile or level that
    `SlideReadError` names.

    Raises ValueError for a file tiffslide cannot open, a level-0 image that is not tiled (with how to
    convert it), planar (separate-channel) storage, or a sample type glmip cannot upload.
    """

    def __init__(self, path: str | Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        import tiffslide

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"slide file {str(path)!r} does not exist")
        self.cache = TileCache(cache_bytes)
        try:
            self._slide = tiffslide.TiffSlide(path)
        except Exception as error:  # tiffslide/tifffile raise their own types for foreign formats
            raise SlideReadError(path, "header", f"not a slide tiffslide can open ({type(error).__name__}: "
                                 f"{error}); accepted: pyramidal tiled TIFF, OME-TIFF, SVS and the formats tiffslide "
                                 f"reads") from None
        try:
            self._open(path)
        except BaseException:
            self._slide.close()
            raise
        self._lock = threading.Lock()

    def _open(self, path: Path) -> None:
        series = self._slide.ts_tifffile.series[0]
        pages = [level.keyframe for level in series.levels]
        first = pages[0]
        if first.planarconfig != 1 and first.samplesperpixel > 1:
            raise ValueError(f"{path.name} stores its channels in separate planes; glmip reads interleaved "
                             f"(contiguous) samples only. Convert: vips tiffsave IN OUT.tif --tile --pyramid")
        if first.dtype is None or first.dtype.name not in SUPPORTED_DTYPES or not 1 <= first.samplesperpixel <= 4:
            raise ValueError(f"{path.name} holds {first.samplesperpixel} x {first.dtype} samples; glmip accepts 1-4 "
                             f"channels of {', '.join(SUPPORTED_DTYPES)}")
        width = first.imagewidth
        levels: list[Level] = []
        self._pages = []
        for page in pages:
            mip = _mip_of(width / page.imagewidth)
            if mip is None or (levels and mip <= levels[-1].mip):
                continue
            if not page.is_tiled:
                raise ValueError(f"level {len(levels)} of {path.name} ({page.imagewidth}x{page.imagelength}) is not "
                                 f"tiled (stored in strips); glmip reads tiled slides only. Convert it: vips tiffsave "
                                 f"IN OUT.tif --tile --pyramid --compression deflate (or bfconvert -tilex 512 "
                                 f"-tiley 512 -pyramid-resolutions 4 IN OUT.ome.tiff)")
            levels.append(Level(page.imagewidth, page.imagelength, mip))
            self._pages.append(page)
        self.levels = tuple(levels)
        self.channels = int(first.samplesperpixel)
        self.dtype = np.dtype(first.dtype)
        self.name = path.name
        self.path = path
        self.properties = dict(self._slide.properties)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [x, x + w) x [y, y + h) of `level` (inside it), (h, w, C) in the slide's dtype."""
        page = self._pages[level]
        lw, lh = self.levels[level].width, self.levels[level].height
        if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= lw and y + h <= lh):
            raise ValueError(f"region {(x, y, w, h)} is outside level {level} ({lw}x{lh})")
        tw, th = page.tilewidth, page.tilelength
        columns = -(-lw // tw)
        out = np.empty((h, w, self.channels), self.dtype)
        for row in range(y // th, (y + h - 1) // th + 1):
            for column in range(x // tw, (x + w - 1) // tw + 1):
                tile = self.cache.get((level, column, row), lambda c=column, r=row: self._decode(level, c, r, columns))
                ax, ay = max(x, column * tw), max(y, row * th)
                bx, by = min(x + w, (column + 1) * tw), min(y + h, (row + 1) * th)
                out[ay - y:by - y, ax - x:bx - x] = tile[ay - row * th:by - row * th, ax - column * tw:bx - column * tw]
        return out

    def _decode(self, level: int, column: int, row: int, columns: int) -> np.ndarray:
        page = self._pages[level]
        index = row * columns + column
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        where = f"tile (column {column}, row {row}) of level {level} (byte offset {offset})"
        if count == 0:  # an empty tile: TIFF's sparse convention is zeros
            return np.zeros((page.tilelength, page.tilewidth, self.channels), self.dtype)
        with self._lock:
            handle = self._slide.ts_tifffile.filehandle
            handle.seek(offset)
            data = handle.read(count)
        if len(data) < count:
            raise SlideReadError(self.path, where, f"the file ends {count - len(data)} bytes before this tile's end "
                                                   f"(truncated)")
        try:
            tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as error:  # codecs raise their own error types
            raise SlideReadError(self.path, where, f"is corrupt ({type(error).__name__}: {error})") from None
        expected = (1, page.tilelength, page.tilewidth, self.channels)
        if tile is None or tile.shape != expected:
            raise SlideReadError(self.path, where, f"decoded to shape {None if tile is None else tile.shape}, "
                                                   f"not {expected}")
        return tile.reshape(expected[1:])

    def close(self) -> None:
        self.cache.clear()
        self._slide.close()


class ArrayReader:
    """An in-memory image of any size (numpy HxWxC, torch, PIL) with every level of `Pyramid`'s `box`
    convention (`glmip.slides.levels.exact_levels`: the exact area mean of level 0, odd sizes included),
    read through `read_mip`; the stored levels it shows (`levels`, for thumbnails and `Slide.read`) are one
    every `VIRTUAL_LEVEL_STEP` mips down to one that fits `top_size`, as scanners write them."""

    def __init__(self, image: Any, top_size: int) -> None:
        pixels = as_image_array(image)
        self.name = "array"
        self.properties: dict[str, Any] = {}
        self.cache = TileCache(0)
        self.channels = pixels.shape[2]
        self.dtype = pixels.dtype
        self._all = exact_levels(pixels)
        height, width = pixels.shape[:2]
        levels = [Level(width, height, 0)]
        while max(levels[-1].width, levels[-1].height) > top_size and levels[-1].mip + VIRTUAL_LEVEL_STEP < len(
                self._all):
            mip = levels[-1].mip + VIRTUAL_LEVEL_STEP
            levels.append(Level(self._all[mip].shape[1], self._all[mip].shape[0], mip))
        self.levels = tuple(levels)

    @property
    def mip_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every level, 0 to 1x1."""
        return [(a.shape[1], a.shape[0]) for a in self._all]

    def read_mip(self, mip: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [x, x + w) x [y, y + h) of level `mip` (any level, stored or not)."""
        array = self._all[mip]
        if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= array.shape[1] and y + h <= array.shape[0]):
            raise ValueError(f"region {(x, y, w, h)} is outside level {mip} ({array.shape[1]}x{array.shape[0]})")
        return array[y:y + h, x:x + w]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [x, x + w) x [y, y + h) of stored level `level` (an index into `levels`)."""
        return self.read_mip(self.levels[level].mip, x, y, w, h)

    def close(self) -> None:
        self._all = self._all[:1]
