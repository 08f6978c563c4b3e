"""The viewer's Dear ImGui widgets: the side panel, the overlays on the image and the help (`h`).

`build` runs between `imgui.new_frame()` and `imgui.render()`; it changes `ViewState` directly and
returns whether anything changed, so the loop knows to draw another frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from imgui_bundle import imgui

from glmip import pictures

from .present import tilt_origins
from .scene import COMPARE_FILTERS, RELEVANCE_SOURCES, Frame
from .state import PANEL_WIDTH, Mode, ViewState

__all__ = ["Figures", "colour", "build", "overlays", "panel", "legend", "help_window"]

MODE_LABELS = {Mode.ORIGINAL: "1 original", Mode.FOVEATED: "2 foveated", Mode.LEVELS: "3 level map",
               Mode.HEAT: "4 relevance heat", Mode.TOKENS: "5 token layout", Mode.LEVEL: "6 one mip level"}
METHODS = ("hardware", "box", "lanczos")
METHOD_LABELS = ("hardware", "box (area mean)", "lanczos (sharp)")
PATCHES = (8, 16, 32)
KEYS = (
    ("h", "this help"), ("1 .. 6", "original, foveated, level map, heat, tokens, one level"),
    ("[  ]", "previous / next mip level (level mode)"), ("mouse move", "gaze follows the pointer"),
    ("click, p", "pin / unpin the gaze"), ("drag", "pan"), ("scroll, = -", "zoom"), ("r", "reset zoom and pan"),
    ("t", "tilt the plane (trilinear | compared filter)"), ("a", "anisotropy 1, 2, 4, 8, 16"),
    (", .", "LOD bias -/+ 0.25"), ("m", "gaze marker on / off"), ("u", "side panel on / off"),
    ("d", "tokens: split by relevance / by relevance x detail"), ("f", "tokens: next coarse-to-fine pass (0 .. 3)"),
    ("s", "save a screenshot"), ("q, Esc", "quit"),
)


@dataclass
class Figures:
    """Live numbers the panel shows, measured by the loop."""

    frame_ms: float = 0.0  # the last frame drawn
    change_ms: float = 0.0  # the last frame that recomputed or re-uploaded anything
    engine_ms: float = 0.0  # glmip's share of that frame
    pyramid_bytes: int = 0
    levels: int = 0
    message: str = ""


def colour(rgb: tuple[float, ...] | np.ndarray, alpha: int = 255) -> int:
    r, g, b = (int(c) for c in rgb[:3])
    return imgui.IM_COL32(r, g, b, alpha)


def build(state: ViewState, frame: Frame, figures: Figures, query_state: tuple[bool, str]) -> bool:
    changed = overlays(state, frame)
    if state.show_panel:
        changed |= panel(state, frame, figures, query_state)
    if state.show_help:
        changed |= help_window(state)
    return changed


def overlays(state: ViewState, frame: Frame) -> bool:
    """Token boxes, the gaze marker and the tilt labels, drawn over the image area."""
    draw = imgui.get_background_draw_list()
    area = state.area
    draw.push_clip_rect((area.x0, area.y0), (area.x1, area.y1), False)
    if frame.tilt is not None:
        (x0, y0), (x1, y1) = tilt_origins(state)
        white = colour((255, 255, 255))
        if x1 > x0:
            draw.add_line((x1, area.y0), (x1, area.y1), white, 2.0)
        else:
            draw.add_line((area.x0, y1), (area.x1, y1), white, 2.0)
        draw.add_text((x0 + 8, y0 + 6), white, "trilinear")
        second = f"{state.compare_filter} {state.anisotropy}x" if "aniso" in state.compare_filter \
            else state.compare_filter
        draw.add_text((x1 + 8, y1 + 6), white, second)
    else:
        if frame.boxes is not None and frame.box_levels is not None:
            top = len(pictures.LEVEL_PALETTE) - 1
            w, h = state.image_size
            for (x0, y0, x1, y1), level in zip(frame.boxes, frame.box_levels, strict=True):
                u0, v0 = max(x0, 0) / w, max(y0, 0) / h  # edge tokens reach past the image; sampling clamps
                u1, v1 = min(x1, w) / w, min(y1, h) / h
                draw.add_rect(state.image_to_screen(u0, v0), state.image_to_screen(u1, v1),
                              colour(pictures.LEVEL_PALETTE[min(int(level), top)]), 0.0, 1.0)
        if state.show_marker and state.relevance_source == "gaze":
            x, y = state.image_to_screen(*state.gaze)
            ring = colour((255, 255, 255), 200)
            draw.add_circle((x, y), 9.0, ring, 24, 1.5)
            if state.gaze_pinned:
                draw.add_circle_filled((x, y), 3.0, ring)
    draw.pop_clip_rect()
    return False


def panel(state: ViewState, frame: Frame, figures: Figures, query_state: tuple[bool, str]) -> bool:
    width, height = state.frame_size
    imgui.set_next_window_pos((0, 0), imgui.Cond_.always)
    imgui.set_next_window_size((min(PANEL_WIDTH, width), height), imgui.Cond_.always)
    flags = imgui.WindowFlags_.no_move | imgui.WindowFlags_.no_resize | imgui.WindowFlags_.no_collapse
    imgui.begin("glmip view", None, flags)
    imgui.push_item_width(150)
    changed = False

    modes = list(Mode)
    hit, index = imgui.combo("mode", modes.index(state.mode), [MODE_LABELS[m] for m in modes])
    if hit:
        state.mode, changed = modes[index], True
    if state.mode is Mode.LEVEL:
        hit, value = imgui.slider_int("level K", state.level, 0, max(0, figures.levels - 1))
        if hit:
            state.level, changed = value, True
    hit, index = imgui.combo("pyramid", METHODS.index(state.method), METHOD_LABELS)
    if hit:
        state.method, changed = METHODS[index], True

    imgui.separator_text("level of detail")
    hit, value = imgui.slider_float("LOD bias", state.lod_bias, -2.0, 4.0, "%.2f")
    if hit:
        state.lod_bias, changed = value, True
    hit, value = imgui.slider_float("relevance curve", state.gamma, 0.25, 4.0, "gamma %.2f",
                                    imgui.SliderFlags_.logarithmic)
    if hit:
        state.gamma, changed = value, True
    hit, value = imgui.slider_float("gaze radius", state.gaze_radius, 0.02, 0.5, "%.2f")
    if hit:
        state.gaze_radius, changed = value, True
    hit, value = imgui.slider_int("token budget", state.budget, 16, 1024)
    if hit:
        state.budget, changed = value, True
    hit, index = imgui.combo("patch size", PATCHES.index(state.patch) if state.patch in PATCHES else 1,
                             [f"{p} x {p}" for p in PATCHES])
    if hit:
        state.patch, changed = PATCHES[index], True

    imgui.separator_text("relevance")
    available, why = query_state
    sources = list(RELEVANCE_SOURCES)
    hit, index = imgui.combo("source", sources.index(state.relevance_source), sources)
    if hit and (sources[index] != "query" or available):
        state.relevance_source, changed = sources[index], True
    imgui.begin_disabled(not available)
    hit, text = imgui.input_text("query", state.query, imgui.InputTextFlags_.enter_returns_true)
    imgui.end_disabled()
    if hit and available:
        state.query, state.relevance_source, changed = text, "query", True
    if not available:
        imgui.text_wrapped(f"query disabled: {why}")

    imgui.separator_text("tilted plane")
    hit, value = imgui.slider_float("tilt", state.tilt, 0.0, 85.0, "%.0f deg")
    if hit:
        state.tilt, changed = value, True
    hit, index = imgui.combo("filter", COMPARE_FILTERS.index(state.compare_filter), COMPARE_FILTERS)
    if hit:
        state.compare_filter, changed = COMPARE_FILTERS[index], True
    hit, value = imgui.slider_int("anisotropy", state.anisotropy, 1, 16, "%dx")
    if hit:
        state.anisotropy, changed = value, True
    imgui.pop_item_width()

    imgui.separator_text("figures")
    imgui.text(f"frame      {figures.frame_ms:7.1f} ms")
    imgui.text(f"last change{figures.change_ms:7.1f} ms")
    imgui.text(f"  engine   {figures.engine_ms:7.1f} ms")
    tokens = f"{frame.tokens_used} of {state.budget}" if frame.tokens_used is not None else "-"
    imgui.text(f"tokens     {tokens}")
    passes = f", pass {state.refine_passes}" if state.refine_passes else ""
    imgui.text(f"  placed by {state.criterion}{passes}")
    imgui.text(f"pyramid    {figures.pyramid_bytes / 2**20:7.2f} MiB, {figures.levels} levels")
    if frame.levels_in_view is not None:
        lo, hi = frame.levels_in_view
        imgui.text(f"levels in view {lo:.2f} .. {hi:.2f}")
    imgui.text(f"display    x{state.scale:.3g} (lod {state.display_lod:.2f})")
    pin = "pinned" if state.gaze_pinned else "follows mouse"
    imgui.text(f"gaze       {state.gaze[0]:.2f}, {state.gaze[1]:.2f} ({pin})")
    if state.mode is Mode.LEVELS or state.mode is Mode.TOKENS:
        legend(figures.levels)
    for note in frame.notes:
        imgui.text_colored((1.0, 0.5, 0.3, 1.0), note)
    if figures.message:
        imgui.text_wrapped(figures.message)
    imgui.text_disabled("h: help")
    imgui.end()
    return changed


def legend(levels: int) -> None:
    """The level palette as numbered swatches."""
    draw = imgui.get_window_draw_list()
    x, y = imgui.get_cursor_screen_pos()
    shown = min(levels, len(pictures.LEVEL_PALETTE))
    side = 20.0
    for level in range(shown):
        x0 = x + level * (side + 2)
        draw.add_rect_filled((x0, y), (x0 + side, y + side), colour(pictures.LEVEL_PALETTE[level]))
        draw.add_text((x0 + 6, y + 3), colour((0, 0, 0)), str(level))
    imgui.dummy((shown * (side + 2), side + 4))


def help_window(state: ViewState) -> bool:
    width, height = state.frame_size
    imgui.set_next_window_pos((width / 2, height / 2), imgui.Cond_.always, (0.5, 0.5))
    opened = imgui.begin("keys", True, imgui.WindowFlags_.always_auto_resize | imgui.WindowFlags_.no_collapse)[1]
    if imgui.begin_table("keys", 2):
        for key, what in KEYS:
            imgui.table_next_row()
            imgui.table_next_column()
            imgui.text(key)
            imgui.table_next_column()
            imgui.text(what)
        imgui.end_table()
    imgui.end()
    if opened is False:
        state.show_help = False
        return True
    return False
