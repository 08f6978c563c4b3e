"""The LOD viewer, for real: a GLFW window under Xvfb driven by XTest input events (pointer,
buttons, wheel, keys), checked from its screenshots; and headless screenshots through EGL."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
import glmip.viewer  # noqa: F401 - imports imgui_bundle before glfw
from glmip import pictures
from glmip.cli import main as glmip_main
from glmip.viewer.present import tilt_origins
from glmip.viewer.state import Mode, ViewState, parse_mode
from glmip.viewer.tilt import plane_view

ROOT = Path(__file__).resolve().parents[1]


# -- the X server and its input ----------------------------------------------------------
def _free_display() -> int:
    for number in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number in :90..:199")


@pytest.fixture(scope="module")
def display():
    """A private Xvfb display, started here and stopped after the module: the tests move the pointer
    and type, which they must not do on someone's desktop."""
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed: scripts/setup.sh installs it (package xvfb)")
    number = _free_display()
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + 10
    while not socket.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"Xvfb :{number} did not start: {server.stderr.read().decode()[-500:]}")
        time.sleep(0.05)
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield os.environ["DISPLAY"]
    finally:
        if previous is None:
            del os.environ["DISPLAY"]
        else:
            os.environ["DISPLAY"] = previous
        server.terminate()
        server.wait(timeout=10)


class XTest:
    """Real input events through the X server (libXtst), as a user's mouse and keyboard make them."""

    def __init__(self, name: str) -> None:
        self.x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        self.xtst = ctypes.CDLL(ctypes.util.find_library("Xtst") or "libXtst.so.6")
        self.x11.XOpenDisplay.restype = ctypes.c_void_p
        self.x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        for function in (self.x11.XFlush, self.x11.XCloseDisplay):
            function.argtypes = [ctypes.c_void_p]
        self.x11.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.x11.XStringToKeysym.restype = ctypes.c_ulong
        self.x11.XStringToKeysym.argtypes = [ctypes.c_char_p]
        self.x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        self.xtst.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                                   ctypes.c_ulong]
        self.xtst.XTestFakeButtonEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        self.xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        self.handle = self.x11.XOpenDisplay(name.encode())
        if not self.handle:
            raise RuntimeError(f"cannot open X display {name}")

    def _sync(self) -> None:
        self.x11.XSync(self.handle, 0)

    def move(self, x: float, y: float) -> None:
        self.xtst.XTestFakeMotionEvent(self.handle, -1, int(round(x)), int(round(y)), 0)
        self._sync()

    def button(self, number: int, pressed: bool) -> None:
        self.xtst.XTestFakeButtonEvent(self.handle, number, int(pressed), 0)
        self._sync()

    def click(self, number: int = 1) -> None:
        self.button(number, True)
        self.button(number, False)

    def key(self, keysym: str) -> None:
        code = self.x11.XKeysymToKeycode(self.handle, self.x11.XStringToKeysym(keysym.encode()))
        assert code, f"no keycode for {keysym}"
        self.xtst.XTestFakeKeyEvent(self.handle, code, 1, 0)
        self.xtst.XTestFakeKeyEvent(self.handle, code, 0, 0)
        self._sync()

    def close(self) -> None:
        self.x11.XCloseDisplay(self.handle)


@pytest.fixture(scope="module")
def xtest(display):
    x = XTest(display)
    yield x
    x.close()


# -- the test image and the viewer ---------------------------------------------------------
@pytest.fixture(scope="module")
def noise_image() -> np.ndarray:
    """256x192 RGB noise: every level 0 pixel differs, so detail (gradient energy) shows the level used."""
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, size=(192, 256, 3), dtype=np.uint8)


@pytest.fixture
def window_viewer(display, xtest, noise_image):
    """A 700x420 window on the noise image, the pointer inside it (keys go to the window under it)."""
    from glmip.viewer.window import Viewer

    with Viewer(noise_image, size=(700, 420), window=True, show_marker=False) as v:
        v.settle()
        xtest.move(*to_root(v, *v.state.image_to_screen(0.5, 0.5)))
        pump(v)
        yield v


def window_origin(v) -> tuple[int, int]:
    import glfw

    return glfw.get_window_pos(v.surface.window)


def pump(v, until=lambda: True, timeout: float = 3.0) -> None:
    """Let the viewer take its pending X events and redraw, until `until()` holds (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        v.step()
        if until():
            break
        if time.monotonic() > deadline:
            raise AssertionError("the viewer did not react to the input events in time")
        time.sleep(0.01)
    for _ in range(3):  # ImGui settles; the last frame shows the new state
        v.step()
    v.render()


def to_root(v, x: float, y: float) -> tuple[float, float]:
    ox, oy = window_origin(v)
    return ox + x, oy + y


def grey(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64).mean(axis=2)


def gradient_energy(pixels: np.ndarray) -> float:
    """Mean squared finite difference (both axes) of a grey version: high where detail survives."""
    g = grey(pixels)
    return float(((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean()) / 2)


def row_energy(pixels: np.ndarray) -> float:
    """Mean squared difference between horizontal neighbours (detail along screen rows)."""
    return float((np.diff(grey(pixels), axis=1) ** 2).mean())


def around(shot: np.ndarray, x: float, y: float, half: int) -> np.ndarray:
    x, y = int(round(x)), int(round(y))
    return shot[y - half:y + half, x - half:x + half]


# -- the window, driven by input events ------------------------------------------------------
def test_window_opens_on_the_image_and_is_not_blank(window_viewer, noise_image):
    v = window_viewer
    assert v.surface.__class__.__name__ == "WindowSurface"
    v.state.mode = Mode.ORIGINAL
    v.invalidate()
    pump(v)
    shot = v.screenshot()
    assert shot.shape == (420, 700, 3)
    r = v.state.image_rect
    inside = shot[int(r.y0) + 2:int(r.y1) - 2, int(r.x0) + 2:int(r.x1) - 2]
    assert inside.std() > 40, f"the image area looks blank (std {inside.std():.1f})"
    assert abs(inside.mean() - noise_image.mean()) < 8, (inside.mean(), noise_image.mean())
    panel = shot[:, :250]
    assert panel.std() > 10, "the side panel is not drawn"


def test_gaze_follows_the_pointer_and_the_fovea_is_sharper(window_viewer, xtest):
    v = window_viewer
    xtest.key("2")  # foveated
    target = (0.3, 0.4)
    x, y = v.state.image_to_screen(*target)
    xtest.move(*to_root(v, x, y))
    pump(v, lambda: v.state.mode is Mode.FOVEATED and abs(v.state.gaze[0] - target[0]) < 0.01)
    assert abs(v.state.gaze[1] - target[1]) < 0.01, v.state.gaze
    shot = v.screenshot()
    fovea = gradient_energy(around(shot, x, y, 12))
    fx, fy = v.state.image_to_screen(0.92, 0.9)
    periphery = gradient_energy(around(shot, fx, fy, 12))
    assert fovea > 20 * periphery, f"fovea {fovea:.1f} vs periphery {periphery:.1f}"
    # The same patch of the original image is as detailed as the fovea: the blur is the LOD, not the image.
    xtest.key("1")
    pump(v, lambda: v.state.mode is Mode.ORIGINAL)
    original = gradient_energy(around(v.screenshot(), fx, fy, 12))
    assert original > 0.5 * fovea, (original, fovea)
    # Clicking pins the gaze: moving away no longer moves it.
    xtest.click(1)
    pump(v, lambda: v.state.gaze_pinned)
    xtest.move(*to_root(v, *v.state.image_to_screen(0.7, 0.7)))
    pump(v)
    assert abs(v.state.gaze[0] - target[0]) < 0.01, v.state.gaze


def test_level_map_colours_where_relevance_is_high_and_low(window_viewer, xtest):
    v = window_viewer
    target = (0.35, 0.45)
    x, y = v.state.image_to_screen(*target)
    xtest.move(*to_root(v, x, y))
    xtest.key("3")  # level map
    pump(v, lambda: v.state.mode is Mode.LEVELS and abs(v.state.gaze[0] - target[0]) < 0.01)
    shot = v.screenshot()
    top_level = v.scene.pyramid.default_max_level
    at_gaze = around(shot, x, y, 2).reshape(-1, 3).mean(0)
    far = around(shot, *v.state.image_to_screen(0.95, 0.95), 2).reshape(-1, 3).mean(0)
    assert np.abs(at_gaze - pictures.LEVEL_PALETTE[0]).max() < 16, f"at the gaze: {at_gaze}, want level 0"
    assert np.abs(far - pictures.LEVEL_PALETTE[top_level]).max() < 16, f"far away: {far}, want level {top_level}"


def test_scroll_zooms_about_the_pointer_and_drag_pans_without_recomputing(window_viewer, xtest):
    v = window_viewer
    xtest.key("1")
    pump(v, lambda: v.state.mode is Mode.ORIGINAL)
    uploads, cached = v.presenter.uploads, dict(v.scene._cache)
    x, y = v.state.image_to_screen(0.6, 0.5)
    xtest.move(*to_root(v, x, y))
    xtest.click(4)  # wheel up
    xtest.click(4)
    pump(v, lambda: v.state.zoom > 1.3)
    assert v.state.screen_to_image(x, y) == pytest.approx((0.6, 0.5), abs=1e-6), "the point under the pointer moved"
    pan = v.state.pan
    xtest.button(1, True)
    for step in range(1, 6):
        xtest.move(*to_root(v, x - 8 * step, y - 4 * step))
        v.step()
    xtest.button(1, False)
    pump(v, lambda: v.state.pan != pan)
    assert v.state.pan[0] - pan[0] == pytest.approx(-40, abs=6), (pan, v.state.pan)
    assert v.presenter.uploads == uploads, "a zoom or pan re-uploaded a picture"
    assert v.scene._cache.keys() == cached.keys()
    shot = v.screenshot()
    r = v.state.image_rect
    assert r.width > 1.3 * 256 * v.state.scale / v.state.zoom
    assert shot[int(v.state.area.y0) + 5:, int(v.state.area.x0) + 5:].std() > 40


def test_anisotropic_keeps_more_detail_than_trilinear_on_the_tilted_plane(display, noise_image, xtest):
    from glmip.viewer.window import Viewer

    with Viewer(noise_image, size=(940, 420), window=True, show_marker=False) as v:
        v.settle()
        xtest.move(*to_root(v, 600, 200))
        pump(v)
        xtest.key("t")  # tilt 60 degrees: trilinear, then anisotropic 16x
        pump(v, lambda: v.state.tilt > 0)
        shot = v.screenshot()
        assert v.state.compare_filter == "anisotropic" and v.state.anisotropy == 16
        view = v.scene.tilt_view_size(v.state)
        (ax, ay), (bx, by) = (tuple(int(c) for c in o) for o in tilt_origins(v.state))
        _, _, inside = plane_view(view, 256 / 192, v.state.tilt)
        rows = np.nonzero(inside.any(axis=1))[0]
        far_rows = slice(rows[0] + 2, rows[0] + (rows[-1] - rows[0]) // 5)  # the far fifth: most foreshortened
        cols = np.nonzero(inside[far_rows].all(axis=0))[0]
        cols = slice(cols[0] + 2, cols[-1] - 2)

        def far_part(shot: np.ndarray, x: int, y: int) -> np.ndarray:
            return shot[y:y + view[1], x:x + view[0]][far_rows, cols]

        # Along screen rows the footprint is short: trilinear blurs that detail away with the long axis,
        # anisotropic keeps it.
        e_tri, e_aniso = row_energy(far_part(shot, ax, ay)), row_energy(far_part(shot, bx, by))
        assert e_aniso > 3 * e_tri, f"anisotropic {e_aniso:.1f} vs trilinear {e_tri:.1f}"
        # Anisotropy 1 is trilinear again: the difference is the filter's, not the halves'.
        v.state.anisotropy = 1
        v.invalidate()
        pump(v)
        one = row_energy(far_part(v.screenshot(), bx, by))
        assert one == pytest.approx(e_tri, rel=0.15), (one, e_tri)


def test_keys_help_screenshot_and_quit(window_viewer, xtest, tmp_path):
    v = window_viewer
    v.screenshot_dir = tmp_path
    before = v.screenshot()
    xtest.key("h")
    pump(v, lambda: v.state.show_help)
    after = v.screenshot()
    centre = (slice(150, 270), slice(250, 450))
    assert np.abs(after[centre].astype(int) - before[centre]).mean() > 10, "the help overlay is not drawn"
    xtest.key("s")
    pump(v, lambda: (tmp_path / "glmip-view-001.png").exists())
    xtest.key("q")
    pump(v, lambda: v.state.quit)
    assert v.step() is False


# -- headless: no display at all -------------------------------------------------------------
def _headless_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_headless_screenshot_through_egl_without_display(tmp_path):
    out = tmp_path / "levels.png"
    result = subprocess.run([sys.executable, "-m", "glmip.cli", "view", "--screenshot", str(out), "--mode", "levels",
                             "--gaze", "0.3,0.4", "--size", "640x400"], env=_headless_env(), capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "EGL, no window" in result.stdout
    from PIL import Image

    shot = np.asarray(Image.open(out).convert("RGB"))
    assert shot.shape == (400, 640, 3)
    state = ViewState(image_size=(600, 400), frame_size=(640, 400))
    x, y = state.image_to_screen(0.3, 0.4)
    beside_marker = around(shot, x + 6, y, 1).reshape(-1, 3).mean(0)  # the pinned marker: a dot and a ring
    assert np.abs(beside_marker - pictures.LEVEL_PALETTE[0]).max() < 16, beside_marker


def test_headless_screenshot_matches_the_window(display, tmp_path):
    """The same frame code draws both: a window and an EGL screenshot agree pixel for pixel."""
    from glmip.viewer.window import Viewer

    shots = []
    for window in (True, False):
        with Viewer(None, size=(640, 400), window=window, visible=False, mode=Mode.FOVEATED, gaze=(0.4, 0.4),
                    gaze_pinned=True) as v:
            v.settle()
            shots.append(v.screenshot().astype(int))
    area = (slice(0, 400), slice(300, 640))  # the image area; panel figures (timings) differ between runs
    assert np.abs(shots[0][area] - shots[1][area]).max() <= 1


@pytest.mark.parametrize("argv, message", [
    (["--mode", "blurry"], "unknown mode"),
    (["--mode", "level:x"], "level index"),
    (["--gaze", "2,0.5", "--screenshot", "x.png"], "gaze is uv within"),
    (["--gaze", "0.5", "--screenshot", "x.png"], "--gaze must be two numbers"),
    (["--tilt", "95", "--screenshot", "x.png"], "tilt must be within"),
    (["--anisotropy", "32", "--screenshot", "x.png"], "anisotropy must be within"),
    (["--size", "10", "--screenshot", "x.png"], "--size"),
    (["no-such-image.png", "--screenshot", "x.png", "--headless"], "not found"),
])
def test_cli_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert glmip_main(["view", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_without_display_asks_for_screenshot(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert glmip_main(["view"]) == 2
    assert "--screenshot" in capsys.readouterr().err


# -- the view's geometry ---------------------------------------------------------------------
def test_parse_mode():
    assert parse_mode("level:3") == (Mode.LEVEL, 3)
    assert parse_mode("heat") == (Mode.HEAT, 0)
    with pytest.raises(ValueError, match="only the level mode"):
        parse_mode("heat:2")


@settings(max_examples=60, deadline=None)
@given(u=st.floats(0, 1), v=st.floats(0, 1), steps=st.floats(-8, 8), zoom=st.floats(0.5, 8),
       width=st.integers(1, 4096), height=st.integers(1, 4096))
def test_zoom_keeps_the_point_under_the_pointer(u, v, steps, zoom, width, height):
    state = ViewState(image_size=(width, height), zoom=zoom, pan=(13.0, -7.0))
    x, y = state.image_to_screen(u, v)
    state.zoom_at(x, y, steps)
    assert state.screen_to_image(x, y) == pytest.approx((u, v), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(tilt=st.floats(0, 80), aspect=st.floats(0.5, 2), zoom=st.floats(0.5, 4))
def test_tilted_plane_gradients_are_the_uv_derivatives(tilt, aspect, zoom):
    """The analytic grad equals the derivative of uv (central differences of views shifted by
    +-delta px through `pan`), so the filters see the true footprint."""
    size, delta = (64, 48), 0.01
    uv, grad, inside = plane_view(size, aspect, tilt, zoom)

    def shifted(dx: float, dy: float) -> np.ndarray:
        return plane_view(size, aspect, tilt, zoom, pan=(-dx, -dy))[0].astype(np.float64)

    d_dx = (shifted(delta, 0) - shifted(-delta, 0)) / (2 * delta)
    d_dy = (shifted(0, delta) - shifted(0, -delta)) / (2 * delta)
    scale = np.abs(grad[inside]).max() if inside.any() else 1.0
    assert np.allclose(grad[..., 0, :][inside], d_dx[inside], atol=0.01 * scale, rtol=0.01)
    assert np.allclose(grad[..., 1, :][inside], d_dy[inside], atol=0.01 * scale, rtol=0.01)
    if tilt > 1 and inside.any():
        rows = np.nonzero(inside.any(axis=1))[0]
        top, bottom = grad[rows[0], :, 1, 1][inside[rows[0]]].mean(), grad[rows[-1], :, 1, 1][inside[rows[-1]]].mean()
        assert top > bottom, "the far edge must be the more foreshortened"


def test_query_relevance_in_the_viewer(ctx, tiny_clip, tmp_path, noise_image, monkeypatch):
    """With --clip-model, the query source is glmip.query_relevance on the viewer's pyramid with the typed
    query (a different query gives a different map; the model loaded from the directory gives the same one);
    without, the box says why it is off."""
    from glmip.viewer.scene import Scene
    from glmip.viewer.state import ViewState

    model, tokenizer = tiny_clip
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scene = Scene(ctx, noise_image, method="box", clip_model=str(tmp_path))
    assert scene.query_available == (True, "")
    calls = []
    real = glmip.query_relevance

    def recording(pyramid, query, *args, **kwargs):
        calls.append((pyramid, query, kwargs.get("size")))
        return real(pyramid, query, *args, **kwargs)

    monkeypatch.setattr(glmip, "query_relevance", recording)
    state = ViewState(image_size=scene.image_size, relevance_source="query", query="red cup")
    relevance = scene.relevance(state)
    size = scene.relevance_size()
    assert calls == [(scene.pyramid, "red cup", size)]
    assert relevance.shape == (size[1], size[0]) and relevance.min() == 0.0 and relevance.max() == 1.0
    other = scene.relevance(ViewState(image_size=scene.image_size, relevance_source="query", query="a green dog"))
    assert np.abs(other - relevance).max() > 1e-3, "the map does not depend on the query"
    from_directory = real(scene.pyramid, "red cup", str(tmp_path), size=size)
    np.testing.assert_allclose(relevance, from_directory, atol=1e-5)
    off = Scene(ctx, noise_image, method="box")
    assert off.query_available[0] is False and "--clip-model" in off.query_available[1]


@settings(max_examples=60, deadline=None)
@given(u0=st.floats(0, 0.9), v0=st.floats(0, 0.9), du=st.floats(0.01, 1), dv=st.floats(0.01, 1),
       width=st.integers(1, 4096), height=st.integers(1, 4096))
def test_render_region_covers_what_is_visible(u0, v0, du, dv, width, height):
    """The foveated picture is rendered over the visible part (plus a margin, snapped to tiles), or
    over the whole image when that part is most of it; it always covers what the view shows."""
    from glmip.viewer.scene import REGION_MAX_SHARE, render_region

    u1, v1 = min(1.0, u0 + du), min(1.0, v0 + dv)
    x0, y0, x1, y1 = render_region((u0, v0, u1, v1), (width, height))
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert x0 <= u0 * width and x1 >= min(width, u1 * width) and y0 <= v0 * height and y1 >= min(height, v1 * height)
    if (x0, y0, x1, y1) != (0, 0, width, height):
        assert (x1 - x0) * (y1 - y0) <= REGION_MAX_SHARE * width * height
    assert render_region(None, (width, height)) == (0, 0, width, height)


def _covers_exactly(layout, size):
    width, height = size
    count = np.zeros((height, width), np.int32)
    for x0, y0, x1, y1 in layout.boxes():
        count[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] += 1
    return bool((count == 1).all())


def test_token_view_detail_criterion_and_coarse_to_fine_passes(ctx):
    """Key d switches the token layout to the detail criterion (it then follows the image's content: a flat
    half gets fewer tokens than a textured half under uniform-ish relevance); key f walks the coarse-to-fine
    passes: token counts grow pass by pass up to the budget, every pass an exact cover, and the tokens refined
    first sit where the relevance is."""
    from glmip.viewer.controls import Controls
    from glmip.viewer.scene import Scene, relevance_mass

    rng = np.random.default_rng(2)
    image = np.full((192, 256, 3), 128, np.uint8)
    image[:, 128:] = rng.integers(0, 256, (192, 128, 3), dtype=np.uint8)  # textured right half, flat left
    scene = Scene(ctx, image, method="box")
    state = ViewState(image_size=scene.image_size, budget=64, patch=8, gaze_radius=0.9, gaze=(0.5, 0.5))
    controls = Controls(state, scene.pyramid.levels)
    plain = scene.layout(state)
    assert controls.key("d") and state.mode is Mode.TOKENS and state.criterion == "detail"
    detail = scene.layout(state)
    right = lambda layout: int((np.asarray(layout.cx) > 128).sum())  # noqa: E731
    assert right(detail) > right(plain) and right(detail) > len(detail) * 0.7
    controls.key("d")
    state.gaze, state.gaze_radius = (0.2, 0.5), 0.1
    counts = []
    for expected in (1, 2, 3, 0):
        assert controls.key("f") and state.refine_passes == expected
        layout = scene.layout(state)
        assert _covers_exactly(layout, scene.image_size) and len(layout) <= state.budget
        counts.append(len(layout))
    assert counts[0] < counts[1] < counts[2] <= state.budget
    state.refine_passes = 1
    for gaze_x, side in ((0.2, -1), (0.8, 1)):  # refined where the gaze is, left or right
        state.gaze = (gaze_x, 0.5)
        layout = scene.layout(state)
        fine = np.asarray(layout.level) == np.asarray(layout.level).min()
        assert side * (np.asarray(layout.cx)[fine].mean() - 128) > 0
    mass = relevance_mass(np.ones((4, 4)), layout, scene.image_size)
    assert np.all(mass >= 1)
    with pytest.raises(ValueError, match="refine_passes"):
        ViewState(image_size=(10, 10), refine_passes=7)
    with pytest.raises(ValueError, match="criterion"):
        ViewState(image_size=(10, 10), criterion="entropy")
