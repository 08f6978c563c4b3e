"""Input events (pointer, button, scroll, keys) turned into `ViewState` changes; no GLFW here.

Each handler returns whether the state changed, so the loop redraws only then.
"""

from __future__ import annotations

from .state import REFINE_PASSES, Mode, ViewState

__all__ = ["Controls"]

DRAG_THRESHOLD = 4.0  # pixels a press must move before it pans instead of clicking
ANISOTROPIES = (1, 2, 4, 8, 16)
TILT_ON = 60.0
MODE_KEYS = {"1": Mode.ORIGINAL, "2": Mode.FOVEATED, "3": Mode.LEVELS, "4": Mode.HEAT, "5": Mode.TOKENS,
             "6": Mode.LEVEL}


class Controls:
    """What the mouse and keys do to the view (the help overlay lists the same bindings)."""

    def __init__(self, state: ViewState, levels: int) -> None:
        self.state = state
        self.levels = levels
        self._press: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._dragging = False

    def pointer(self, x: float, y: float) -> bool:
        """Drag pans; otherwise the gaze follows the pointer."""
        state = self.state
        if self._press is not None and self._last is not None:
            if not self._dragging and abs(x - self._press[0]) + abs(y - self._press[1]) > DRAG_THRESHOLD:
                self._dragging = True
            if self._dragging:
                state.pan_by(x - self._last[0], y - self._last[1])
                self._last = (x, y)
                return True
            return False
        return state.follow(x, y)

    def button(self, pressed: bool, x: float, y: float) -> bool:
        """A press in the image area starts a drag; a release that did not drag pins/unpins the gaze there."""
        state = self.state
        if pressed:
            if state.area.contains(x, y):
                self._press = self._last = (x, y)
                self._dragging = False
            return False
        if self._press is None:
            return False
        clicked = not self._dragging
        self._press = self._last = None
        self._dragging = False
        if not clicked:
            return True
        if state.gaze_pinned:
            state.gaze_pinned = False
            state.follow(x, y)
        else:
            state.follow(x, y)
            state.gaze_pinned = True
        return True

    def scroll(self, x: float, y: float, steps: float) -> bool:
        if not self.state.area.contains(x, y) or steps == 0:
            return False
        self.state.zoom_at(x, y, steps)
        return True

    def key(self, name: str) -> bool:
        """A key by its character (or "escape"); False for keys without a binding."""
        state = self.state
        if name in ("q", "escape"):
            state.quit = True
        elif name == "h":
            state.show_help = not state.show_help
        elif name == "s":
            state.screenshot_requests.append("")
        elif name in MODE_KEYS:
            state.mode = MODE_KEYS[name]
        elif name in ("[", "]"):
            state.mode = Mode.LEVEL
            state.level = min(max(0, state.level + (1 if name == "]" else -1)), self.levels - 1)
        elif name in ("p", "space"):
            state.gaze_pinned = not state.gaze_pinned
        elif name == "m":
            state.show_marker = not state.show_marker
        elif name == "u":
            state.show_panel = not state.show_panel
        elif name == "d":
            state.mode = Mode.TOKENS
            state.criterion = "relevance" if state.criterion == "detail" else "detail"
        elif name == "f":
            state.mode = Mode.TOKENS
            state.refine_passes = (state.refine_passes + 1) % (REFINE_PASSES + 1)
        elif name == "r":
            state.reset_view()
        elif name == "t":
            state.tilt = 0.0 if state.tilt > 0 else TILT_ON
        elif name == "a":
            bigger = [a for a in ANISOTROPIES if a > state.anisotropy]
            state.anisotropy = bigger[0] if bigger else ANISOTROPIES[0]
        elif name in (",", "."):
            state.lod_bias = min(4.0, max(-2.0, state.lod_bias + (0.25 if name == "." else -0.25)))
        elif name in ("=", "-"):
            area = state.area
            state.zoom_at(area.x0 + area.width / 2, area.y0 + area.height / 2, 1 if name == "=" else -1)
        else:
            return False
        return True
