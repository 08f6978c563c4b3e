"""Relevance -> LOD maps, the one-pass LOD composite, and `glmip render`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import random_image
from PIL import Image

import glmip
from glmip import reference
from glmip.sampling import render


def test_lod_map_curve_and_range():
    relevance = np.linspace(0, 1, 11, dtype=np.float32)[None, :]
    lods = glmip.lod_map(relevance, max_level=5)
    np.testing.assert_allclose(lods[0], 5 * (1 - relevance[0]), atol=1e-6)
    assert lods[0, -1] == 0 and lods[0, 0] == 5
    gamma2 = glmip.lod_map(relevance, max_level=5, gamma=2.0)
    assert (gamma2 <= lods + 1e-6).all(), "gamma > 1 keeps more detail"
    assert (np.diff(lods[0]) < 0).all(), "more relevance, finer level"
    shifted = glmip.lod_map(relevance, max_level=6, min_level=1)
    assert shifted.min() == 1 and shifted.max() == 6


def test_relevance_validation_and_rescaling():
    assert glmip.as_relevance(np.array([[0.2, 0.4]])).max() == pytest.approx(0.4)  # in range: kept
    np.testing.assert_allclose(glmip.as_relevance(np.array([[10.0, 20.0, 30.0]])), [[0, 0.5, 1]])
    with pytest.raises(ValueError, match="NaN"):
        glmip.lod_map(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="non-empty"):
        glmip.lod_map(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="numpy array or torch"):
        glmip.lod_map([[0.5]])
    with pytest.raises(ValueError, match="min_level <= max_level"):
        glmip.lod_map(np.ones((2, 2)), max_level=1, min_level=2)
    with pytest.raises(ValueError, match="gamma"):
        glmip.lod_map(np.ones((2, 2)), gamma=0)


def test_gaze_peaks_at_the_point():
    g = glmip.gaze((40, 20), (0.25, 0.5), radius=0.1)
    assert g.shape == (20, 40)
    y, x = np.unravel_index(np.argmax(g), g.shape)
    assert (x, y) in {(9, 9), (9, 10), (10, 9), (10, 10)}
    with pytest.raises(ValueError, match="uv in"):
        glmip.gaze((40, 20), (1.5, 0.5))


@pytest.mark.parametrize("level", [0.0, 1.0, 2.5])
def test_render_at_constant_lod_matches_reference(ctx, level):
    image = random_image(np.random.default_rng(int(level * 2)), 45, 61, 4, "uint8")
    with ctx.pyramid(image, method="box") as p:
        got, used = render(p, np.full((3, 5), level, np.float32), return_lod=True)
        assert got.shape == image.shape and got.dtype == np.uint8
        np.testing.assert_allclose(used, level, atol=1e-5)
        j, i = np.mgrid[:45, :61]
        uv = np.stack([(i.ravel() + 0.5) / 61, (j.ravel() + 0.5) / 45], 1)
        levels = [reference.decode(p.level(k)) for k in range(p.levels)]
        expected = reference.encode(reference.trilinear(levels, uv, np.full(uv.shape[0], level)), np.uint8)
        assert np.abs(got.reshape(-1, 4).astype(int) - expected.astype(int)).max() <= 2
        if level == 0.0:
            assert np.abs(got.astype(int) - image.astype(int)).max() <= 1


def local_detail(image: np.ndarray) -> float:
    gray = image[..., :3].astype(np.float64).mean(axis=2)
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def test_render_relevance_keeps_the_fovea_sharp_and_blurs_the_rest(ctx):
    image = random_image(np.random.default_rng(5), 128, 128, 3, "uint8")
    relevance = np.zeros((16, 16), np.float32)
    relevance[:8, :8] = 1.0  # top-left quarter relevant
    with ctx.pyramid(image, method="box") as p:
        out = p.render(relevance=relevance, max_level=4)
        fovea, periphery = out[8:56, 8:56], out[72:, 72:]
        assert abs(local_detail(fovea) - local_detail(image[8:56, 8:56])) < 2
        assert local_detail(periphery) < 0.25 * local_detail(image[72:, 72:])
        small = p.render(np.zeros((2, 2), np.float32), size=(32, 20))
        assert small.shape == (20, 32, 3)


def test_render_srgb_and_uint16(ctx):
    with ctx.pyramid(np.full((8, 8, 3), 188, np.uint8), srgb=True) as p:
        assert np.abs(p.render(np.full((1, 1), 2.0, np.float32)).astype(int) - 188).max() <= 1
    image16 = random_image(np.random.default_rng(1), 9, 13, 2, "uint16")
    with ctx.pyramid(image16, method="box") as p:
        out = p.render(np.zeros((1, 1), np.float32))
        assert out.dtype == np.uint16 and np.abs(out.astype(int) - image16.astype(int)).max() <= 1


def test_render_argument_errors(ctx):
    with ctx.pyramid(np.zeros((8, 8, 3), np.uint8)) as p:
        with pytest.raises(ValueError, match="exactly one"):
            p.render()
        with pytest.raises(ValueError, match="exactly one"):
            p.render(np.zeros((2, 2)), relevance=np.zeros((2, 2)))
        with pytest.raises(ValueError, match="size must be"):
            p.render(np.zeros((2, 2)), size=(0, 5))
        with pytest.raises(ValueError, match="LOD map"):
            p.render(np.zeros((2, 2, 2)))
        with pytest.raises(ValueError, match="region"):
            p.render(np.zeros((2, 2)), region=(0.5, 0.0, 0.5, 1.0))


@pytest.mark.parametrize("x0, y0, x1, y1", [(0, 0, 97, 61), (13, 7, 60, 40), (96, 60, 97, 61), (40, 0, 41, 61)])
def test_render_of_a_region_is_the_crop_of_the_whole(ctx, x0, y0, x1, y1):
    """A region on the output's pixel grid gives the same pixels as rendering all and cropping
    (within 1 LSB: the uv of a pixel centre is rounded differently)."""
    rng = np.random.default_rng(x0 + y1)
    image = random_image(rng, 61, 97, 3, "uint8")
    lods = rng.random((9, 13)).astype(np.float32) * 4
    with ctx.pyramid(image, method="box") as p:
        whole, whole_lod = p.render(lods, return_lod=True)
        part, part_lod = p.render(lods, size=(x1 - x0, y1 - y0), region=(x0 / 97, y0 / 61, x1 / 97, y1 / 61),
                                  return_lod=True)
    assert part.shape == (y1 - y0, x1 - x0, 3)
    assert np.abs(part.astype(int) - whole[y0:y1, x0:x1].astype(int)).max() <= 1
    np.testing.assert_allclose(part_lod, whole_lod[y0:y1, x0:x1], atol=1e-4)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glmip.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["lod", "levels", "heat"])
def test_cli_render_modes(tmp_path, mode):
    out = tmp_path / f"{mode}.png"
    result = run_cli("render", "--gaze", "0.45,0.35", "--mode", mode, "-o", str(out))
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    assert picture.shape[1] == 600 and picture.std() > 5
    if mode == "levels":  # level 0 colour at the gaze point, level 5 colour in the far corner
        from glmip.pictures import LEVEL_PALETTE

        assert np.abs(picture[140, 270] - LEVEL_PALETTE[0]).max() < 30
        assert np.abs(picture[390, 590] - LEVEL_PALETTE[5]).max() < 30


def test_cli_render_with_relevance_file(tmp_path):
    relevance = np.zeros((10, 10), np.float32)
    relevance[2:5, 2:5] = 1
    np.save(tmp_path / "r.npy", relevance)
    Image.fromarray((relevance * 255).astype(np.uint8)).save(tmp_path / "r.png")
    for path in ("r.npy", "r.png"):
        result = run_cli("render", "--relevance", str(tmp_path / path), "-o", str(tmp_path / "o.png"))
        assert result.returncode == 0, result.stderr
    bad = run_cli("render", "--gaze", "0.5", "-o", str(tmp_path / "o.png"))
    assert bad.returncode == 2 and "--gaze" in bad.stderr
