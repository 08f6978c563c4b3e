"""`Slide`: a whole-slide image (a pyramidal tiled TIFF, or an array of any size) sampled through GPU tiles
as if it were one glmip pyramid: samples, tokens and renders, relevance over the slide and a token budget.

Every mip level of the slide is tiled on its own (`glmip.slides.tiles`): each sample or token pixel is split
into the level taps GL's filter makes (trilinear: the two levels around its lod, blended on the host), and
each tap is read from the tile of its level whose interior holds it; each tile is uploaded once as an
ordinary `Pyramid` whose level 0 alone is read, and kept in a byte-bounded LRU. Host memory is bounded by
the file-tile cache, GL memory by the pyramid cache; neither grows with the slide.

Convention: positions in level-0 pixels ((0, 0) the slide's top-left corner) or uv in [0, 1]^2 over level 0,
texel centres at (i + 0.5) / width, as `Pyramid`. An array's levels are `Pyramid`'s `box` levels
(`glmip.slides.levels`: max(1, floor(size / 2^L)) texels, each the exact area mean of the level-0 pixels it
covers, odd sizes included), so a slide of an array equals `ctx.pyramid(array, method="box")` at every size.
A file's stored levels are used as they are; a level between two stored ones is the area mean of the finer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..allocate import ClassBudgets, TokenLayout, allocate
from ..errors import ClosedError
from ..limits import MAX_LEVEL, MAX_PATCH, finite_float, non_negative_int
from ..maps import as_lod_map, as_relevance
from ..maps import lod_map as make_lod_map
from ..pyramid import Pyramid
from ..reference import bilinear, encode, lod_from_gradients
from ..relevance import gaze, saliency
from ..sampling import Filter, as_float_array, parse_enum
from .levels import area_mean_of
from .reader import DEFAULT_CACHE_BYTES, ArrayReader, Level, TiffReader
from .tiles import DEFAULT_GL_CACHE_BYTES, PyramidCache, TileGrid, TileSpec

if TYPE_CHECKING:
    from ..gl.context import GLContext

__all__ = ["Slide", "otsu_threshold", "tissue_mask"]

DEFAULT_TILE = 2048
MAX_RELEVANCE_CELLS = 1 << 23  # a relevance-pyramid base grid of at most 8M cells (128 MiB on the GPU)
AUTO_RELEVANCE_CELLS = 1 << 21
TOKEN_POINTS = 1 << 20  # token samples gathered per pass (bounds the host arrays of `tokens`)
_SLIDE_FILTERS = (Filter.NEAREST, Filter.BILINEAR, Filter.TRILINEAR, Filter.ANISOTROPIC)


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _levels(lod: Any, n: int) -> np.ndarray:
    """`lod` (a number, or N numbers: numpy, torch, a list) as (n,) float64 levels, checked."""
    if hasattr(lod, "detach"):
        if lod.device.type == "meta":
            raise TypeError("lod is a meta tensor, which holds no data; pass a CPU or CUDA tensor")
        lod = lod.detach().cpu().numpy()
    array = np.asarray(lod)
    if isinstance(lod, (str, bytes)) or array.dtype.kind not in "fiu":
        raise TypeError(f"lod must be a number or one number per point, got {lod!r} ({type(lod).__name__})")
    array = array.astype(np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise ValueError(f"lod must be a scalar or have one value per point ({n}), got shape {array.shape}")
    if not np.isfinite(array).all() or (np.abs(array) > MAX_LEVEL).any():
        raise ValueError(f"lod must be finite levels within ±{MAX_LEVEL:g}, got "
                         f"{array[~np.isfinite(array) | (np.abs(array) > MAX_LEVEL)][0]}")
    return array


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values` (any shape, finite), from scikit-image (`skimage.filters.threshold_otsu`):
    the centre of the last histogram bin of the lower class, the cut that maximises the between-class variance;
    values above it are the upper class. A constant input returns its value.

    Convention: integer values get one bin per integer (scikit-image's), so `values > threshold` is exactly the
    upper class; float values get `bins` bins over their range, and the centre sits half a bin below the bin's
    upper edge, so values in the top half of the last lower bin land above it (`tissue_mask` bins first)."""
    from skimage.filters import threshold_otsu  # imported here: it loads scipy (~0.4 s), which only this needs

    return float(threshold_otsu(np.asarray(values).ravel(), nbins=bins))


def tissue_mask(pixels: np.ndarray, bins: int = 256) -> np.ndarray:
    """Tissue as CLAM and TRIDENT find it: Otsu on the HSV saturation of an RGB(A) picture (grey: on
    darkness, 1 - value), float32 (h, w) 1 where tissue, 0 where background.

    Convention: `pixels` (h, w, C) uint8/uint16/float32; unorm values normalised to [0, 1] first. The feature
    is binned into `bins` equal bins over its range (bin indices, as CLAM's 8-bit saturation) and Otsu's cut of
    those integers (`otsu_threshold`) splits whole bins. Pixels that are not finite (a float slide's NaN
    no-data) are background and take no part in the threshold."""
    values = pixels.astype(np.float32)
    if pixels.dtype != np.float32:
        values /= float(np.iinfo(pixels.dtype).max)
    if values.shape[2] >= 3:
        rgb = values[..., :3]
        top = rgb.max(axis=2)
        feature = (top - rgb.min(axis=2)) / np.maximum(top, 1e-6)
    else:
        feature = 1.0 - values[..., 0]
    finite = np.isfinite(feature)
    if not finite.any():
        return np.zeros(feature.shape, np.float32)
    feature = np.where(finite, feature, 0.0).astype(np.float64)
    lo, hi = float(feature[finite].min()), float(feature[finite].max())
    if hi <= lo:
        return np.zeros(feature.shape, np.float32)
    binned = np.minimum(((feature - lo) * (bins / (hi - lo))).astype(np.int64), bins - 1).clip(0)
    return (finite & (binned > otsu_threshold(binned[finite]))).astype(np.float32)


class Slide:
    """A slide opened for GPU sampling; made by `Context.slide(source)` or `glmip.Slide(ctx, source)`.

    `source`: a path to a pyramidal tiled TIFF / OME-TIFF / SVS (read through tiffslide; its stored levels are
    the slide's levels) or an image of any size (numpy HxWxC, torch, PIL), given levels every 2 mips. `tile`:
    GPU tile interior in pixels (a multiple of 64; with its halo at most the texture limit). `cache_bytes`
    bounds decoded file tiles on the host, `gl_cache_bytes` the tile pyramids on the GPU.
    """

    def __init__(self, context: GLContext, source: Any, *, tile: int = DEFAULT_TILE,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, gl_cache_bytes: int = DEFAULT_GL_CACHE_BYTES) -> None:
        context.check_open()
        cache_bytes = non_negative_int(cache_bytes, "cache_bytes")
        gl_cache_bytes = non_negative_int(gl_cache_bytes, "gl_cache_bytes")
        tile = _positive_int(tile, "tile")
        limit = context.max_texture_size
        if tile % 64 or tile > limit:
            raise ValueError(f"tile must be a multiple of 64 within the texture limit {limit}, got {tile}")
        self._pyramids = PyramidCache(gl_cache_bytes)
        if isinstance(source, (str, Path)):
            reader: TiffReader | ArrayReader = TiffReader(source, cache_bytes)
        else:
            reader = ArrayReader(source, top_size=tile)
        top = reader.levels[-1]
        if top.width > limit or top.height > limit:
            reader.close()
            raise ValueError(f"{reader.name}'s coarsest stored level is {top.width}x{top.height}, over the texture "
                             f"limit {limit}: the pyramid stops too early. Rewrite it with all levels: vips "
                             f"tiffsave IN OUT.tif --tile --pyramid --compression deflate")
        self.context = context
        self.tile = tile
        self.reader = reader
        self._sizes = self._level_sizes()
        self._closed = False

    # -- geometry -----------------------------------------------------------------------
    @property
    def stored_levels(self) -> tuple[Level, ...]:
        """The stored levels (file levels, or an array's virtual ones), finest first."""
        return self.reader.levels

    @property
    def width(self) -> int:
        return self.reader.levels[0].width

    @property
    def height(self) -> int:
        return self.reader.levels[0].height

    @property
    def channels(self) -> int:
        return self.reader.channels

    @property
    def dtype(self) -> np.dtype:
        return self.reader.dtype

    @property
    def levels(self) -> int:
        """Mip levels of the slide as one pyramid: down to 1x1, as `Pyramid.levels`."""
        return len(self._sizes)

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of mip level `level`: for an array `Pyramid`'s max(1, floor(size / 2^level)); for a
        file its stored levels as stored and the levels between as floor(stored size / 2^k)."""
        return self._sizes[level]

    def _level_sizes(self) -> list[tuple[int, int]]:
        if isinstance(self.reader, ArrayReader):
            return self.reader.mip_sizes
        stored = self.reader.levels
        sizes = []
        for level in range(stored[-1].mip + max(stored[-1].width, stored[-1].height).bit_length()):
            source = [lv for lv in stored if lv.mip <= level][-1]
            shift = level - source.mip
            sizes.append((max(1, source.width >> shift), max(1, source.height >> shift)))
        return sizes

    def read(self, level: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Pixels of stored level `level` (an index into `stored_levels`) in `box` = (x0, y0, x1, y1) of that
        level's pixels (default all of it), (h, w, C) in the slide's dtype."""
        self._check_open()
        if not isinstance(level, (int, np.integer)) or isinstance(level, bool):
            raise TypeError(f"level must be an int, got {level!r}")
        if not 0 <= level < len(self.reader.levels):
            raise ValueError(f"stored level {level} does not exist; this slide has stored levels "
                             f"0..{len(self.reader.levels) - 1} "
                             f"({', '.join(f'{v.width}x{v.height}' for v in self.reader.levels)})")
        lv = self.reader.levels[level]
        box = (0, 0, lv.width, lv.height) if box is None else box
        if (isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)):
            raise TypeError(f"box must be (x0, y0, x1, y1), four ints in stored level {level}'s pixels, got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= lv.width and 0 <= y0 < y1 <= lv.height):
            raise ValueError(f"box {box} is not inside stored level {level} ({lv.width}x{lv.height})")
        return self.reader.read(int(level), int(x0), int(y0), int(x1 - x0), int(y1 - y0))

    # -- levels and tiles ---------------------------------------------------------------
    def _level_pixels(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [x0, x1) x [y0, y1) of mip level `level`, (h, w, C) in the slide's dtype: an array's exact level
        (`glmip.slides.levels`), a file's stored level, or the area mean of the finest stored level above it."""
        if isinstance(self.reader, ArrayReader):
            return self.reader.read_mip(level, x0, y0, x1 - x0, y1 - y0)
        stored = self.reader.levels
        index = max(k for k, lv in enumerate(stored) if lv.mip <= level)
        source = stored[index]
        if source.mip == level:
            return self.reader.read(index, x0, y0, x1 - x0, y1 - y0)
        values = area_mean_of(lambda x, y, xe, ye: self.reader.read(index, x, y, xe - x, ye - y),
                              (source.width, source.height), self._sizes[level], (x0, y0, x1, y1))
        return encode(values, self.dtype)

    def _grid(self, level: int) -> TileGrid:
        width, height = self._sizes[level]
        return TileGrid.make(level, width, height, self.tile, self.context.max_texture_size)

    def _build(self, spec: TileSpec) -> Pyramid:
        pixels = self._level_pixels(spec.level, spec.x0, spec.y0, spec.x1, spec.y1)
        return Pyramid.of(self.context, np.ascontiguousarray(pixels), method="hardware")  # only its level 0 is read

    def _read(self, level: np.ndarray, uv: np.ndarray, nearest: bool, progress: str | None) -> np.ndarray:
        """One tap per point: (N, C) float64, the bilinear (or `nearest`) value of mip `level` (N,) at `uv` (N, 2),
        read from the tile of that level whose interior holds the point; one dispatch per tile."""
        out = np.empty((len(uv), self.channels))
        groups = []
        for mip in np.unique(level):
            members = np.nonzero(level == mip)[0]
            width, height = self._sizes[int(mip)]
            x, y = uv[members, 0] * width, uv[members, 1] * height
            grid = self._grid(int(mip))
            where = grid.locate(x, y)
            order = np.argsort(where, kind="stable")
            for chunk in np.split(order, np.flatnonzero(np.diff(where[order])) + 1):
                groups.append((grid.spec(int(where[chunk[0]])), members[chunk], x[chunk], y[chunk]))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(groups), desc=progress, unit="tile", leave=False)
        try:
            for spec, members, x, y in groups:
                pyramid = self._pyramids.get(spec, self._build)
                local = np.stack([(x - spec.x0) / (spec.x1 - spec.x0), (y - spec.y0) / (spec.y1 - spec.y0)], axis=1)
                out[members] = (pyramid.sample(local, 0.0, filter="nearest") if nearest
                                else pyramid.sample(local, filter="bilinear"))
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
        return out

    def _trilinear(self, uv: np.ndarray, lod: np.ndarray, progress: str | None) -> np.ndarray:
        """GL's LINEAR_MIPMAP_LINEAR at `lod` (N,): lod <= 0 is level 0 bilinear, past the last level the last,
        else the two levels around lod, each tapped bilinearly in its own texels, blended; (N, C) float64."""
        lod = np.clip(lod, 0.0, self.levels - 1)
        lower = np.floor(lod).astype(np.int64)
        fraction = (lod - lower)[:, None]
        upper = np.nonzero(fraction[:, 0] > 0)[0]
        values = self._read(np.concatenate([lower, lower[upper] + 1]), np.concatenate([uv, uv[upper]]), False,
                            progress)
        out = values[:len(uv)]
        out[upper] = (1 - fraction[upper]) * out[upper] + fraction[upper] * values[len(uv):]
        return out

    def _footprint(self, uv: np.ndarray, grad: np.ndarray, anisotropy: float, lod_bias: float,
                   progress: str | None) -> np.ndarray:
        """The shader's footprint assembly (`glmip.reference.footprint_assembly`, shaders/footprint.glsl):
        N = min(ceil(P_max / P_min - 1e-3), anisotropy) trilinear taps along the major axis at
        log2(P_max / N) + lod_bias, averaged; (N, C) float64."""
        scale = np.array([self.width, self.height], np.float64)
        len_x = np.linalg.norm(grad[:, 0] * scale, axis=1)
        len_y = np.linalg.norm(grad[:, 1] * scale, axis=1)
        major = np.where((len_x >= len_y)[:, None], grad[:, 0], grad[:, 1])
        p_max, p_min = np.maximum(len_x, len_y), np.minimum(len_x, len_y)
        with np.errstate(divide="ignore", invalid="ignore"):
            taps = np.where(p_min > 0, np.minimum(np.ceil(p_max / p_min - 1e-3), anisotropy),
                            np.where(p_max > 0, anisotropy, 1.0))
        taps = np.maximum(taps, 1.0).astype(np.int64)
        lod = np.log2(np.maximum(p_max / taps, 1e-30)) + lod_bias
        point = np.repeat(np.arange(len(uv)), taps)
        first = np.cumsum(taps) - taps
        t = (np.arange(len(point)) - first[point] + 0.5) / taps[point] - 0.5
        values = self._trilinear(uv[point] + major[point] * t[:, None], lod[point], progress)
        return np.add.reduceat(values, first, axis=0) / taps[:, None]

    # -- sampling -----------------------------------------------------------------------
    def sample(self, uv: Any, lod: Any = None, *, filter: str = "trilinear", grad: Any = None,
               anisotropy: float = 16, lod_bias: float = 0.0, wrap: str = "clamp", progress: str | None = None
               ) -> np.ndarray:
        """N points as `Pyramid.sample` would give them from the slide as one pyramid: (N, C) float32.

        uv: (N, 2) over level 0; lod: scalar or (N,), or grad: (N, 2, 2) d(uv)/dx, d(uv)/dy. Filters:
        "nearest", "bilinear", "trilinear", "anisotropic" (the shader's footprint assembly, tap by tap;
        "anisotropic_hw" is vendor-defined and refused). wrap: "clamp".

        Every tap reads one level (bilinear or nearest) from the tile of that level that holds it; trilinear
        blends the two levels around lod on the host, so tiles of any size equal one untiled pyramid (within
        the texture unit's 8-bit sub-texel weights). With `grad`, trilinear takes GL's exact level
        (`reference.lod_from_gradients`), where a texture unit's textureGrad may approximate log2.
        """
        self._check_open()
        mode = parse_enum(Filter, filter, "filter")
        if mode not in _SLIDE_FILTERS:
            raise ValueError(f"a slide samples with {', '.join(repr(f.value) for f in _SLIDE_FILTERS)}; "
                             f"{mode.value!r} has a vendor-defined footprint no halo can bound")
        if wrap != "clamp":
            raise ValueError(f"a slide samples with wrap 'clamp' only, got {wrap!r}")
        lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
        max_aniso = float(self.context.gl.max_anisotropy)
        anisotropy = finite_float(anisotropy, "anisotropy", 1.0, max_aniso)
        points = as_float_array(uv, "uv", (2,))
        n = points.shape[0]
        gradients = None
        if grad is not None:
            if lod is not None:
                raise ValueError("pass either lod (explicit levels) or grad (uv gradients), not both")
            gradients = as_float_array(grad, "grad", (2, 2))
            if gradients.shape[0] != n:
                raise ValueError(f"grad must have one (2, 2) gradient per point ({n}), got {gradients.shape[0]}")
            levels = np.zeros(n)  # taken from the gradients below
        elif mode is Filter.BILINEAR:
            if lod is not None or lod_bias != 0.0:
                raise ValueError("filter 'bilinear' samples level 0 only; use 'trilinear' with lod or grad")
            levels = np.zeros(n)
        else:
            if mode is Filter.ANISOTROPIC:
                raise ValueError("filter 'anisotropic' needs grad, the (N, 2, 2) uv gradients that shape the footprint")
            levels = _levels(0.0 if lod is None else lod, n) + lod_bias
        if n == 0:
            return np.empty((0, self.channels), np.float32)
        points = points.astype(np.float32).astype(np.float64)  # the GPU's float32 positions, as `Pyramid.sample`
        if gradients is not None:
            gradients = gradients.astype(np.float32).astype(np.float64)
            if mode is Filter.ANISOTROPIC:
                values = self._footprint(points, gradients, float(anisotropy), lod_bias, progress)
            else:
                lods = lod_from_gradients(gradients, (self.width, self.height)) + lod_bias
                values = self._trilinear(points, lods, progress)
        elif mode is Filter.NEAREST:
            lods = levels.astype(np.float32).astype(np.float64)
            index = np.clip(np.where(lods > 0.5, np.ceil(lods + 0.5) - 1, 0), 0, self.levels - 1).astype(np.int64)
            values = self._read(index, points, True, progress)  # GL's NEAREST_MIPMAP_NEAREST level, nearest texel
        else:
            values = self._trilinear(points, levels.astype(np.float32).astype(np.float64), progress)
        return values.astype(np.float32)

    def tokens(self, layout: Any, patch: int | None = None, filter: str = "trilinear", lod_bias: float = 0.0,
               out: Any = None, progress: str | None = None) -> Any:
        """Every token of `layout` as `Pyramid.tokens` gives it from the slide as one pyramid: torch
        (N, C, patch, patch) float32. Each token is its patch x patch grid of samples (tokens.comp's
        positions), read through the slide's levels like `sample`, `TOKEN_POINTS` samples at a time."""
        import torch

        self._check_open()
        mode = parse_enum(Filter, filter, "filter")
        if mode not in (Filter.TRILINEAR, Filter.ANISOTROPIC):
            raise ValueError(f"tokens are sampled with 'trilinear' or 'anisotropic', got {mode.value!r}")
        names = ("cx", "cy", "size", "level", "patch", "image_size")
        if not all(hasattr(layout, name) for name in names):
            raise TypeError(f"layout must be a glmip.TokenLayout (made by Slide.allocate), got {type(layout).__name__}")
        made_for = tuple(layout.image_size) if isinstance(layout.image_size, (tuple, list)) else ()
        if made_for != (self.width, self.height):
            raise ValueError(f"the layout was made for an image of {layout.image_size!r} (width, height), but this "
                             f"slide is {self.width}x{self.height}; allocate with Slide.allocate (or "
                             f"image_size=(width, height) of the slide)")
        patch = _positive_int(layout.patch if patch is None else patch, "patch")
        if patch > MAX_PATCH:
            raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} samples a side; raise "
                             f"glmip.limits.MAX_PATCH to go past it")
        lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
        arrays = [np.asarray(getattr(layout, name)) for name in names[:4]]
        if any(a.dtype.kind not in "fiu" for a in arrays):
            raise TypeError("the layout's cx, cy, size and level must hold numbers, got dtypes "
                            f"{', '.join(str(a.dtype) for a in arrays)}")
        cx, cy, size, level = (a.astype(np.float64) for a in arrays)
        n = cx.shape[0] if cx.ndim == 1 else -1
        if any(a.shape != (n,) for a in (cx, cy, size, level)):
            raise ValueError("the layout's cx, cy, size and level must be 1-D of one length, got shapes "
                             f"{', '.join(str(a.shape) for a in (cx, cy, size, level))}")
        if not (np.isfinite(cx).all() and np.isfinite(cy).all() and np.isfinite(size).all()
                and np.isfinite(level).all()) or (size <= 0).any() or (np.abs(level) > MAX_LEVEL).any():
            raise ValueError(f"token centres, sizes and levels must be finite, sizes positive and levels within "
                             f"±{MAX_LEVEL:g}")
        shape = (n, self.channels, patch, patch)
        if out is not None:
            if not isinstance(out, torch.Tensor) or out.device.type == "meta":
                raise TypeError(f"out must be a CPU or CUDA torch tensor, got "
                                f"{getattr(out, 'device', type(out).__name__)}")
            if tuple(out.shape) != shape or out.dtype != torch.float32:
                raise ValueError(f"out must be a float32 tensor of shape {shape}, got {tuple(out.shape)} {out.dtype}")
        result = torch.empty(shape, dtype=torch.float32) if out is None else out
        if n == 0:
            return result

        offsets = (np.arange(patch) + 0.5) / patch - 0.5
        grid_x, grid_y = (g.ravel() for g in np.meshgrid(offsets, offsets))  # row-major: y down the rows
        chunk = max(1, TOKEN_POINTS // (patch * patch))
        for first in range(0, n, chunk):
            rows = slice(first, min(n, first + chunk))
            side = size[rows, None]
            uv = np.stack([((cx[rows, None] + grid_x * side) / self.width).ravel(),
                           ((cy[rows, None] + grid_y * side) / self.height).ravel()], axis=1)
            uv = uv.astype(np.float32).astype(np.float64)
            if mode is Filter.ANISOTROPIC:  # tokens.comp: the grid spacing as the footprint (one tap when square)
                step = np.repeat(size[rows] / patch, patch * patch)
                grad = np.zeros((len(uv), 2, 2))
                grad[:, 0, 0], grad[:, 1, 1] = step / self.width, step / self.height
                values = self._footprint(uv, grad, float(self.context.gl.max_anisotropy), lod_bias, progress)
            else:
                values = self._trilinear(uv, np.repeat(level[rows] + lod_bias, patch * patch), progress)
            block = values.astype(np.float32).reshape(-1, patch, patch, self.channels).transpose(0, 3, 1, 2)
            result[first:first + block.shape[0]] = torch.from_numpy(np.ascontiguousarray(block)).to(result.device)
        return result

    def render(self, lod_map: Any = None, *, relevance: Any = None, size: tuple[int, int] | None = None,
               region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0), max_level: float | None = None,
               gamma: float = 1.0, lod_bias: float = 0.0, return_lod: bool = False,
               progress: str | None = None) -> Any:
        """The slide composited at per-pixel levels, as `Pyramid.render` (trilinear, seamless across tiles).

        `lod_map` (h, w) over the whole slide, or `relevance` turned into one by `glmip.lod_map`; with neither,
        every pixel takes the level that matches the output's scale (log2 of region pixels per output pixel).
        `size` = output (width, height), default the region's level-0 size (refused past 8192 a side);
        `region` = (u0, v0, u1, v1) in uv. Returns HxWxC in the slide's dtype (and the level used, HxW).
        """
        self._check_open()
        try:
            if isinstance(region, (str, bytes)):
                raise TypeError
            region = tuple(float(v) for v in region)
        except (TypeError, ValueError):
            raise TypeError(f"region must be four numbers (u0, v0, u1, v1), got {region!r}") from None
        lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
        if len(region) != 4 or not all(np.isfinite(region)) or not (region[0] < region[2] and region[1] < region[3]):
            raise ValueError(f"region must be (u0, v0, u1, v1) with u0 < u1 and v0 < v1, got {region!r}")
        span = ((region[2] - region[0]) * self.width, (region[3] - region[1]) * self.height)
        width, height = size or (max(1, round(span[0])), max(1, round(span[1])))
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 < v <= 8192
                   for v in (width, height)):
            raise ValueError(f"size must be two positive ints up to 8192 (width, height), got {(width, height)!r}; "
                             f"pass a smaller size or region")
        if lod_map is not None and relevance is not None:
            raise ValueError("pass at most one of lod_map or relevance")
        if relevance is not None:
            top = min(5, self.levels - 1) if max_level is None else max_level
            lod_map = make_lod_map(relevance, max_level=top, gamma=gamma)
        xs = region[0] + (region[2] - region[0]) * (np.arange(width) + 0.5) / width
        ys = region[1] + (region[3] - region[1]) * (np.arange(height) + 0.5) / height
        u, v = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        uv = np.stack([u.ravel(), v.ravel()], axis=1)
        if lod_map is None:
            matched = np.log2(max(span[0] / width, span[1] / height, 1e-30))
            lods = np.full(uv.shape[0], max(0.0, matched), np.float64)
        else:
            lods = bilinear(as_lod_map(lod_map)[..., None].astype(np.float64), uv.astype(np.float64))[:, 0]
        lods = lods + lod_bias
        colour = self.sample(uv, lods, progress=progress)
        image = encode(colour.astype(np.float64), self.dtype).reshape(height, width, self.channels)
        if not return_lod:
            return image
        return image, np.clip(lods, 0, self.levels - 1).astype(np.float32).reshape(height, width)

    # -- relevance and allocation -------------------------------------------------------
    def thumbnail(self) -> np.ndarray:
        """The coarsest stored level, (h, w, C) in the slide's dtype (a few MB at most)."""
        return self.read(len(self.reader.levels) - 1)

    def tissue(self) -> np.ndarray:
        """A tissue mask as the pathology tools make it: Otsu's threshold on the saturation of the coarsest
        stored level (RGB; grey slides: on darkness), float32 (h, w) of 0/1 at that level's resolution."""
        return tissue_mask(self.thumbnail())

    def saliency(self) -> np.ndarray:
        """`glmip.saliency` of the coarsest stored level, float32 (h, w) in [0, 1]."""
        self._check_open()
        with Pyramid.of(self.context, np.ascontiguousarray(self.thumbnail()), method="box") as pyramid:
            return saliency(pyramid, (pyramid.width, pyramid.height))

    def gaze(self, point: tuple[float, float], radius: float = 0.12) -> np.ndarray:
        """`glmip.gaze` at the coarsest stored level's resolution."""
        top = self.reader.levels[-1]
        return gaze((top.width, top.height), point, radius)

    def allocate(self, relevance: Any, budget: int = 1024, patch: int = 16, min_level: int | None = None,
                 max_level: int | None = None, classes: ClassBudgets | None = None) -> TokenLayout:
        """`glmip.allocate` over the whole slide: `relevance` at any resolution (tissue mask, saliency, gaze, a
        given map), at most `budget` tokens, relevance pyramid built on the GPU.

        `min_level` (finest token level) defaults to the finest whose relevance grid has at most 2M cells
        (level 2 for 100k x 80k at patch 16); finer grids than 8M cells are refused. A budget beyond the
        number of `patch << min_level` cells covering the slide is refused too.
        """
        self._check_open()
        budget = _positive_int(budget, "budget")
        patch = _positive_int(patch, "patch")

        def cells(level: int) -> int:
            side = patch << level
            return -(-self.width // side) * -(-self.height // side)

        if min_level is None:
            min_level = 0
            while cells(min_level) > AUTO_RELEVANCE_CELLS:
                min_level += 1
        elif (not isinstance(min_level, (int, np.integer)) or isinstance(min_level, bool)
              or not 0 <= min_level < self.levels):
            raise ValueError(f"min_level must be an int in 0..{self.levels - 1} (this slide's levels), got "
                             f"{min_level!r}")
        elif cells(min_level) > MAX_RELEVANCE_CELLS:
            finest = next(k for k in range(64) if cells(k) <= MAX_RELEVANCE_CELLS)
            raise ValueError(f"min_level {min_level} needs a relevance grid of {cells(min_level)} cells over this "
                             f"{self.width}x{self.height} slide; at most {MAX_RELEVANCE_CELLS} are built: use "
                             f"min_level >= {finest}")
        if budget > cells(min_level):
            raise ValueError(f"budget {budget} is more than this {self.width}x{self.height} slide allows at "
                             f"min_level {min_level}: {cells(min_level)} tokens of {patch << min_level} pixels "
                             f"cover it; use a budget up to {cells(min_level)} or a lower min_level")
        return allocate(as_relevance(relevance), budget, patch, int(min_level), max_level,
                        image_size=(self.width, self.height), classes=classes, context=self.context)

    # -- life cycle ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def gl_bytes(self) -> int:
        """Bytes of tile pyramids held on the GPU now."""
        return self._pyramids.nbytes

    @property
    def cache_bytes(self) -> int:
        """Bytes of decoded file tiles held on the host now."""
        return self.reader.cache.nbytes

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Slide is closed")
        self.context.check_open()

    def close(self) -> None:
        """Release every tile pyramid and the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if not self.context.closed:
            self._pyramids.close()
        self.reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        levels = ", ".join(f"{lv.width}x{lv.height}@{lv.mip}" for lv in self.reader.levels)
        return (f"glmip.Slide({self.reader.name}: {self.width}x{self.height}x{self.channels} {self.dtype}, "
                f"stored levels {levels}, tile {self.tile})")
