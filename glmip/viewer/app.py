"""The viewer as one call: check every option, open a window (or render headless through EGL),
and either run the interactive loop or write one frame as a PNG. `glmip view` is its front."""

from __future__ import annotations

from typing import Any

from .state import ViewState, parse_mode

__all__ = ["view_state", "run"]


def view_state(*, mode: str = "foveated", gaze: tuple[float, float] | None = None, method: str = "hardware",
               zoom: float = 1.0, tilt: float = 0.0, compare_filter: str = "anisotropic", anisotropy: int = 16,
               lod_bias: float = 0.0, budget: int = 256, patch: int = 16, gamma: float = 1.0,
               show_panel: bool = True) -> dict[str, Any]:
    """The viewer's initial state from its options, every value checked (ValueError) before a
    context or window opens. `mode`: original | foveated | levels | heat | tokens | level:K."""
    view_mode, level = parse_mode(mode)
    state: dict[str, Any] = {"mode": view_mode, "level": level, "method": method, "zoom": zoom, "tilt": tilt,
                             "compare_filter": compare_filter, "anisotropy": anisotropy, "lod_bias": lod_bias,
                             "budget": budget, "patch": patch, "gamma": gamma, "show_panel": show_panel}
    if gaze is not None:
        state.update(gaze=gaze, gaze_pinned=True)
    ViewState(image_size=(1, 1), **state)
    return state


def run(image: Any = None, *, size: tuple[int, int] = (1280, 800), screenshot: str | None = None,
        headless: bool = False, device: int | None = None, srgb: bool = False, clip_model: str | None = None,
        state: dict[str, Any] | None = None) -> str:
    """Show `image` (default the bundled one) in the viewer until it is closed, or with
    `screenshot` render one frame to that PNG and return; returns a one-line summary."""
    from .window import Viewer, display_available

    window = display_available() and not headless
    if not window and not screenshot:
        raise ValueError("no display (DISPLAY is unset): run under X/Xvfb, or pass --screenshot OUT.png "
                         "to render one frame headless through EGL")
    with Viewer(image, size=size, window=window, visible=not screenshot, device=device, srgb=srgb,
                clip_model=clip_model, **(state or view_state())) as viewer:
        if not screenshot:
            viewer.run()
            return "viewer closed"
        viewer.settle()
        viewer.screenshot(screenshot)
        return (f"{viewer.state.mode.value}: {size[0]}x{size[1]} frame "
                f"({'window' if window else 'EGL, no window'}), wrote {screenshot}")
