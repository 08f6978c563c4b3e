"""`glmip view SLIDE`: a generated pyramidal TIFF in the headless viewer (EGL), checked from its screenshots:
the fitted view is the stored level that fits, 1:1 is level 0, pans move the picture, caches stay bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glmip
import glmip.viewer  # noqa: F401 - imports imgui_bundle before glfw
from glmip.slides.synthetic import BACKGROUND, write_synthetic_slide
from glmip.viewer import slide_scene
from glmip.viewer.slide_scene import REGION_PICTURES, SlideScene, open_slide
from glmip.viewer.state import Mode
from glmip.viewer.window import Viewer

pytest.importorskip("tiffslide")
ROOT = Path(__file__).resolve().parents[1]
FRAME = (768, 576)
HOST_BYTES, GL_BYTES = 24 << 20, 128 << 20  # small enough that the pan sequence below evicts
LEVEL0_LSB = 2  # the 1:1 frame against the file's level-0 pixels: sampled at texel centres, encoded twice


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    """20,000 x 16,000, 4 stored levels (mips 0, 2, 4, 6), two tissue regions of 2048 x 1536."""
    return write_synthetic_slide(tmp_path_factory.mktemp("slideview") / "slide.tif", 20_000, 16_000, tissue=2,
                                 tissue_size=(2048, 1536), seed=3)


@pytest.fixture(scope="module")
def viewer(slide_file):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slide_scene, "HOST_CACHE_BYTES", HOST_BYTES)
        patch.setattr(slide_scene, "GL_CACHE_BYTES", GL_BYTES)
        v = Viewer(str(slide_file.path), size=FRAME, window=False, visible=False, show_panel=False)
    with v:
        yield v


@pytest.fixture
def view(viewer):
    """The module's viewer at the fitted view, checked for GL errors after the test."""
    viewer.state.reset_view()
    viewer.context.gl.error  # noqa: B018 - reading clears a stale error
    yield viewer
    assert viewer.context.gl.error == "GL_NO_ERROR"


def shot(v: Viewer) -> np.ndarray:
    v.render()
    return v.screenshot().astype(np.int32)


def tissue_pixels(frame: np.ndarray) -> np.ndarray:
    """Where a frame is far from the slide's background colour (the synthetic tissue is pink to purple)."""
    return np.abs(frame - np.array(BACKGROUND)).max(axis=2) > 24


def one_to_one_at(v: Viewer, x: int, y: int) -> None:
    """Zoom to 1 screen pixel per level-0 pixel with level-0 pixel (x, y) at the area's centre, pixel edges
    on screen pixel edges (integer pan)."""
    state = v.state
    fitted = state.scale / state.zoom
    state.zoom = 1.0 / fitted
    assert abs(state.scale - 1.0) < 1e-9 and state.zoom <= state.max_zoom
    w, h = state.image_size
    state.pan = (float(w // 2 - x), float(h // 2 - y))


def test_slide_detection_rule(slide_file, tmp_path, ctx):
    """A pyramidal TIFF opens as a slide; a one-level TIFF within the texture limit and a PNG do not."""
    small = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    Image.fromarray(small).save(tmp_path / "plain.tif")
    Image.fromarray(small).save(tmp_path / "plain.png")
    assert open_slide(ctx, tmp_path / "plain.tif") is None
    assert open_slide(ctx, tmp_path / "plain.png") is None
    assert open_slide(ctx, small) is None
    slide = open_slide(ctx, slide_file.path)
    try:
        assert isinstance(slide, glmip.Slide) and [lv.mip for lv in slide.stored_levels] == [0, 2, 4, 6]
    finally:
        slide.close()


def test_fitted_view_is_the_stored_level_with_tissue_where_written(view, slide_file):
    frame = shot(view)
    scene = view.scene
    assert isinstance(scene, SlideScene) and scene.renders == 0  # a stored level, read whole: no render
    state = view.state
    expected = np.zeros(FRAME[::-1], bool)
    inner = np.zeros_like(expected)
    for x0, y0, x1, y1 in slide_file.tissue:
        sx0, sy0 = state.image_to_screen(x0 / slide_file.width, y0 / slide_file.height)
        sx1, sy1 = state.image_to_screen(x1 / slide_file.width, y1 / slide_file.height)
        expected[round(sy0) - 2:round(sy1) + 2, round(sx0) - 2:round(sx1) + 2] = True
        inner[round(sy0) + 2:round(sy1) - 2, round(sx0) + 2:round(sx1) - 2] = True
    rect = state.image_rect
    on_slide = np.zeros_like(expected)
    on_slide[int(np.ceil(rect.y0)):int(rect.y1), int(np.ceil(rect.x0)):int(rect.x1)] = True
    found = tissue_pixels(frame)
    assert found[inner].mean() > 0.97, "the tissue boxes are not where the generator put them"
    assert found[on_slide & ~expected].mean() < 0.002, "tissue shown outside the generator's boxes"
    assert (np.abs(frame[on_slide & ~expected] - BACKGROUND) <= 2).mean() > 0.99  # the slide's own background


def test_one_to_one_is_level0_pixels_with_their_detail(view, slide_file):
    fitted = shot(view)
    x0, y0, x1, y1 = slide_file.tissue[0]
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    fitted_state = (view.state.image_to_screen(cx / slide_file.width, cy / slide_file.height), view.state.scale)
    one_to_one_at(view, cx, cy)
    frame = shot(view)
    assert view.scene.renders >= 1 and view.scene.frame(view.state).levels_in_view == (0.0, 0.0)
    w, h = FRAME
    level0 = view.scene.slide.read(0, (cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2)).astype(np.int32)
    assert np.abs(frame - level0).max() <= LEVEL0_LSB

    # What the fitted view shows of the central 256 x 256 level-0 pixels, magnified to 256 x 256: far smoother.
    (fx, fy), scale = fitted_state
    side = 256 * scale
    patch = fitted[int(fy - side / 2):int(np.ceil(fy + side / 2)), int(fx - side / 2):int(np.ceil(fx + side / 2))]
    magnified = np.asarray(Image.fromarray(patch.astype(np.uint8)).resize((256, 256), Image.BILINEAR), np.int32)
    sharp = frame[h // 2 - 128:h // 2 + 128, w // 2 - 128:w // 2 + 128]

    def energy(picture: np.ndarray) -> float:
        grey = picture.mean(axis=2)
        return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())

    assert energy(sharp) > 20 * energy(magnified)


def test_pan_moves_the_picture_and_the_caches_stay_bounded(view, slide_file):
    x0, y0, x1, y1 = slide_file.tissue[1]
    one_to_one_at(view, x0 + 600, y0 + 500)
    before = shot(view)
    dx, dy = 37, -23
    view.state.pan_by(dx, dy)
    after = shot(view)
    w, h = FRAME
    assert np.abs(after[max(dy, 0):h + min(dy, 0), dx:] - before[max(-dy, 0):h - max(dy, 0), :w - dx]).max() <= 1

    scene = view.scene
    renders = scene.renders
    walk = [(-700, 0), (-700, 0), (0, -600), (700, 0), (700, 0), (0, 600), (-350, -300)]  # across GPU tiles
    for step in walk:
        view.state.pan_by(*step)
        shot(view)
        slide = scene.slide
        assert 0 < slide.cache_bytes <= HOST_BYTES and 0 < slide.gl_bytes <= GL_BYTES
        assert len(scene._pictures) <= REGION_PICTURES
    assert scene.renders > renders  # the walk crossed grid lines: regions were rendered, not one picture stretched
    view.state.pan_by(*(-sum(s[i] for s in walk) for i in (0, 1)))
    assert np.abs(shot(view) - after).max() <= 1  # back where it started: the same pixels


def test_heat_mode_marks_the_tissue_and_cli_screenshot(view, slide_file, tmp_path):
    view.state.mode = Mode.HEAT
    try:
        heat = shot(view)
    finally:
        view.state.mode = Mode.ORIGINAL
    plain = shot(view)
    x0, y0, x1, y1 = slide_file.tissue[0]
    tx, ty = (round(c) for c in view.state.image_to_screen((x0 + x1) / 2 / slide_file.width,
                                                           (y0 + y1) / 2 / slide_file.height))
    bx, by = (round(c) for c in view.state.image_to_screen(0.02, 0.02))
    assert heat[ty, tx, 0] > heat[ty, tx, 2] and heat[by, bx, 2] > heat[by, bx, 0]  # hot tissue, cold background
    assert np.abs(heat - plain).max() > 40

    out = tmp_path / "slide.png"  # in its own process: ImGui allows one viewer per process
    result = subprocess.run([sys.executable, "-m", "glmip.cli", "view", str(slide_file.path), "--screenshot",
                             str(out), "--headless", "--size", "640x480", "--no-ui"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "original" in result.stdout
    cli = np.asarray(Image.open(out).convert("RGB"))
    assert cli.shape == (480, 640, 3) and tissue_pixels(cli.astype(np.int32)).mean() > 0.01
