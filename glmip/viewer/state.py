"""What the viewer shows: the display mode, the view transform and every control's value.

Convention:
    screen positions are framebuffer pixels, (0, 0) the top-left corner, y down; image
    positions are uv in [0, 1]^2, (0, 0) the image's top-left corner (as glmip samples).
    The image area is the framebuffer right of the side panel; at zoom 1 the image fits it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

__all__ = ["Mode", "parse_mode", "Rect", "ViewState"]

PANEL_WIDTH = 300  # side panel, pixels; the image area starts right of it
MIN_ZOOM, MAX_ZOOM = 0.25, 64.0


class Mode(str, enum.Enum):
    ORIGINAL = "original"
    FOVEATED = "foveated"
    LEVELS = "levels"
    HEAT = "heat"
    TOKENS = "tokens"
    LEVEL = "level"  # one mip level, `ViewState.level`


def parse_mode(text: str) -> tuple[Mode, int]:
    """`original|foveated|levels|heat|tokens|level:K` -> (mode, K); K is 0 unless the mode is `level:K`."""
    name, _, level = str(text).partition(":")
    try:
        mode = Mode(name)
    except ValueError:
        names = ", ".join(m.value for m in Mode if m is not Mode.LEVEL)
        raise ValueError(f"unknown mode {text!r}; choose one of {names} or level:K (K a level index)") from None
    if mode is Mode.LEVEL:
        if not level.isdigit():
            raise ValueError(f"mode level:K needs a level index K >= 0, got {text!r}")
        return mode, int(level)
    if level:
        raise ValueError(f"only the level mode takes an index (level:K), got {text!r}")
    return mode, 0


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


REFINE_PASSES = 3  # the coarse-to-fine steps the token view walks through (key f)


@dataclass
class ViewState:
    """Every control of the viewer; the scene and the presenter read it, input and panels write it."""

    image_size: tuple[int, int]
    frame_size: tuple[int, int] = (1280, 800)
    show_panel: bool = True
    mode: Mode = Mode.FOVEATED
    level: int = 0
    gaze: tuple[float, float] = (0.5, 0.5)
    gaze_pinned: bool = False
    show_marker: bool = True
    gaze_radius: float = 0.12
    relevance_source: str = "gaze"  # gaze, saliency or query
    zoom: float = 1.0
    max_zoom: float = MAX_ZOOM  # slides raise it, so 1:1 is reachable on a 100k-pixel image
    pan: tuple[float, float] = (0.0, 0.0)  # screen pixels, from the centred position
    tilt: float = 0.0  # degrees; > 0 shows the trilinear / anisotropic comparison
    anisotropy: int = 16
    compare_filter: str = "anisotropic"
    lod_bias: float = 0.0
    budget: int = 256
    patch: int = 16
    criterion: str = "relevance"  # token layouts: split by relevance, or by relevance x detail lost
    refine_passes: int = 0  # token layouts: 0 = one allocation; k = a coarse cover refined k times (coarse to fine)
    gamma: float = 1.0  # relevance curve: lod = max_level * (1 - relevance) ** gamma
    method: str = "hardware"
    query: str = ""
    show_help: bool = False
    quit: bool = False
    screenshot_requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check what callers pass (the CLI, tests, scripts); the widgets keep values in range themselves."""
        if isinstance(self.mode, str) and not isinstance(self.mode, Mode):
            self.mode, level = parse_mode(self.mode)
            self.level = level or self.level
        choices = {"method": ("hardware", "box", "lanczos"), "relevance_source": ("gaze", "saliency", "query"),
                   "criterion": ("relevance", "detail"), "refine_passes": tuple(range(REFINE_PASSES + 1)),
                   "compare_filter": ("anisotropic", "anisotropic_hw", "trilinear", "nearest")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {getattr(self, name)!r}")
        if not all(0.0 <= g <= 1.0 for g in self.gaze):
            raise ValueError(f"gaze is uv within [0, 1]^2, got {self.gaze}")
        if not 0.0 <= self.tilt < 90.0:
            raise ValueError(f"tilt must be within [0, 90) degrees, got {self.tilt}")
        if not 1 <= self.anisotropy <= 16:
            raise ValueError(f"anisotropy must be within 1..16, got {self.anisotropy}")
        if not (self.zoom > 0 and self.gamma > 0 and self.gaze_radius > 0):
            raise ValueError(f"zoom, gamma and gaze_radius must be positive, got {self.zoom}, {self.gamma}, "
                             f"{self.gaze_radius}")
        if self.budget < 1 or self.patch < 1 or self.level < 0:
            raise ValueError(f"budget and patch must be positive and level >= 0, got {self.budget}, {self.patch}, "
                             f"{self.level}")

    # -- the image area and the view transform ------------------------------------------
    @property
    def area(self) -> Rect:
        """The framebuffer rectangle the image is shown in."""
        left = PANEL_WIDTH if self.show_panel else 0
        width, height = self.frame_size
        return Rect(min(left, width - 1), 0, width, height)

    @property
    def scale(self) -> float:
        """Screen pixels per level-0 image pixel."""
        area, (w, h) = self.area, self.image_size
        return min(area.width / w, area.height / h) * self.zoom

    @property
    def image_rect(self) -> Rect:
        """Where the whole image lands on screen."""
        area, (w, h), s = self.area, self.image_size, self.scale
        cx, cy = area.x0 + area.width / 2 + self.pan[0], area.y0 + area.height / 2 + self.pan[1]
        return Rect(cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2)

    def image_to_screen(self, u: float, v: float) -> tuple[float, float]:
        r = self.image_rect
        return r.x0 + u * r.width, r.y0 + v * r.height

    def screen_to_image(self, x: float, y: float) -> tuple[float, float]:
        r = self.image_rect
        return (x - r.x0) / r.width, (y - r.y0) / r.height

    def visible_uv(self) -> tuple[float, float, float, float] | None:
        """The part of the image inside the area, as u0, v0, u1, v1 (None when none is)."""
        a = self.area
        u0, v0 = self.screen_to_image(a.x0, a.y0)
        u1, v1 = self.screen_to_image(a.x1, a.y1)
        u0, v0, u1, v1 = max(u0, 0.0), max(v0, 0.0), min(u1, 1.0), min(v1, 1.0)
        return (u0, v0, u1, v1) if u1 > u0 and v1 > v0 else None

    def zoom_at(self, x: float, y: float, steps: float) -> None:
        """Zoom by 2^(steps/4) keeping the image point under (x, y) fixed."""
        zoom = min(self.max_zoom, max(MIN_ZOOM, self.zoom * 2.0 ** (steps / 4)))
        if self.tilt > 0:  # the tilted plane zooms about its own centre
            self.zoom = zoom
            return
        u, v = self.screen_to_image(x, y)
        self.zoom = zoom
        sx, sy = self.image_to_screen(u, v)
        self.pan = (self.pan[0] + x - sx, self.pan[1] + y - sy)

    def pan_by(self, dx: float, dy: float) -> None:
        self.pan = (self.pan[0] + dx, self.pan[1] + dy)

    def reset_view(self) -> None:
        self.zoom, self.pan = 1.0, (0.0, 0.0)

    def follow(self, x: float, y: float) -> bool:
        """Move the gaze to the image point under (x, y) unless pinned or outside; True if it moved."""
        if self.gaze_pinned or self.tilt > 0 or not self.area.contains(x, y):
            return False
        u, v = self.screen_to_image(x, y)
        if not (0.0 <= u <= 1.0 and 0.0 <= v <= 1.0):
            return False
        moved = (u, v) != self.gaze
        self.gaze = (u, v)
        return moved

    @property
    def display_lod(self) -> float:
        """The level the display itself minifies level 0 to (0 when magnified)."""
        return max(0.0, -math.log2(self.scale)) if self.scale > 0 else 0.0
