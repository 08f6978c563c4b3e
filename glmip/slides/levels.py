"""The levels of a slide under `Pyramid`'s `box` convention, computed on the host a region at a time.

Convention (the one `glmip.levels` and `Pyramid(method="box")` use): level L of a W x H image is
w_L x h_L = max(1, W >> L) x max(1, H >> L); texel i of level L covers the level-0 span
[i * W / w_L, (i + 1) * W / w_L) on x (likewise y), and holds the exact area mean of the level-0 texels
there, partly covered texels weighted by the part covered, computed in float64 and rounded once
(`glmip.reference.encode`). Where W and H are multiples of 2^L that is the mean of 2^L x 2^L blocks; at
odd sizes the spans are wider than 2^L and do not start on block edges, which is why a tile's own mip
chain cannot reproduce them and a slide keeps every level (see `glmip.slides.slide`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..levels import level_sizes
from ..reference import decode, encode

__all__ = ["source_span", "area_mean", "area_mean_of", "exact_levels"]

BAND_SOURCE_ROWS = 256  # level-0 rows decoded to float64 at a time


def source_span(n_source: int, n_destination: int, first: int, last: int) -> tuple[int, int]:
    """The source texels [lo, hi) that destination texels [first, last) of an area resample cover."""
    return (first * n_source) // n_destination, -(-(last * n_source) // n_destination)


def _area_axis(values: np.ndarray, axis: int, n_source: int, n_destination: int, first: int, last: int,
               offset: int) -> np.ndarray:
    """Destination texels [first, last) along `axis` of an n_source -> n_destination area resample, from
    float64 `values` holding source texels [offset, offset + values.shape[axis]) of that axis."""
    if n_source == n_destination:
        return np.take(values, np.arange(first - offset, last - offset), axis=axis)
    count = values.shape[axis]
    moved = np.moveaxis(values, axis, 0)
    cumulative = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0)])
    edges = np.arange(first, last + 1, dtype=np.float64) * n_source / n_destination - offset
    index = np.clip(np.floor(edges).astype(np.int64), 0, count - 1)
    fraction = (edges - index).reshape(-1, *([1] * (moved.ndim - 1)))
    integral = cumulative[index] + fraction * moved[index]  # the integral of the values up to each edge
    means = (integral[1:] - integral[:-1]) * (n_destination / n_source)
    return np.moveaxis(means, 0, axis)


def area_mean(source: np.ndarray, source_size: tuple[int, int], size: tuple[int, int],
              box: tuple[int, int, int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Texels `box` = (x0, y0, x1, y1) of the `size` = (w, h) area resample of a `source_size` = (W, H)
    image, float64 (y1 - y0, x1 - x0, C); `source` holds float64 values of that image's texels from
    `origin` = (x, y) on, at least `source_span` of the box on each axis."""
    x0, y0, x1, y1 = box
    values = _area_axis(source, 1, source_size[0], size[0], x0, x1, origin[0])
    return _area_axis(values, 0, source_size[1], size[1], y0, y1, origin[1])


def area_mean_of(read: Callable[[int, int, int, int], np.ndarray], source_size: tuple[int, int],
                 size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """`area_mean` of texels `box` of the `size` resample of a `source_size` image whose stored pixels
    `read(x0, y0, x1, y1)` returns (any dtype `decode` takes), a band of at most about `BAND_SOURCE_ROWS`
    source rows at a time so the float64 copies stay small; float64 (y1 - y0, x1 - x0, C)."""
    x0, y0, x1, y1 = box
    lx, hx = source_span(source_size[0], size[0], x0, x1)
    out: np.ndarray | None = None
    rows = max(1, BAND_SOURCE_ROWS * size[1] // source_size[1])
    for top in range(y0, y1, rows):
        bottom = min(y1, top + rows)
        ly, hy = source_span(source_size[1], size[1], top, bottom)
        band = area_mean(decode(read(lx, ly, hx, hy)), source_size, size, (x0, top, x1, bottom), (lx, ly))
        if out is None:
            out = np.empty((y1 - y0, x1 - x0, band.shape[2]))
        out[top - y0:bottom - y0] = band
    assert out is not None
    return out


def _nests(size_above: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether each texel of `size` covers exactly 2 x 2 (or, on a 1-texel axis, 1) texels of `size_above`."""
    return all(a == 2 * b or a == b == 1 for a, b in zip(size_above, size, strict=True))


def exact_levels(pixels: np.ndarray) -> list[np.ndarray]:
    """Every level of `pixels` (h, w, C; uint8, uint16 or float32) down to 1x1, each in its dtype under the
    module's convention: equal to `glmip.reference.box_pyramid`, computed in bounded float memory.

    As `Pyramid`'s box build: a level whose texels nest in the level above's (both axes halve exactly) is
    the mean of 2 x 2 texels of the unrounded level above, which is the exact mean of level 0 there; any
    other level is resampled from level 0 directly, `BAND_SOURCE_ROWS` level-0 rows at a time."""
    height, width = pixels.shape[:2]
    sizes = level_sizes(width, height)
    levels = [pixels]
    above: np.ndarray | None = None  # the unrounded float64 level above, while the chain nests
    for level, size in enumerate(sizes[1:], start=1):
        w, h = size
        if above is not None and _nests(sizes[level - 1], size):
            ah, aw = above.shape[:2]
            current = above.reshape(h, ah // h, w, aw // w, -1).mean(axis=(1, 3))
        else:
            current = area_mean_of(lambda x0, y0, x1, y1: pixels[y0:y1, x0:x1], (width, height), size,
                                   (0, 0, w, h))
        levels.append(encode(current, pixels.dtype))
        above = current
    return levels
