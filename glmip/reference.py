"""Pure numpy versions of glmip's GPU ops: the oracle of the tests and the no-GL fallback.

Everything here computes in float64 and follows the same conventions as the GPU code
(`glmip.pyramid`): row 0 is the image's top, level sizes follow OpenGL's floor rule,
unorm values are value / (2^bits - 1), rounding is floor(x * scale + 0.5).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .gl.formats import unorm_scale
from .levels import LANCZOS_A, level_sizes

__all__ = [
    "srgb_to_linear", "linear_to_srgb", "decode", "encode", "box_weights", "lanczos_weights", "resample",
    "box_pyramid", "lanczos_pyramid", "area_mean_level", "bilinear_weights", "mip_step", "pyramid", "lsb_error",
    "wrap_index", "nearest_texel", "bilinear", "lod_from_gradients", "trilinear", "nearest", "footprint_assembly",
    "sample", "tokens", "grid_cells", "relevance_pyramid", "saliency_features", "saliency", "detail_pyramid",
    "refine_greedy",
]


# -- value encoding ----------------------------------------------------------------------
def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def decode(image: np.ndarray, srgb: bool = False) -> np.ndarray:
    """Stored values -> float64 in the filtering space (linear light when `srgb`)."""
    if image.dtype.name == "float32":
        return image.astype(np.float64)
    values = image.astype(np.float64) / unorm_scale(image.dtype.name)
    if srgb:
        values = values.copy()
        values[..., :3] = srgb_to_linear(values[..., :3])
    return values


def encode(values: np.ndarray, dtype: np.dtype | str, srgb: bool = False) -> np.ndarray:
    """float64 values -> stored values of `dtype` (the inverse of `decode`, rounding to nearest)."""
    dtype = np.dtype(dtype)
    if dtype.name == "float32":
        return values.astype(np.float32)
    values = np.clip(values, 0.0, 1.0)
    if srgb:
        values = values.copy()
        values[..., :3] = linear_to_srgb(values[..., :3])
    return np.floor(values * unorm_scale(dtype.name) + 0.5).astype(dtype)


# -- 1-D resampling weights --------------------------------------------------------------
@lru_cache(maxsize=256)
def box_weights(n_source: int, n_destination: int) -> np.ndarray:
    """(n_destination, n_source) area weights: destination texel i averages source span
    [i * n_source / n_destination, (i + 1) * n_source / n_destination)."""
    edges = np.arange(n_destination + 1) * n_source / n_destination
    lo, hi = edges[:-1, None], edges[1:, None]
    m = np.arange(n_source)[None, :]
    overlap = np.clip(np.minimum(hi, m + 1) - np.maximum(lo, m), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _lanczos(t: np.ndarray, a: int) -> np.ndarray:
    return np.where(np.abs(t) < a, np.sinc(t) * np.sinc(t / a), 0.0)


@lru_cache(maxsize=256)
def lanczos_weights(n_source: int, n_destination: int, a: int = LANCZOS_A) -> np.ndarray:
    """(n_destination, n_source) Lanczos-a weights scaled to the destination spacing,
    clamp-to-edge (taps past an edge land on the edge texel), rows summing to 1."""
    scale = n_source / n_destination
    weights = np.zeros((n_destination, n_source))
    for i in range(n_destination):
        centre = (i + 0.5) * scale
        taps = np.arange(int(np.floor(centre - a * scale)), int(np.ceil(centre + a * scale)) + 1)
        w = _lanczos((taps + 0.5 - centre) / scale, a)
        np.add.at(weights[i], np.clip(taps, 0, n_source - 1), w)
    return weights / weights.sum(axis=1, keepdims=True)


def resample(values: np.ndarray, size: tuple[int, int], weights_fn) -> np.ndarray:
    """Separable resampling of float `HxWxC` values to `size` = (width, height)."""
    h, w = values.shape[:2]
    out = values
    if size[0] != w:
        out = np.einsum("jx,yxc->yjc", weights_fn(w, size[0]), out)
    if size[1] != h:
        out = np.einsum("iy,yxc->ixc", weights_fn(h, size[1]), out)
    return out


# -- pyramids ----------------------------------------------------------------------------


def box_pyramid(image: np.ndarray, srgb: bool = False) -> list[np.ndarray]:
    """Reference of method "box": every level the exact area mean of level 0 (`area_mean_level`)."""
    linear = decode(image, srgb)
    return [image.copy()] + [
        encode(resample(linear, size, box_weights), image.dtype, srgb)
        for size in level_sizes(image.shape[1], image.shape[0])[1:]
    ]


def lanczos_pyramid(image: np.ndarray, srgb: bool = False) -> list[np.ndarray]:
    """Reference of method "lanczos": separable Lanczos-3, each level from the float level above."""
    current = decode(image, srgb)
    levels = [image.copy()]
    for size in level_sizes(image.shape[1], image.shape[0])[1:]:
        current = resample(current, size, lanczos_weights)  # from the unrounded level above
        levels.append(encode(current, image.dtype, srgb))
    return levels


def area_mean_level(image: np.ndarray, level: int, srgb: bool = False) -> np.ndarray:
    """Level `level` as the exact area mean of the level-0 texels each texel covers, rounded once.

    Every texel of level L covers the span [i * W / w_L, (i + 1) * W / w_L) of level 0 in
    each axis; texels partly inside count by the part inside. This is the drift yardstick.
    """
    size = level_sizes(image.shape[1], image.shape[0])[level]
    return encode(resample(decode(image, srgb), size, box_weights), image.dtype, srgb)


@lru_cache(maxsize=256)
def bilinear_weights(n_source: int, n_destination: int) -> np.ndarray:
    """(n_destination, n_source) weights of one bilinear tap at each destination texel's centre,
    clamp-to-edge. On an even source this is the 2-texel box; on an odd one it skips texels."""
    weights = np.zeros((n_destination, n_source))
    for i in range(n_destination):
        c = (i + 0.5) * n_source / n_destination - 0.5
        f = int(np.floor(c))
        t = c - f
        weights[i, min(max(f, 0), n_source - 1)] += 1 - t
        weights[i, min(max(f + 1, 0), n_source - 1)] += t
    return weights


def mip_step(level_above: np.ndarray, weights_fn=box_weights, srgb: bool = False) -> np.ndarray:
    """One reduction of an already stored (rounded) level to the next mip size, rounded again:
    how glGenerateMipmap builds each level from the level above. GL leaves the filter to the
    driver: on even sizes every one averages 2x2 (`box_weights` and `bilinear_weights` agree);
    on odd sizes Mesa takes one bilinear tap per texel (`bilinear_weights`)."""
    h, w = level_above.shape[:2]
    size = (max(1, w // 2), max(1, h // 2))
    return encode(resample(decode(level_above, srgb), size, weights_fn), level_above.dtype, srgb)


def pyramid(image: np.ndarray, method: str = "box", srgb: bool = False) -> list[np.ndarray]:
    """Reference pyramid for `method` ("hardware" is modelled as Mesa's repeated bilinear `mip_step`)."""
    if method == "box":
        return box_pyramid(image, srgb)
    if method == "lanczos":
        return lanczos_pyramid(image, srgb)
    if method == "hardware":
        levels = [image.copy()]
        for _ in level_sizes(image.shape[1], image.shape[0])[1:]:
            levels.append(mip_step(levels[-1], bilinear_weights, srgb))
        return levels
    raise ValueError(f"unknown pyramid method {method!r}; choose 'hardware', 'box' or 'lanczos'")


def lsb_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference between two levels in units of the format's LSB (float32: raw units)."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# -- sampling (OpenGL's rules) -----------------------------------------------------------
def wrap_index(i: np.ndarray, n: int, wrap: str) -> np.ndarray:
    """Integer texel indices wrapped as GL's CLAMP_TO_EDGE, REPEAT or MIRRORED_REPEAT do."""
    if wrap == "clamp":
        return np.clip(i, 0, n - 1)
    if wrap == "repeat":
        return np.mod(i, n)
    if wrap == "mirror":
        a = np.mod(i, 2 * n) - n
        return (n - 1) - np.where(a >= 0, a, -(1 + a))
    raise ValueError(f"unknown wrap {wrap!r}")


def nearest_texel(level: np.ndarray, uv: np.ndarray, wrap: str = "clamp") -> np.ndarray:
    """The texel containing each uv of float `level` (h, w, C): index floor(u * w)."""
    h, w = level.shape[:2]
    i = wrap_index(np.floor(uv[:, 0] * w).astype(np.int64), w, wrap)
    j = wrap_index(np.floor(uv[:, 1] * h).astype(np.int64), h, wrap)
    return level[j, i]


def bilinear(level: np.ndarray, uv: np.ndarray, wrap: str = "clamp") -> np.ndarray:
    """Bilinear filtering of float `level` (h, w, C) at uv, texel centres at (i + 0.5) / w."""
    h, w = level.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = uv[:, 1] * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    a, b = (x - x0)[:, None], (y - y0)[:, None]
    i0, j0 = x0.astype(np.int64), y0.astype(np.int64)
    i0w, i1w = wrap_index(i0, w, wrap), wrap_index(i0 + 1, w, wrap)
    j0w, j1w = wrap_index(j0, h, wrap), wrap_index(j0 + 1, h, wrap)
    return ((1 - a) * (1 - b) * level[j0w, i0w] + a * (1 - b) * level[j0w, i1w]
            + (1 - a) * b * level[j1w, i0w] + a * b * level[j1w, i1w])


def lod_from_gradients(grad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """GL's level of detail for (N, 2, 2) uv gradients on a (width, height) level 0:
    log2 of the longer of the two footprint axes measured in level-0 texels."""
    scale = np.array(size, dtype=np.float64)
    rho = np.maximum(np.linalg.norm(grad[:, 0] * scale, axis=1), np.linalg.norm(grad[:, 1] * scale, axis=1))
    with np.errstate(divide="ignore"):
        return np.log2(rho)


def trilinear(levels: list[np.ndarray], uv: np.ndarray, lod: np.ndarray, wrap: str = "clamp") -> np.ndarray:
    """LINEAR_MIPMAP_LINEAR at per-point `lod` over float levels: lod <= 0 magnifies level 0,
    lod >= the last level uses it alone, else the two levels around lod blend linearly."""
    last = len(levels) - 1
    lod = np.clip(np.asarray(lod, np.float64), 0.0, last)
    lower = np.minimum(np.floor(lod).astype(np.int64), last)
    frac = (lod - lower)[:, None]
    out = np.zeros((uv.shape[0], levels[0].shape[2]))
    for d in np.unique(lower):
        m = lower == d
        value = bilinear(levels[d], uv[m], wrap)
        if d < last:
            value = (1 - frac[m]) * value + frac[m] * bilinear(levels[d + 1], uv[m], wrap)
        out[m] = value
    return out


def nearest(levels: list[np.ndarray], uv: np.ndarray, lod: np.ndarray, wrap: str = "clamp") -> np.ndarray:
    """NEAREST_MIPMAP_NEAREST: level ceil(lod + 0.5) - 1 (0 up to lod 0.5), nearest texel there."""
    lod = np.asarray(lod, np.float64)
    level_index = np.where(lod > 0.5, np.ceil(lod + 0.5) - 1, 0).astype(np.int64)
    level_index = np.clip(level_index, 0, len(levels) - 1)
    out = np.zeros((uv.shape[0], levels[0].shape[2]))
    for d in np.unique(level_index):
        m = level_index == d
        out[m] = nearest_texel(levels[d], uv[m], wrap)
    return out


def footprint_assembly(levels: list[np.ndarray], uv: np.ndarray, grad: np.ndarray, max_anisotropy: float,
                       lod_bias: float = 0.0, wrap: str = "clamp") -> np.ndarray:
    """glmip's shader anisotropic filter: N = min(ceil(P_max / P_min - 1e-3), max_anisotropy) trilinear
    taps evenly spread along the footprint's major axis, each at log2(P_max / N) + bias."""
    h, w = levels[0].shape[:2]
    scale = np.array([w, h], dtype=np.float64)
    len_x = np.linalg.norm(grad[:, 0] * scale, axis=1)
    len_y = np.linalg.norm(grad[:, 1] * scale, axis=1)
    major = np.where((len_x >= len_y)[:, None], grad[:, 0], grad[:, 1])
    p_max, p_min = np.maximum(len_x, len_y), np.minimum(len_x, len_y)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.where(p_min > 0, np.minimum(np.ceil(p_max / p_min - 1e-3), max_anisotropy),
                     np.where(p_max > 0, max_anisotropy, 1.0))
    n = np.maximum(n, 1.0).astype(np.int64)
    lod = np.log2(np.maximum(p_max / n, 1e-30)) + lod_bias
    out = np.zeros((uv.shape[0], levels[0].shape[2]))
    for taps in np.unique(n):
        m = n == taps
        for k in range(taps):
            t = (k + 0.5) / taps - 0.5
            out[m] += trilinear(levels, uv[m] + major[m] * t, lod[m], wrap)
        out[m] /= taps
    return out


def sample(levels: list[np.ndarray], uv: np.ndarray, lod: np.ndarray | float | None = None, *,
           filter: str = "trilinear", grad: np.ndarray | None = None, anisotropy: float = 16,
           lod_bias: float = 0.0, wrap: str = "clamp", srgb: bool = False) -> np.ndarray:
    """Reference of `Pyramid.sample` over stored `levels` (HxWxC each, as `Pyramid.level` gives)."""
    decoded = [decode(level, srgb) for level in levels]
    uv = np.asarray(uv, np.float64)
    n = uv.shape[0]
    h, w = levels[0].shape[:2]
    if filter == "bilinear":
        return bilinear(decoded[0], uv, wrap)
    if filter == "anisotropic":
        return footprint_assembly(decoded, uv, np.asarray(grad, np.float64), anisotropy, lod_bias, wrap)
    if grad is not None:
        lods = lod_from_gradients(np.asarray(grad, np.float64), (w, h)) + lod_bias
    else:
        lods = np.broadcast_to(np.asarray(0.0 if lod is None else lod, np.float64), (n,)) + lod_bias
    if filter == "trilinear":
        return trilinear(decoded, uv, lods, wrap)
    if filter == "nearest":
        return nearest(decoded, uv, lods, wrap)
    raise ValueError(f"no reference for filter {filter!r}")


def tokens(levels: list[np.ndarray], cx: np.ndarray, cy: np.ndarray, size: np.ndarray, level: np.ndarray,
           patch: int, srgb: bool = False) -> np.ndarray:
    """Reference of `Pyramid.tokens`: (N, C, patch, patch) trilinear samples at the centres of a
    patch x patch grid over each token's square, at the token's level."""
    h, w = levels[0].shape[:2]
    offsets = (np.arange(patch) + 0.5) / patch - 0.5
    gx, gy = np.meshgrid(offsets, offsets)  # row-major: gy varies down the rows
    px = np.asarray(cx, np.float64)[:, None] + gx.ravel()[None, :] * np.asarray(size, np.float64)[:, None]
    py = np.asarray(cy, np.float64)[:, None] + gy.ravel()[None, :] * np.asarray(size, np.float64)[:, None]
    uv = np.stack([px.ravel() / w, py.ravel() / h], axis=1)
    lod = np.repeat(np.asarray(level, np.float64), patch * patch)
    values = trilinear([decode(lv, srgb) for lv in levels], uv, lod)
    n, c = len(cx), levels[0].shape[2]
    return values.reshape(n, patch, patch, c).transpose(0, 3, 1, 2)


def grid_cells(levels: list[np.ndarray], level: int, patch: int, srgb: bool = False) -> np.ndarray:
    """Reference of `glmip.grids` (tokens): level `level` decoded, zero-padded at its bottom and right to a
    multiple of `patch`, cut into (rows · cols, C, patch, patch) cells in row-major order."""
    values = decode(levels[level], srgb)
    h, w, c = values.shape
    rows, cols = -(-h // patch), -(-w // patch)
    padded = np.zeros((rows * patch, cols * patch, c))
    padded[:h, :w] = values
    return padded.reshape(rows, patch, cols, patch, c).transpose(0, 2, 4, 1, 3).reshape(rows * cols, c, patch, patch)


def relevance_pyramid(relevance: np.ndarray, cell: int, image_size: tuple[int, int]) -> list[np.ndarray]:
    """Reference of `glmip.relevance.relevance_pyramid`: per level (gh, gw, 3) float32 texels of
    (area-weighted mean, max, in-image area) over base cells of `cell` image pixels, grids halving
    with rounding up."""
    width, height = image_size
    r = np.asarray(relevance, np.float64)
    grid = (-(-width // cell), -(-height // cell))

    def spans(n_cells: int, n_pixels: int, n_map: int) -> tuple[np.ndarray, np.ndarray]:
        """(cells, map) overlap weights along one axis, and each cell's in-image extent in pixels."""
        p0 = np.arange(n_cells) * cell
        p1 = np.minimum(p0 + cell, n_pixels)
        r0, r1 = p0 * n_map / n_pixels, p1 * n_map / n_pixels
        texels = np.arange(n_map)
        overlap = np.minimum(r1[:, None], texels[None, :] + 1) - np.maximum(r0[:, None], texels[None, :])
        return np.clip(overlap, 0, None), (p1 - p0).astype(np.float64)

    wy, extent_y = spans(grid[1], height, r.shape[0])
    wx, extent_x = spans(grid[0], width, r.shape[1])
    mean = (wy @ r @ wx.T) / (wy.sum(1)[:, None] * wx.sum(1)[None, :])
    row_peaks = np.stack([r[wy[j] > 0].max(axis=0) for j in range(grid[1])])
    peak = np.stack([row_peaks[:, wx[i] > 0].max(axis=1) for i in range(grid[0])], axis=1)
    levels = [np.stack([mean, peak, extent_y[:, None] * extent_x[None, :]], axis=-1)]
    while levels[-1].shape[:2] != (1, 1):
        fine = levels[-1]
        h, w = fine.shape[:2]
        padded = np.zeros((h + h % 2, w + w % 2, 3))
        padded[:h, :w] = fine
        blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 3)
        area = blocks[..., 2].sum(axis=(1, 3))
        mass = (blocks[..., 0] * blocks[..., 2]).sum(axis=(1, 3))
        coarse_mean = np.divide(mass, area, out=np.zeros_like(mass), where=area > 0)
        levels.append(np.stack([coarse_mean, blocks[..., 1].max(axis=(1, 3)), area], axis=-1))
    return [level.astype(np.float32) for level in levels]


def detail_pyramid(levels: list[np.ndarray], patch: int, min_level: int = 0, srgb: bool = False) -> list[np.ndarray]:
    """Reference of `glmip.detail.detail_pyramid` over one image's stored `levels` (HxWxC each, as
    `Pyramid.level` gives): per allocation level k, (gh_k, gw_k) float64 energies of token level
    L = min_level + k (see `glmip.detail`'s convention): every texel of level L goes to the cell holding
    its centre, and adds its area in level-0 pixels times the squared difference, summed over channels,
    between it and level L + 1 upsampled bilinearly at its centre (clamp to edge); 0 past the chain."""
    height, width = levels[0].shape[:2]
    cell = patch << min_level
    grids = [(-(-width // cell), -(-height // cell))]
    while grids[-1] != (1, 1):
        grids.append(((grids[-1][0] + 1) // 2, (grids[-1][1] + 1) // 2))
    out = []
    for k, (gw, gh) in enumerate(grids):
        level = min_level + k
        energy = np.zeros((gh, gw))
        if level + 1 < len(levels):
            fine = decode(levels[level], srgb)
            fh, fw = fine.shape[:2]
            up = resample(decode(levels[level + 1], srgb), (fw, fh), bilinear_weights)
            error = ((fine - up) ** 2).sum(axis=2) * (width / fw) * (height / fh)
            side = patch << level
            column = (2 * np.arange(fw) + 1) * width // (2 * side * fw)  # the cell holding each texel's centre
            row = (2 * np.arange(fh) + 1) * height // (2 * side * fh)
            np.add.at(energy, (row[:, None], column[None, :]), error)
        out.append(energy)
    return out


def saliency_features(values: np.ndarray) -> np.ndarray:
    """Intensity and two colour-opponent features of (N, C) samples (C < 3: the first channel)."""
    if values.shape[1] < 3:
        return np.stack([values[:, 0], np.zeros(len(values)), np.zeros(len(values))], axis=1)
    r, g, b = values[:, 0], values[:, 1], values[:, 2]
    return np.stack([(r + g + b) / 3, r - g, b - 0.5 * (r + g)], axis=1)


def saliency(levels: list[np.ndarray], size: tuple[int, int], centres: tuple[int, ...], deltas: tuple[int, ...],
             srgb: bool = False) -> np.ndarray:
    """Reference of `glmip.relevance.saliency(normalise=False)`: summed centre-surround feature
    distances at the centres of a `size` = (width, height) grid, trilinear at each level."""
    width, height = size
    xs, ys = np.meshgrid((np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height)
    uv = np.stack([xs.ravel(), ys.ravel()], axis=1)
    decoded = [decode(level, srgb) for level in levels]
    total = np.zeros(len(uv))
    for c in centres:
        centre = saliency_features(trilinear(decoded, uv, np.full(len(uv), float(c))))
        for d in deltas:
            surround = saliency_features(trilinear(decoded, uv, np.full(len(uv), float(c + d))))
            total += np.linalg.norm(centre - surround, axis=1)
    return total.reshape(height, width)


def _spread_rank(x: int, y: int, grid: tuple[int, int]) -> int:
    """Bit-reversed Morton code of cell (x, y) in a (width, height) grid (see `glmip.allocate.spread_rank`)."""
    bits = max(1, (max(grid) - 1).bit_length())
    morton = 0
    for b in range(bits):
        morton |= ((x >> b) & 1) << (2 * b) | ((y >> b) & 1) << (2 * b + 1)
    return int(format(morton, f"0{2 * bits}b")[::-1], 2)


def allocate_greedy(pyramid, budget: int, patch: int, min_level: int = 0, max_level: int | None = None, *,
                    classes=None, contrast: bool = True, ties: str = "spread", detail=None):
    """Reference of `glmip.allocate_batch` for one image: the heap-driven greedy quadtree, one split at a time.

    `pyramid` is a `RelevancePyramid` with cell `patch << min_level`. With `contrast=False,
    ties="insertion"` this is glmip's allocator before it was vectorised: score = mean x area, ties
    coarsest first, then in the order cells entered the heap. With the defaults it is the rule
    `allocate_batch` computes: score = area x max(mean - median of the finest means, 0), each cell's
    score capped by its parent's, ties by the larger relevance mass, then coarsest first, then by
    `_spread_rank`. With `detail` (a `glmip.detail.DetailPyramid` of the same grid) a split's gain is the
    relevance-weighted detail it restores: the sum over the cell's quadrants inside the image of their
    relevance mean x their detail energy, added in reading order; a cell's score is the largest gain of
    itself or any splittable cell below it (no floor; capped by the parent's as above, which then never binds).
    """
    import heapq

    from .layout import TokenLayout

    width, height = pyramid.image_size
    cell = patch << min_level
    means = pyramid.levels[0][..., 0]
    floor = float(np.median(means)) if contrast and detail is None else 0.0
    floor = floor if floor >= 0.1 * float(means.max()) else 0.0  # as glmip.allocate.FLOOR_SHARE

    def texel(x: int, y: int, level: int) -> tuple[float, float, float]:
        k = level - min_level
        return pyramid.texel(k, x // (cell << k), y // (cell << k))

    def detail_gain(x: int, y: int, level: int) -> float:
        total = 0.0
        for kx, ky, kid_level in children(x, y, level):
            k = kid_level - min_level
            column, row = kx // (cell << k), ky // (cell << k)
            total += float(pyramid.levels[k][row, column, 0]) * float(detail.levels[k][row, column])
        return total

    def detail_reach(x: int, y: int, level: int) -> float:
        below = [detail_reach(*kid) for kid in children(x, y, level) if kid[2] > min_level]
        return max([detail_gain(x, y, level)] + below)

    def score(x: int, y: int, level: int) -> float:
        if detail is not None:
            return detail_reach(x, y, level)
        mean, _, area = texel(x, y, level)
        return area * max(mean - floor, 0.0) if contrast else mean * area

    def mass(x: int, y: int, level: int) -> float:
        mean, _, area = texel(x, y, level)
        return float(mean) * float(area) if contrast else 0.0

    def is_relevant(x: int, y: int, level: int) -> bool:
        return classes is not None and float(texel(x, y, level)[1]) >= classes.threshold

    def grid(level: int) -> tuple[int, int]:
        side = patch << level
        return -(-width // side), -(-height // side)

    def tie(x: int, y: int, level: int, order: int) -> int:
        if ties == "insertion":
            return order
        side = patch << level
        return _spread_rank(x // side, y // side, grid(level))

    def roots(level: int) -> list[tuple[int, int, int]]:
        side = patch << level
        columns, rows = grid(level)
        return [(x * side, y * side, level) for y in range(rows) for x in range(columns)]

    def over_class_maximum(cells: list[tuple[int, int, int]]) -> bool:
        if classes is None:
            return False
        relevant = sum(is_relevant(*c) for c in cells)
        return relevant > classes.relevant[1] or len(cells) - relevant > classes.background[1]

    top = min_level + len(pyramid.levels) - 1
    if max_level is None:
        max_level = min_level
        while max_level < top and (np.prod(grid(max_level)) > max(1, budget // 8)
                                   or over_class_maximum(roots(max_level))):
            max_level += 1
    else:
        max_level = min(max_level, top)
    cells = roots(max_level)
    if len(cells) > budget or over_class_maximum(cells):
        raise ValueError(f"a budget of {budget} tokens cannot cover a {width}x{height} image at max_level {max_level}")

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

    # heap items: (-effective score, -mass, -level, tie, cell); score and mass are capped by the parent's
    heap = [(-score(*c), -mass(*c), -c[2], tie(*c, i), c) for i, c in enumerate(cells) if c[2] > min_level]
    heapq.heapify(heap)
    order = len(cells)

    def run(heap: list, wanted) -> None:
        nonlocal order
        skipped = []
        while heap:
            item = heapq.heappop(heap)
            parent = item[4]
            after, kids = split_counts(parent)
            verdict = wanted(after) if fits(after) else None
            if verdict is None:
                skipped.append(item)
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
                    kid_score = min(score(*kid), -item[0]) if contrast or detail is not None else score(*kid)
                    kid_mass = min(mass(*kid), -item[1])
                    heapq.heappush(heap, (-kid_score, -kid_mass, -kid[2], tie(*kid, order), kid))
        for item in skipped:
            heapq.heappush(heap, item)

    if deficient(counts):
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
def refine_greedy(layout, scores, budget: int, min_level: int = 0):
    """Reference of `glmip.refine.refine` for one image, one token at a time: (refined TokenLayout, (N',) bool
    True where a token is new).

    Tokens above `min_level` are visited by (score descending, level descending, bit-reversed Morton code of
    the cell in its level's grid); each splits into the quadrants of half its side whose top-left corner lies
    inside the image, when the (quadrants - 1) tokens it adds fit in what is left of `budget`, else it is
    passed over. The result is sorted by (top, left).
    """
    from .layout import TokenLayout

    width, height = layout.image_size
    patch = int(layout.patch)
    candidates = []
    for i in range(len(layout)):
        level = int(layout.level[i])
        side = patch << level
        left, top = int(round(layout.cx[i] - side / 2)), int(round(layout.cy[i] - side / 2))
        if level <= min_level:
            continue
        half = side // 2
        kids = [(left + dx * half, top + dy * half) for dy in (0, 1) for dx in (0, 1)
                if left + dx * half < width and top + dy * half < height]
        grid = (-(-width // side), -(-height // side))
        key = (-float(scores[i]), -level, _spread_rank(left // side, top // side, grid))
        candidates.append((key, i, kids))
    candidates.sort(key=lambda c: c[0])
    room = budget - len(layout)
    children = {}
    for _, i, kids in candidates:
        if len(kids) - 1 <= room:
            children[i] = kids
            room -= len(kids) - 1
    tokens = []  # (top, left, level, new)
    for i in range(len(layout)):
        level = int(layout.level[i])
        side = patch << level
        if i in children:
            tokens += [(top, left, level - 1, True) for left, top in children[i]]
        else:
            tokens.append((int(round(layout.cy[i] - side / 2)), int(round(layout.cx[i] - side / 2)), level, False))
    tokens.sort()
    top, left, level, new = (np.array(column) for column in zip(*tokens, strict=True))
    sizes = (patch << level.astype(np.int64)).astype(np.float64)
    return TokenLayout(cx=left + sizes / 2, cy=top + sizes / 2, size=sizes, level=level.astype(np.int64), patch=patch,
                       image_size=(int(width), int(height))), new.astype(bool)


# -- warps (glmip.warp) ---------------------------------------------------------------------
def warp_supersampled(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], samples: int = 8,
                      border: str = "clamp", srgb: bool = False) -> np.ndarray:
    """The ideal of `glmip.warp` for one homography: every output pixel the mean of the level-0 image
    (piecewise constant, each texel a unit square) over the pixel's preimage, estimated by samples x
    samples point samples spread evenly over the output pixel's square (a box filter). (h, w, C) float64.
    At an integer minification k with samples a multiple of k this is the exact k x k area mean.

    Convention: as `glmip.warp` -- `matrix` maps output pixel positions to input pixel positions, origin
    at the top-left corner, pixel centres at i + 0.5; sub-sample (a, b) of output pixel (i, j) sits at
    (i + (a + 0.5) / samples, j + (b + 0.5) / samples) and takes the texel containing its source
    (floor). A sub-sample whose source has w <= 0 counts as 0. `border` "clamp", "repeat", "mirror" as GL
    wraps, "zero": 0 outside the image. The box over the pixel is the reference's only low-pass, so a
    footprint far longer than `samples` texels still aliases a little.
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples}")
    level = decode(image, srgb)
    height_in, width_in = level.shape[:2]
    if border not in ("clamp", "zero", "repeat", "mirror"):
        raise ValueError(f"unknown border {border!r}")
    h_matrix = np.asarray(matrix, np.float64)
    width, height = size
    offsets = (np.arange(samples) + 0.5) / samples
    sub_x = (np.arange(width)[:, None] + offsets[None, :]).ravel()  # (width * samples,)
    out = np.zeros((height, width, level.shape[2]))
    for j in range(height):
        xs, ys = np.meshgrid(sub_x, j + offsets)  # (samples, width * samples)
        q = [h_matrix[r, 0] * xs + h_matrix[r, 1] * ys + h_matrix[r, 2] for r in range(3)]
        valid = q[2] > 0
        w = np.where(valid, q[2], 1.0)
        far = 2.0**40  # sources near the horizon: any texel index this far out wraps or clamps the same
        i = np.floor(np.clip(q[0] / w, -far, far)).astype(np.int64)
        k = np.floor(np.clip(q[1] / w, -far, far)).astype(np.int64)
        if border == "zero":
            valid = valid & (i >= 0) & (i < width_in) & (k >= 0) & (k < height_in)
            wrap = "clamp"
        else:
            wrap = border
        values = level[wrap_index(k, height_in, wrap), wrap_index(i, width_in, wrap)]
        values = (values * valid[..., None]).reshape(samples, width, samples, -1)
        out[j] = values.mean(axis=(0, 2))
    return out


def psnr(image: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of `image` against `reference` (same shape), inf when equal."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(peak * peak / mse))


def aliasing_energy(image: np.ndarray, reference: np.ndarray, band: float = 0.25) -> float:
    """Aliasing of a warp output (h, w, C) against the supersampled reference: the mean power of their
    difference at radial spatial frequencies above `band` cycles per output pixel (the output's Nyquist
    frequency is 0.5). Content above a minified output's Nyquist band that a filter fails to remove folds
    back into this upper part of the band, where the box-filtered reference holds little."""
    diff = np.asarray(image, np.float64) - np.asarray(reference, np.float64)
    h, w = diff.shape[:2]
    spectrum = np.abs(np.fft.fft2(diff, axes=(0, 1))) ** 2 / (h * w)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    high = np.hypot(fx, fy) > band
    return float(spectrum[high].sum() / (h * w * diff.shape[2]))


def warp_quad_gradients(matrix: np.ndarray, size: tuple[int, int], image_size: tuple[int, int],
                        kind: str = "fine") -> np.ndarray:
    """The uv gradients (h, w, 2, 2) a rasterizer derives for `glmip.warp`'s fragments: finite differences
    over each 2x2 pixel quad ([..., 0, :] = d(uv)/dx, [..., 1, :] = d(uv)/dy). "fine": each pixel differences
    its own row (x) and column (y) of the quad (GLSL dFdxFine/dFdyFine); "coarse": every pixel of the quad
    takes its top-left pixel's differences (dFdxCoarse/dFdyCoarse; what llvmpipe's texture() uses for its LOD).

    Convention: as `glmip.warp`; quads start at even pixel indices, output row 0 is framebuffer row 0.
    """
    if kind not in ("fine", "coarse"):
        raise ValueError(f"kind must be 'fine' or 'coarse', got {kind!r}")
    h_matrix = np.asarray(matrix, np.float64)
    width, height = size
    x, y = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    even_x, even_y = np.floor(x / 2) * 2 + 0.5, np.floor(y / 2) * 2 + 0.5
    scale = np.array(image_size, np.float64)

    def uv_at(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        q = [h_matrix[r, 0] * px + h_matrix[r, 1] * py + h_matrix[r, 2] for r in range(3)]
        return np.stack([q[0] / q[2], q[1] / q[2]], axis=-1) / scale

    row_y, column_x = (y, x) if kind == "fine" else (even_y, even_x)
    with np.errstate(divide="ignore", invalid="ignore"):
        grad_x = uv_at(even_x + 1, row_y) - uv_at(even_x, row_y)
        grad_y = uv_at(column_x, even_y + 1) - uv_at(column_x, even_y)
    return np.stack([grad_x, grad_y], axis=-2)
