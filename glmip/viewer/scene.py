"""The engine side of the viewer: glmip computes each display mode's pictures on its EGL context.

Every picture is cached under a key of exactly the controls it depends on, so a change
recomputes only what it invalidates (a pan recomputes nothing; a gaze move recomputes the
relevance and what depends on it; a mode change reuses what the mode computed last time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import glmip
from glmip import pictures, reference

from .state import REFINE_PASSES, Mode, ViewState
from .tilt import comparison_split, plane_inside, plane_view

__all__ = ["Picture", "Frame", "display_rgb", "render_scale", "render_region", "Scene"]

RELEVANCE_SIDE = 256  # relevance and LOD maps are this many texels on the long side; render() samples them bilinearly
HEAT_ALPHA = 0.55
TOKEN_DIM = 0.35
BACKGROUND = 40
COMPARE_FILTERS = ("anisotropic", "anisotropic_hw", "trilinear", "nearest")
RELEVANCE_SOURCES = ("gaze", "saliency", "query")


@dataclass
class Picture:
    """Pixels the presenter uploads once per `key`: (h, w, 3 or 4) uint8, row 0 the top."""

    key: tuple
    pixels: np.ndarray
    nearest: bool = False  # magnify texels as squares (single-level view)
    one_to_one: bool = False  # drawn texel for pixel (tilted plane): no mipmaps, nearest
    uv: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # the part of the image it shows


@dataclass
class Frame:
    """What one frame shows in the image area, and the figures the panel reports."""

    base: Picture | None = None  # over the image rectangle
    overlay: Picture | None = None  # RGBA over the base
    tilt: tuple[Picture, Picture] | None = None  # left (trilinear) and right (compared filter) halves, 1:1
    boxes: np.ndarray | None = None  # (N, 4) token boxes in level-0 pixels
    box_levels: np.ndarray | None = None
    levels_in_view: tuple[float, float] | None = None
    tokens_used: int | None = None
    engine_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def display_rgb(pixels: np.ndarray, linear: bool = False) -> np.ndarray:
    """Any glmip level or sample block (h, w, C) as displayable (h, w, 3) uint8; `linear` values are
    encoded to sRGB first (what sRGB pyramids sample to)."""
    if linear:
        pixels = reference.linear_to_srgb(np.clip(pixels.astype(np.float32), 0.0, 1.0)).astype(np.float32)
    shown = pictures.to_display_uint8(pixels if pixels.dtype != np.float64 else pixels.astype(np.float32))
    channels = shown.shape[2]
    if channels < 3:
        shown = np.repeat(shown[..., :1], 3, axis=2)
    return np.ascontiguousarray(shown[..., :3])


def render_scale(display_scale: float) -> float:
    """The scale the foveated picture is rendered at: the display's (screen pixels per image pixel)
    rounded up to a half octave, at most 1, so a 2048^2 image fitted to a window renders ~800^2
    pixels, not 4M, and small zoom steps reuse the picture."""
    if display_scale >= 1:
        return 1.0
    return min(1.0, 2.0 ** (math.ceil(2 * math.log2(display_scale)) / 2))


REGION_TILE = 256  # render-region edges snap to this many output pixels (small pans reuse the picture)
REGION_MARGIN = 128  # output pixels rendered beyond the visible edge
REGION_MAX_SHARE = 0.6  # above this share of the image, render all of it


def render_region(visible: tuple[float, float, float, float] | None, full: tuple[int, int]
                  ) -> tuple[int, int, int, int]:
    """The output pixels (x0, y0, x1, y1) of a `full`-sized render worth computing: the visible uv
    rectangle plus a margin, snapped outward to a tile grid; the whole image when that is most of it."""
    width, height = full
    if visible is None:
        return 0, 0, width, height
    u0, v0, u1, v1 = visible

    def span(a: float, b: float, n: int) -> tuple[int, int]:
        lo = max(0, math.floor((a * n - REGION_MARGIN) / REGION_TILE) * REGION_TILE)
        hi = min(n, math.ceil((b * n + REGION_MARGIN) / REGION_TILE) * REGION_TILE)
        return lo, max(hi, lo + 1)

    (x0, x1), (y0, y1) = span(u0, u1, width), span(v0, v1, height)
    if (x1 - x0) * (y1 - y0) > REGION_MAX_SHARE * width * height:
        return 0, 0, width, height
    return x0, y0, x1, y1


class Scene:
    """glmip's context, the image's pyramid (rebuilt when the method changes) and the cached pictures."""

    def __init__(self, context: glmip.Context, image: Any, method: str = "hardware", srgb: bool = False,
                 clip_model: str | None = None) -> None:
        self.context = context
        self.image = image
        self.srgb = srgb
        self.clip_model = clip_model
        self._scorer: glmip.ClipScorer | None = None
        self._pyramid: glmip.Pyramid | None = None
        self._method = ""
        self._cache: dict[str, tuple[tuple, Any]] = {}
        self.max_anisotropy = int(context.gl.max_anisotropy)
        self.pyramid_for(method)

    # -- the pyramid ----------------------------------------------------------------------
    def pyramid_for(self, method: str) -> glmip.Pyramid:
        if self._pyramid is None or method != self._method:
            old, self._pyramid = self._pyramid, None
            if old is not None:
                old.close()
            self._pyramid = self.context.pyramid(self.image, method=method, srgb=self.srgb)
            self._method = method
            self._cache.clear()
        return self._pyramid

    @property
    def pyramid(self) -> glmip.Pyramid:
        assert self._pyramid is not None
        return self._pyramid

    @property
    def image_size(self) -> tuple[int, int]:
        return self.pyramid.width, self.pyramid.height

    @property
    def levels(self) -> int:
        return self.pyramid.levels

    @property
    def nbytes(self) -> int:
        """GPU bytes of the pyramid."""
        return self.pyramid.nbytes

    def close(self) -> None:
        self._cache.clear()
        if self._pyramid is not None:
            self._pyramid.close()
            self._pyramid = None

    def _memo(self, name: str, key: tuple, make: Callable[[], Any]) -> Any:
        """The last value computed for `name`, recomputed only when `key` changes."""
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = make()
        self._cache[name] = (key, value)
        return value

    # -- relevance and levels -------------------------------------------------------------
    @property
    def query_available(self) -> tuple[bool, str]:
        """Whether the query box works here, and why not."""
        if not self.clip_model:
            return False, "no model configured: start with --clip-model PATH"
        return True, ""

    def relevance_size(self) -> tuple[int, int]:
        w, h = self.image_size
        scale = min(1.0, RELEVANCE_SIDE / max(w, h))
        return max(1, round(w * scale)), max(1, round(h * scale))

    def relevance_key(self, state: ViewState) -> tuple:
        source = self.relevance_source(state)
        if source == "gaze":
            return ("gaze", state.gaze, state.gaze_radius)
        if source == "saliency":
            return ("saliency", self._method)
        return ("query", state.query)

    @staticmethod
    def relevance_source(state: ViewState) -> str:
        return state.relevance_source if state.relevance_source in RELEVANCE_SOURCES else "gaze"

    def relevance(self, state: ViewState) -> np.ndarray:
        """(h, w) float32 in [0, 1] at `relevance_size()`."""
        return self._memo("relevance", self.relevance_key(state), lambda: self._make_relevance(state))

    def _make_relevance(self, state: ViewState) -> np.ndarray:
        size = self.relevance_size()
        source = self.relevance_source(state)
        if source == "saliency":
            return glmip.saliency(self.pyramid, size)
        if source == "query":
            ok, why = self.query_available
            if not ok:
                raise ValueError(f"query relevance unavailable: {why}")
            if not state.query.strip():
                raise ValueError("type a query")
            if self._scorer is None:  # the model loads once, from its local directory
                self._scorer = glmip.ClipScorer.load(self.clip_model)
            return glmip.query_relevance(self.pyramid, state.query, self._scorer, size=size)
        return glmip.gaze(size, state.gaze, radius=state.gaze_radius)

    def lods(self, state: ViewState) -> np.ndarray:
        """The LOD map (relevance resolution) render() samples, lod bias applied, clamped to the levels."""
        key = (self.relevance_key(state), state.gamma, state.lod_bias)

        def make() -> np.ndarray:
            lods = glmip.lod_map(self.relevance(state), max_level=self.pyramid.default_max_level, gamma=state.gamma)
            return np.clip(lods + state.lod_bias, 0.0, self.pyramid.levels - 1)

        return self._memo("lods", key, make)

    def level0(self) -> Picture:
        return self._memo("level0", (self._method,),
                          lambda: Picture(("level0", self._method, id(self.pyramid)),
                                          display_rgb(self.pyramid.level(0))))

    # -- frames ---------------------------------------------------------------------------
    def frame(self, state: ViewState) -> Frame:
        """Compute (or take from the cache) everything the current state shows."""
        start = time.perf_counter()
        self.pyramid_for(state.method)
        frame = Frame()
        try:
            if state.tilt > 0:
                frame.tilt = self.tilt_pictures(state)
                frame.levels_in_view = self.tilt_levels(state)
            else:
                self._fill_mode(state, frame)
        except ValueError as error:  # e.g. a query without a model: shown, not fatal
            frame.notes.append(str(error))
            frame.base = self.level0()
        frame.engine_ms = (time.perf_counter() - start) * 1e3
        return frame

    def _fill_mode(self, state: ViewState, frame: Frame) -> None:
        mode = state.mode
        if mode is Mode.ORIGINAL:
            frame.base = self.level0()
            frame.levels_in_view = (0.0, 0.0)
        elif mode is Mode.FOVEATED:
            frame.base = self.foveated(state)
            frame.levels_in_view = self.levels_in_view(state)
        elif mode is Mode.LEVELS:
            key = ("levels", self.relevance_key(state), state.gamma, state.lod_bias, self._method)
            frame.base = self._memo("levels", key, lambda: Picture(key, pictures.level_colours(self.lods(state))))
            frame.levels_in_view = self.levels_in_view(state)
        elif mode is Mode.HEAT:
            frame.base = self.level0()
            key = ("heat", self.relevance_key(state))

            def heat() -> Picture:
                colours = pictures.heat_colours(self.relevance(state))
                alpha = np.full(colours.shape[:2] + (1,), round(255 * HEAT_ALPHA), np.uint8)
                return Picture(key, np.ascontiguousarray(np.concatenate([colours, alpha], axis=2)))

            frame.overlay = self._memo("heat", key, heat)
        elif mode is Mode.TOKENS:
            frame.base = self.level0()
            frame.overlay = Picture(("dim",), np.array([[[0, 0, 0, round(255 * TOKEN_DIM)]]], np.uint8))
            layout = self.layout(state)
            frame.boxes, frame.box_levels = layout.boxes(), np.asarray(layout.level)
            frame.tokens_used = len(layout)
            frame.levels_in_view = self.token_levels_in_view(state, layout)
        elif mode is Mode.LEVEL:
            level = min(max(0, state.level), self.pyramid.levels - 1)
            key = ("level", self._method, level)
            frame.base = self._memo("level", key,
                                    lambda: Picture(key, display_rgb(self.pyramid.level(level)), nearest=True))
            frame.levels_in_view = (float(level), float(level))

    def foveated(self, state: ViewState) -> Picture:
        """The LOD-composited image, rendered no finer than the display shows it (see `render_scale`),
        and only around the visible part when zoomed in (see `render_region`)."""
        scale = render_scale(state.scale)
        w, h = self.image_size
        full = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
        region = render_region(state.visible_uv(), full)
        key = ("foveated", self._method, self.relevance_key(state), state.gamma, state.lod_bias, scale, region)

        def make() -> Picture:
            x0, y0, x1, y1 = region
            # Below full size, no level finer than the output's own pixel spacing: no aliasing.
            lods = np.maximum(self.lods(state), math.log2(1 / scale)).astype(np.float32)
            uv = (x0 / full[0], y0 / full[1], x1 / full[0], y1 / full[1])
            image = self.pyramid.render(lod_map=lods, size=(x1 - x0, y1 - y0), region=uv)
            return Picture(key, display_rgb(image), uv=uv)

        return self._memo("foveated", key, make)

    def layout(self, state: ViewState) -> glmip.TokenLayout:
        """The token view's layout: one allocation of `budget` (by relevance, or relevance x detail with
        `criterion` "detail"), or with `refine_passes` k the coarse-to-fine walk stopped after k passes —
        a uniform cover of at most budget / 16 tokens, each pass splitting the tokens of most
        relevance mass (mean relevance x area) up to a budget that grows geometrically to `budget`."""
        key = (self.relevance_key(state), state.budget, state.patch, state.criterion, state.refine_passes)
        return self._memo("layout", key, lambda: self._make_layout(state))

    def _make_layout(self, state: ViewState) -> glmip.TokenLayout:
        relevance = self.relevance(state)
        if state.refine_passes == 0:
            detail = glmip.detail_pyramid(self.pyramid, state.patch) if state.criterion == "detail" else None
            return glmip.allocate(relevance, budget=state.budget, patch=state.patch, image_size=self.image_size,
                                  detail=detail)
        width, height = self.image_size
        start = max(1, state.budget // 16)  # so that no pass can afford to split every token
        level = 0
        while -(-width // (state.patch << level)) * -(-height // (state.patch << level)) > start and \
                (state.patch << level) < max(width, height):
            level += 1
        layout = glmip.cover_layout(self.image_size, state.patch, level)
        budgets = np.geomspace(max(len(layout), 1), max(state.budget, len(layout)), REFINE_PASSES + 1)[1:]
        for budget in budgets[:state.refine_passes]:
            scores = relevance_mass(relevance, layout, self.image_size)
            layout = glmip.refine(layout, scores, max(int(round(budget)), len(layout))).layout
        return layout

    def levels_in_view(self, state: ViewState) -> tuple[float, float] | None:
        visible = state.visible_uv()
        if visible is None:
            return None
        lods = self.lods(state)
        h, w = lods.shape
        u0, v0, u1, v1 = visible
        rows = slice(int(v0 * h), max(int(v0 * h) + 1, math.ceil(v1 * h)))
        cols = slice(int(u0 * w), max(int(u0 * w) + 1, math.ceil(u1 * w)))
        region = lods[rows, cols]
        return float(region.min()), float(region.max())

    def token_levels_in_view(self, state: ViewState, layout: glmip.TokenLayout) -> tuple[float, float] | None:
        visible = state.visible_uv()
        if visible is None or len(layout) == 0:
            return None
        w, h = self.image_size
        u0, v0, u1, v1 = visible
        boxes = layout.boxes()
        seen = (boxes[:, 2] > u0 * w) & (boxes[:, 0] < u1 * w) & (boxes[:, 3] > v0 * h) & (boxes[:, 1] < v1 * h)
        levels = np.asarray(layout.level)[seen]
        return (float(levels.min()), float(levels.max())) if levels.size else None

    # -- the tilted plane -----------------------------------------------------------------
    def tilt_pictures(self, state: ViewState) -> tuple[Picture, Picture]:
        """The plane seen at `state.tilt`, first trilinear, then with `state.compare_filter` (side by side or
        one above the other, see `comparison_split`)."""
        half = self.tilt_view_size(state)
        anisotropy = min(max(1, state.anisotropy), self.max_anisotropy)
        view = (half, state.tilt, state.zoom, state.pan, state.lod_bias, self._method)
        left_key = ("tilt", "trilinear", 1, *view)
        right_key = ("tilt", state.compare_filter, anisotropy, *view)
        left = self._memo("tilt_left", left_key, lambda: self._plane(left_key, half, state, "trilinear", 1))
        right = self._memo("tilt_right", right_key,
                           lambda: self._plane(right_key, half, state, state.compare_filter, anisotropy))
        return left, right

    def tilt_view_size(self, state: ViewState) -> tuple[int, int]:
        w, h = self.image_size
        return comparison_split((int(state.area.width), int(state.area.height)), w / h, state.tilt)[0]

    def tilt_levels(self, state: ViewState) -> tuple[float, float] | None:
        """The trilinear LOD range over the tilted plane: log2 of the footprint's longer side in texels."""
        half = self.tilt_view_size(state)
        key = (half, state.tilt, state.zoom, state.pan, state.lod_bias, self._method)

        def make() -> tuple[float, float] | None:
            w, h = self.image_size
            _, grad, inside = plane_view(half, w / h, state.tilt, state.zoom, state.pan)
            if not inside.any():
                return None
            with np.errstate(divide="ignore"):
                lods = reference.lod_from_gradients(grad[inside], (w, h))
            lods = np.clip(np.maximum(lods, np.log2(1e-6)) + state.lod_bias, 0, self.pyramid.levels - 1)
            return float(lods.min()), float(lods.max())

        return self._memo("tilt_levels", key, make)

    def _plane(self, key: tuple, size: tuple[int, int], state: ViewState, filter: str, anisotropy: int) -> Picture:
        if filter not in COMPARE_FILTERS:
            raise ValueError(f"unknown sampling filter {filter!r}; choose one of {', '.join(COMPARE_FILTERS)}")
        matrix = glmip.tilt_homography(self.image_size, size, state.tilt, state.zoom, state.pan)
        inside = plane_inside(matrix, size, self.image_size)
        pixels = np.full((size[1], size[0], 3), BACKGROUND, np.uint8)
        if inside.any():
            values = self.pyramid.warp(matrix, size, filter=filter, anisotropy=anisotropy, lod_bias=state.lod_bias,
                                       border="zero")  # outside the plane is masked; zero skips its footprints
            values = values[0].permute(1, 2, 0).numpy()[inside]
            pixels[inside] = display_rgb(values[:, None, :], linear=self.pyramid.srgb)[:, 0]
        return Picture(key, pixels, one_to_one=True)


def relevance_mass(relevance: np.ndarray, layout: glmip.TokenLayout, image_size: tuple[int, int]) -> np.ndarray:
    """(N,) relevance summed over each token's box: `relevance` (h, w) spans the image, each token's
    level-0 box is scaled onto it (clipped to the map, at least one cell) and summed by an integral image."""
    h, w = relevance.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = np.cumsum(np.cumsum(relevance.astype(np.float64), 0), 1)
    boxes = layout.boxes().astype(np.float64)
    sx, sy = w / image_size[0], h / image_size[1]
    x0 = np.clip(np.floor(boxes[:, 0] * sx), 0, w - 1).astype(int)
    y0 = np.clip(np.floor(boxes[:, 1] * sy), 0, h - 1).astype(int)
    x1 = np.clip(np.ceil(boxes[:, 2] * sx), x0 + 1, w).astype(int)
    y1 = np.clip(np.ceil(boxes[:, 3] * sy), y0 + 1, h).astype(int)
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
