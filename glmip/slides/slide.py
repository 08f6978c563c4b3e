"""`Slide`: a whole-slide image (a pyramidal tiled TIFF, or an array of any size) sampled through GPU tiles
as if it were one glmip pyramid: samples, tokens and renders, relevance over the slide and a token budget.

Each request is split by the stored level it reads (the finest stored level at or below the request's level,
so a coarse token never needs level-0 pixels) and by the tile whose interior holds it; each tile is uploaded
once per call as an ordinary `Pyramid` (`box`) whose lower levels the GPU builds, and kept in a byte-bounded
LRU. Host memory is bounded by the file-tile cache, GL memory by the pyramid cache; neither grows with the
slide.

Convention: positions in level-0 pixels ((0, 0) the slide's top-left corner) or uv in [0, 1]^2 over level 0,
texel centres at (i + 0.5) / width, as `Pyramid`; level L covers 2^L x 2^L level-0 pixels a texel, the box
mean of them (equal to an untiled `box` pyramid where the image's size is a multiple of 2^L). Stored file
levels are used as they are.
"""

from __future__ import annotations

from collections.abc import Callable
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
from .reader import DEFAULT_CACHE_BYTES, ArrayReader, Level, TiffReader
from .tiles import DEFAULT_GL_CACHE_BYTES, PyramidCache, TileGrid, TileSpec

if TYPE_CHECKING:
    from ..gl.context import GLContext

__all__ = ["Slide", "otsu_threshold", "tissue_mask"]

DEFAULT_TILE = 2048
MAX_RELEVANCE_CELLS = 1 << 23  # a relevance-pyramid base grid of at most 8M cells (128 MiB on the GPU)
AUTO_RELEVANCE_CELLS = 1 << 21
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
    """Otsu's threshold of `values` (any shape, finite): the cut of a `bins`-bin histogram over their range
    that maximises the between-class variance. A constant input returns its value."""
    flat = np.asarray(values, np.float64).ravel()
    lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(flat, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)[:-1].astype(np.float64)
    total = float(counts.sum())
    mass = np.cumsum(counts * centres)[:-1]
    below = mass / np.maximum(weight, 1)
    above = (mass[-1] + counts[-1] * centres[-1] - mass) / np.maximum(total - weight, 1)
    between = weight * (total - weight) * (below - above) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def tissue_mask(pixels: np.ndarray) -> np.ndarray:
    """Tissue as CLAM and TRIDENT find it: Otsu on the HSV saturation of an RGB(A) picture (grey: on
    darkness, 1 - value), float32 (h, w) 1 where tissue, 0 where background.

    Convention: `pixels` (h, w, C) uint8/uint16/float32; unorm values normalised to [0, 1] first. Pixels
    that are not finite (a float slide's NaN no-data) are background and take no part in the threshold."""
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
    return (finite & (np.where(finite, feature, 0.0) > otsu_threshold(feature[finite]))).astype(np.float32)


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
        return max(self.width, self.height).bit_length()

    def _mips(self) -> np.ndarray:
        return np.array([lv.mip for lv in self.reader.levels], np.int64)

    def _gap(self, source: int) -> int:
        mips = self._mips()
        return int(mips[source + 1] - mips[source]) if source + 1 < len(mips) else self.levels

    def source_for(self, level: Any) -> np.ndarray:
        """The stored level that serves each (fractional) level: the finest one at or below floor(level)."""
        floor = np.floor(np.asarray(level, np.float64))
        return np.clip(np.searchsorted(self._mips(), floor, side="right") - 1, 0, None)

    def grid(self, source: int, reach: int) -> TileGrid:
        """The GPU tiles of stored level `source` for reads reaching `reach` sample spacings; the coarsest
        stored level is one tile (it fits the texture limit, checked on opening)."""
        lv = self.reader.levels[source]
        limit = self.context.max_texture_size
        tile = limit if source == len(self.reader.levels) - 1 else self.tile
        return TileGrid.make(source, lv.width, lv.height, tile, self._gap(source), reach, limit)

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

    # -- tiles --------------------------------------------------------------------------
    def _build(self, spec: TileSpec) -> Pyramid:
        pixels = self.reader.read(spec.source, spec.x0, spec.y0, spec.x1 - spec.x0, spec.y1 - spec.y0)
        return Pyramid(self.context, np.ascontiguousarray(pixels), method="box")

    def _per_tile(self, x: np.ndarray, y: np.ndarray, level: np.ndarray, reach: int,
                  work: Callable[[Pyramid, np.ndarray, TileSpec, int], None], progress: str | None) -> None:
        """Call `work(pyramid, indices, spec, mip)` once per tile for the items (level-0 positions `x`, `y`
        at `level`) that tile serves: their stored level, then the tile whose interior holds them."""
        sources = self.source_for(level)
        mips = self._mips()
        groups: list[tuple[int, int, np.ndarray]] = []
        for source in np.unique(sources):
            members = np.nonzero(sources == source)[0]
            grid = self.grid(int(source), reach)
            scale = float(2 ** mips[source])
            where = grid.locate(x[members] / scale, y[members] / scale)
            order = np.argsort(where, kind="stable")
            cuts = np.flatnonzero(np.diff(where[order])) + 1
            for chunk in np.split(order, cuts):
                groups.append((int(source), int(where[chunk[0]]), members[chunk]))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(groups), desc=progress, unit="tile", leave=False)
        try:
            for source, index, members in groups:
                spec = self.grid(source, reach).spec(index)
                work(self._pyramids.get(spec, self._build), members, spec, int(mips[source]))
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()

    # -- sampling -----------------------------------------------------------------------
    def sample(self, uv: Any, lod: Any = None, *, filter: str = "trilinear", grad: Any = None,
               anisotropy: float = 16, lod_bias: float = 0.0, wrap: str = "clamp", progress: str | None = None
               ) -> np.ndarray:
        """N points as `Pyramid.sample` would give them from the slide as one pyramid: (N, C) float32.

        uv: (N, 2) over level 0; lod: scalar or (N,), or grad: (N, 2, 2) d(uv)/dx, d(uv)/dy. Filters:
        "nearest", "bilinear", "trilinear", "anisotropic" (the shader's footprint assembly: its reach is
        bounded, so the halo covers it; "anisotropic_hw" is vendor-defined and refused). wrap: "clamp".
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
        size = np.array([self.width, self.height], np.float64)
        gradients = None
        if grad is not None:
            if lod is not None:
                raise ValueError("pass either lod (explicit levels) or grad (uv gradients), not both")
            gradients = as_float_array(grad, "grad", (2, 2))
            if gradients.shape[0] != n:
                raise ValueError(f"grad must have one (2, 2) gradient per point ({n}), got {gradients.shape[0]}")
            levels = self._grad_level(gradients, mode, float(anisotropy)) + lod_bias
        elif mode is Filter.BILINEAR:
            if lod is not None or lod_bias != 0.0:
                raise ValueError("filter 'bilinear' samples level 0 only; use 'trilinear' with lod or grad")
            levels = np.zeros(n)
        else:
            if mode is Filter.ANISOTROPIC:
                raise ValueError("filter 'anisotropic' needs grad, the (N, 2, 2) uv gradients that shape the footprint")
            levels = _levels(0.0 if lod is None else lod, n) + lod_bias
        result = np.empty((n, self.channels), np.float32)
        reach = int(np.ceil(anisotropy)) + 2 if mode is Filter.ANISOTROPIC else 2
        x, y = points[:, 0] * size[0], points[:, 1] * size[1]

        def work(pyramid: Pyramid, members: np.ndarray, spec: TileSpec, mip: int) -> None:
            scale = 2.0 ** mip
            local = np.stack([(x[members] / scale - spec.x0) / pyramid.width,
                              (y[members] / scale - spec.y0) / pyramid.height], axis=1)
            if gradients is not None:
                factor = np.array([self.width / scale / pyramid.width, self.height / scale / pyramid.height])
                local_grad = gradients[members] * factor[None, None, :]
                result[members] = pyramid.sample(local, grad=local_grad, filter=mode.value, anisotropy=anisotropy,
                                                 lod_bias=lod_bias)
            elif mode is Filter.BILINEAR:
                result[members] = pyramid.sample(local, filter="bilinear")
            else:
                result[members] = pyramid.sample(local, np.asarray(levels[members] - mip, np.float32),
                                                 filter=mode.value)

        if n:
            self._per_tile(x, y, np.asarray(levels), reach, work, progress)
        return result

    def _grad_level(self, grad: np.ndarray, mode: Filter, anisotropy: float) -> np.ndarray:
        """The level the shader reads for each gradient (trilinear: GL's; anisotropic: log2(P_max / N))."""
        size = (self.width, self.height)
        if mode is not Filter.ANISOTROPIC:
            return lod_from_gradients(grad.astype(np.float64), size)
        scale = np.array(size, np.float64)
        len_x = np.linalg.norm(grad[:, 0] * scale, axis=1)
        len_y = np.linalg.norm(grad[:, 1] * scale, axis=1)
        p_max, p_min = np.maximum(len_x, len_y), np.minimum(len_x, len_y)
        with np.errstate(divide="ignore", invalid="ignore"):  # footprint.glsl's tap count, to the letter
            taps = np.where(p_min > 0, np.minimum(np.ceil(p_max / p_min - 1e-3), anisotropy),
                            np.where(p_max > 0, anisotropy, 1.0))
        return np.log2(np.maximum(p_max / np.maximum(taps, 1.0), 1e-30))

    def tokens(self, layout: Any, patch: int | None = None, filter: str = "trilinear", lod_bias: float = 0.0,
               out: Any = None, progress: str | None = None) -> Any:
        """Every token of `layout` as `Pyramid.tokens` gives it from the slide as one pyramid: torch
        (N, C, patch, patch) float32, one dispatch per tile, each tile uploaded once per call."""
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

        def work(pyramid: Pyramid, members: np.ndarray, spec: TileSpec, mip: int) -> None:
            scale = 2.0 ** mip
            local = TokenLayout(cx=cx[members] / scale - spec.x0, cy=cy[members] / scale - spec.y0,
                                size=size[members] / scale, level=level[members] + lod_bias - mip, patch=patch,
                                image_size=(pyramid.width, pyramid.height))
            values = pyramid.tokens(local, patch, mode.value)
            result[torch.from_numpy(members)] = values.to(result.device)

        reach = patch + (int(np.ceil(self.context.gl.max_anisotropy)) if mode is Filter.ANISOTROPIC else 0)
        self._per_tile(cx, cy, level + lod_bias, reach, work, progress)
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
        with Pyramid(self.context, np.ascontiguousarray(self.thumbnail()), method="box") as pyramid:
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
