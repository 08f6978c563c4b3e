"""The viewer's engine side for a whole-slide image: a `glmip.Slide` shown at the level the zoom needs.

A slide does not fit one texture, so nothing of it is uploaded whole: each frame shows either a stored level
read as it is (the thumbnail, or the level that fits the fitted view) or the visible part of the slide
rendered by `Slide.render` at the display's level, its tiles streamed through the slide's two byte-bounded
LRU caches (decoded file tiles on the host, tile pyramids on the GPU). Host memory is those caches plus the
few pictures kept here (`REGION_PICTURES`, each about the view's size).

When a path is a slide (`open_slide`): a `.tif`/`.tiff`/`.svs`/`.btf` file that `glmip.Slide` opens and that
either stores more than one pyramid level or is larger than the texture limit on a side. Anything else is
an ordinary image (`Scene`).

Convention: the picture for a view at display scale s (screen pixels per level-0 pixel) is rendered at
`render_scale(s)` (s rounded up to a half octave, at most 1), i.e. at level lambda = -log2 of it; its region
is the visible uv box plus a margin, snapped to a 256-output-pixel grid (`slide_region`), so pans inside a
grid cell and zoom steps within a half octave reuse the picture. Pictures are keyed by (scale, region).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

import glmip
from glmip import pictures

from .scene import HEAT_ALPHA, REGION_MARGIN, REGION_TILE, Frame, Picture, display_rgb, render_scale
from .state import MAX_ZOOM, Mode, ViewState

__all__ = ["SLIDE_SUFFIXES", "SLIDE_MODES", "open_slide", "slide_region", "SlideScene"]

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".btf")
SLIDE_MODES = (Mode.ORIGINAL, Mode.HEAT)
HOST_CACHE_BYTES = 128 << 20  # decoded file tiles
GL_CACHE_BYTES = 192 << 20  # tile pyramids on the GPU
STORED_SIDE = 4096  # a stored level at most this long a side may be shown whole
REGION_PICTURES = 4  # rendered regions kept, so panning back across a grid line re-renders nothing
ZOOM_PAST_ONE = 64  # max zoom = long side / this: 1:1 and 4x beyond it in a 256-px area


def open_slide(context: glmip.Context, source: Any, *, cache_bytes: int | None = None,
               gl_cache_bytes: int | None = None) -> glmip.Slide | None:
    """`source` opened as a `glmip.Slide` if it is one for the viewer (see the module's rule), else None.
    A TIFF the slide reader refuses (strips, planar channels) is None too: the image path then reads it.
    The caches default to `HOST_CACHE_BYTES` and `GL_CACHE_BYTES` (read at call time)."""
    if not isinstance(source, (str, Path)) or Path(source).suffix.lower() not in SLIDE_SUFFIXES:
        return None
    try:
        slide = glmip.Slide(context, str(source), cache_bytes=HOST_CACHE_BYTES if cache_bytes is None else cache_bytes,
                            gl_cache_bytes=GL_CACHE_BYTES if gl_cache_bytes is None else gl_cache_bytes)
    except (ValueError, ImportError):  # not a slide the reader takes, or no `slide` extra: an ordinary image
        return None
    if len(slide.stored_levels) > 1 or max(slide.width, slide.height) > context.max_texture_size:
        return slide
    slide.close()
    return None


def slide_region(visible: tuple[float, float, float, float], full: tuple[int, int]) -> tuple[int, int, int, int]:
    """The output pixels (x0, y0, x1, y1) of a `full`-sized render of the slide worth computing: the visible uv
    box plus `REGION_MARGIN`, snapped outward to the `REGION_TILE` grid, clipped to the slide. Unlike the
    image viewer's `render_region` it never widens to the whole slide: that can be millions of pixels."""
    u0, v0, u1, v1 = visible

    def span(a: float, b: float, n: int) -> tuple[int, int]:
        lo = max(0, math.floor((a * n - REGION_MARGIN) / REGION_TILE) * REGION_TILE)
        hi = min(n, math.ceil((b * n + REGION_MARGIN) / REGION_TILE) * REGION_TILE)
        return lo, max(hi, lo + 1)

    (x0, x1), (y0, y1) = span(u0, u1, full[0]), span(v0, v1, full[1])
    return x0, y0, x1, y1


class SlideScene:
    """A slide for the viewer: the pictures a `ViewState` shows of it (original; heat = tissue mask).

    Owns `slide` (closes it). Same surface as `Scene` where the window uses it: `image_size`, `levels`,
    `nbytes`, `query_available`, `frame(state)`, `close()`.
    """

    def __init__(self, slide: glmip.Slide) -> None:
        self.slide = slide
        self.renders = 0  # Slide.render calls so far: lets tests see what a pan recomputed
        self._pictures: OrderedDict[tuple, Picture] = OrderedDict()
        self._heat: Picture | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.slide.width, self.slide.height

    @property
    def levels(self) -> int:
        return self.slide.levels

    @property
    def nbytes(self) -> int:
        """GPU bytes held for the slide now (its tile pyramids)."""
        return self.slide.gl_bytes

    @property
    def max_zoom(self) -> float:
        return max(MAX_ZOOM, max(self.image_size) / ZOOM_PAST_ONE)

    @property
    def query_available(self) -> tuple[bool, str]:
        return False, "a slide view shows the original and its tissue mask only"

    def close(self) -> None:
        self._pictures.clear()
        self._heat = None
        self.slide.close()

    # -- pictures -------------------------------------------------------------------------
    def stored_for(self, level: float) -> int | None:
        """The stored level shown whole at display level `level`: the coarsest one at least as fine, if it is
        the coarsest stored level or at most one level finer, and at most `STORED_SIDE` a side."""
        stored = self.slide.stored_levels
        fine_enough = [k for k, lv in enumerate(stored) if lv.mip <= level + 1e-9]
        k = fine_enough[-1]
        lv = stored[k]
        close = k == len(stored) - 1 or lv.mip >= level - 1
        return k if close and max(lv.width, lv.height) <= STORED_SIDE else None

    def view(self, state: ViewState) -> tuple[Picture | None, float]:
        """The picture for the current view and the level it shows (None when nothing is visible)."""
        scale = render_scale(state.scale)
        level = -math.log2(scale)
        visible = state.visible_uv()
        if visible is None:
            return None, level
        stored = self.stored_for(level)
        if stored is not None:
            key = ("stored", stored)
            shown = float(self.slide.stored_levels[stored].mip)
            return self._keep(key, lambda: Picture(key, display_rgb(self.slide.read(stored)))), shown
        w, h = self.image_size
        full = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
        x0, y0, x1, y1 = slide_region(visible, full)
        key = ("region", scale, (x0, y0, x1, y1))
        uv = (x0 / full[0], y0 / full[1], x1 / full[0], y1 / full[1])

        def make() -> Picture:
            self.renders += 1
            return Picture(key, display_rgb(self.slide.render(size=(x1 - x0, y1 - y0), region=uv)), uv=uv)

        return self._keep(key, make), level

    def _keep(self, key: tuple, make: Any) -> Picture:
        picture = self._pictures.get(key)
        if picture is None:
            picture = self._pictures[key] = make()
            while len(self._pictures) > REGION_PICTURES:
                self._pictures.popitem(last=False)
        self._pictures.move_to_end(key)
        return picture

    def heat(self) -> Picture:
        """The tissue mask (`Slide.tissue`, at the coarsest stored level) as a translucent heat overlay."""
        if self._heat is None:
            colours = pictures.heat_colours(self.slide.tissue())
            alpha = np.full(colours.shape[:2] + (1,), round(255 * HEAT_ALPHA), np.uint8)
            self._heat = Picture(("tissue",), np.ascontiguousarray(np.concatenate([colours, alpha], axis=2)))
        return self._heat

    def frame(self, state: ViewState) -> Frame:
        start = time.perf_counter()
        frame = Frame()
        if state.mode not in SLIDE_MODES or state.tilt > 0:
            frame.notes.append("a slide shows modes 1 original and 4 heat (tissue), untilted")
        frame.base, level = self.view(state)
        frame.levels_in_view = (level, level)
        if state.mode is Mode.HEAT:
            frame.overlay = self.heat()
        frame.engine_ms = (time.perf_counter() - start) * 1e3
        return frame
