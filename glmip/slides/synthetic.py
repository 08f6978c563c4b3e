"""A generated whole-slide image for tests and benchmarks: a pyramidal, tiled, compressed TIFF of any size,
mostly constant background with a few textured "tissue" regions (stained cells and text).

It is written in seconds whatever its size: every background tile is the same compressed bytes, encoded
once per level, and only tiles that touch tissue are rendered and compressed; level-0 pixels never exist in
memory as one array. Levels are 4x box downsamples of level 0 (as scanners write them), in SubIFDs.

Convention: level k is (width >> 2k, height >> 2k) (floor), pixel (i, j) of level k the mean of the
4^k x 4^k level-0 block at (4^k i, 4^k j); tissue boxes are aligned to 4^(levels-1) so every level's tissue
pixels are exact means.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticSlide", "write_synthetic_slide"]

BACKGROUND = (236, 234, 240)
ADOBE_DEFLATE = 8


@dataclass(frozen=True)
class SyntheticSlide:
    """What `write_synthetic_slide` wrote: the path, level-0 size and the tissue boxes (x0, y0, x1, y1)."""

    path: Path
    width: int
    height: int
    levels: int
    tile: int
    tissue: tuple[tuple[int, int, int, int], ...]

    def tissue_pixels(self, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
        """The level-0 pixels (h, w, 3) uint8 of tissue `box` (one of `self.tissue`), as written."""
        return _tissue(box, seed + self.tissue.index(box))


def _tissue(box: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """H&E-like texture: pink stroma with low-frequency variation, dark purple nuclei, and a line of text."""
    from PIL import Image, ImageDraw, ImageFont

    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    rng = np.random.default_rng(seed)
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    shade = 0.5 + 0.25 * np.sin(xx / 97.0 + seed) * np.cos(yy / 131.0) + 0.15 * np.sin((xx + yy) / 23.0)
    stroma = np.array([222, 150, 190], np.float32)
    tinted = np.array([200, 110, 170], np.float32)
    image = Image.fromarray((stroma + (tinted - stroma) * shade[..., None]).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for cx, cy, r in zip(rng.integers(0, w, w * h // 900), rng.integers(0, h, w * h // 900),
                         rng.integers(3, 9, w * h // 900), strict=True):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(90, 40, 130))
    font = ImageFont.load_default(size=48)
    for row in range(96, h - 64, 512):
        draw.text((64, row), f"REGION {seed} ROW {row} GLMIP SLIDE", fill=(40, 20, 70), font=font)
    return np.asarray(image)


def _downsample(pixels: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return pixels
    h, w, c = pixels.shape
    blocks = pixels[: h // factor * factor, : w // factor * factor].reshape(h // factor, factor, w // factor,
                                                                            factor, c)
    sums = blocks.sum(axis=3, dtype=np.uint32).sum(axis=1)
    count = factor * factor
    return ((sums + count // 2) // count).astype(np.uint8)  # floor(mean + 0.5), in integers


def _level_tiles(width: int, height: int, tile: int, background: bytes,
                 regions: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> Iterator[bytes]:
    """Compressed tiles of one level in row-major order; tissue drawn over the constant background."""
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            hits = [(b, p) for b, p in regions if b[0] < tx + tile and tx < b[2] and b[1] < ty + tile and ty < b[3]]
            if not hits:
                yield background
                continue
            block = np.empty((tile, tile, 3), np.uint8)
            block[:] = BACKGROUND
            for (x0, y0, x1, y1), pixels in hits:
                ax, ay, bx, by = max(x0, tx), max(y0, ty), min(x1, tx + tile), min(y1, ty + tile)
                block[ay - ty:by - ty, ax - tx:bx - tx] = pixels[ay - y0:by - y0, ax - x0:bx - x0]
            yield zlib.compress(block.tobytes(), 1)


def write_synthetic_slide(path: str | Path, width: int = 100_000, height: int = 80_000, *, levels: int = 4,
                          tile: int = 512, tissue: int = 3, tissue_size: tuple[int, int] = (4096, 3072),
                          seed: int = 0) -> SyntheticSlide:
    """Write a pyramidal tiled RGB TIFF (level 0 + `levels - 1` SubIFD levels at 4x steps, deflate) to `path`.

    `tissue` regions of `tissue_size` level-0 pixels are spread over the slide (seeded); the rest is
    `BACKGROUND`. Returns a `SyntheticSlide` describing it.
    """
    import tifffile

    if width < 1 or height < 1 or levels < 1 or tile % 16 or tile < 16:
        raise ValueError(f"need width, height, levels >= 1 and a tile that is a multiple of 16; got {width}, "
                         f"{height}, {levels}, {tile}")
    align = 4 ** (levels - 1)
    tw, th = (-(-s // align) * align for s in tissue_size)
    if tw > width or th > height:
        raise ValueError(f"tissue of {tw}x{th} does not fit a {width}x{height} slide")
    rng = np.random.default_rng(seed)
    boxes = []
    for k in range(tissue):
        fx, fy = (k + 0.5) / tissue, rng.uniform(0.2, 0.8)
        x0 = int(min(width - tw, max(0, fx * width - tw / 2))) // align * align
        y0 = int(min(height - th, max(0, fy * height - th / 2))) // align * align
        boxes.append((x0, y0, x0 + tw, y0 + th))
    pixels = [_tissue(b, seed + k) for k, b in enumerate(boxes)]
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(levels):
            factor = 4 ** level
            w, h = width // factor, height // factor
            regions = [(tuple(v // factor for v in b), _downsample(p, factor)) for b, p in zip(boxes, pixels,
                                                                                              strict=True)]
            constant = np.empty((tile, tile, 3), np.uint8)
            constant[:] = BACKGROUND
            background = zlib.compress(constant.tobytes(), 9)
            options = {"subifds": levels - 1} if level == 0 else {"subfiletype": 1}
            tif.write(_level_tiles(w, h, tile, background, regions), shape=(h, w, 3), dtype=np.uint8,
                      tile=(tile, tile), compression=ADOBE_DEFLATE, photometric="rgb", **options)
    return SyntheticSlide(path, width, height, levels, tile, tuple(boxes))
