"""Token allocation: the quadtree covers the image exactly, keeps to the budget, follows relevance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip.allocate import allocate

layouts = st.fixed_dictionaries({
    "width": st.integers(1, 300), "height": st.integers(1, 300), "budget": st.integers(1, 400),
    "patch": st.sampled_from([4, 8, 16]), "seed": st.integers(0, 2**16),
})


def random_relevance(seed: int, shape=(23, 31)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) ** 3


@settings(max_examples=80, deadline=None)
@given(case=layouts)
def test_coverage_exact_and_budget_respected(case):
    relevance = random_relevance(case["seed"])
    try:
        layout = allocate(relevance, budget=case["budget"], patch=case["patch"],
                          image_size=(case["width"], case["height"]))
    except ValueError as error:  # only when even one token per root cell does not fit
        assert "cannot cover" in str(error)
        return
    assert 1 <= len(layout) <= case["budget"]
    coverage = layout.coverage()
    assert coverage.min() == 1 and coverage.max() == 1, "no gaps, no overlaps"
    np.testing.assert_array_equal(layout.size, case["patch"] * 2.0 ** layout.level)
    assert (layout.level >= 0).all()


@settings(max_examples=40, deadline=None)
@given(case=layouts, corner=st.tuples(st.integers(0, 15), st.integers(0, 22)))
def test_monotone_in_relevance(case, corner):
    """Raising relevance in a region never leaves it with fewer tokens."""
    relevance = random_relevance(case["seed"])
    size = (max(case["width"], 64), max(case["height"], 64))
    budget = max(case["budget"], 64)
    boosted = relevance.copy()
    y, x = corner
    boosted[y:y + 6, x:x + 8] = 1.0
    before = allocate(relevance, budget=budget, patch=case["patch"], image_size=size, max_level=_roots(size, budget,
                                                                                                        case["patch"]))
    after = allocate(boosted, budget=budget, patch=case["patch"], image_size=size, max_level=_roots(size, budget,
                                                                                                     case["patch"]))
    region = (x * size[0] / 31, y * size[1] / 23, (x + 8) * size[0] / 31, (y + 6) * size[1] / 23)
    assert _tokens_in(after, region) >= _tokens_in(before, region)


def _roots(size, budget, patch):
    level = 0
    while -(-size[0] // (patch << level)) * -(-size[1] // (patch << level)) > max(1, budget // 8):
        level += 1
    return level


def _tokens_in(layout, region) -> int:
    x0, y0, x1, y1 = region
    boxes = layout.boxes()
    inside = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    return int(inside.sum())


def test_relevant_region_gets_the_fine_tokens():
    relevance = glmip.gaze((512, 512), (0.25, 0.25), radius=0.08)
    layout = allocate(relevance, budget=256, patch=16)
    distance = np.hypot(layout.cx - 128, layout.cy - 128)
    assert (layout.level[distance < 64] == 0).all()
    assert layout.level[distance > 250].mean() >= 2
    assert layout.level.min() == 0 and len(layout) <= 256


def test_uniform_relevance_gives_a_regular_grid():
    layout = allocate(np.ones((8, 8), np.float32), budget=64, patch=16, image_size=(256, 256))
    assert len(layout) == 64 and set(layout.level.tolist()) == {1}


def test_min_level_and_torch_and_drawing():
    layout = allocate(np.random.default_rng(0).random((10, 10)), budget=100, patch=8, min_level=1,
                      image_size=(200, 120))
    assert layout.level.min() >= 1
    tensors = layout.to_torch()
    assert tensors["centres"].shape == (len(layout), 2) and tensors["level"].dtype == torch.int64
    assert ((tensors["centres"] > 0) & (tensors["centres"] < 1.2)).all()
    picture = layout.draw(np.zeros((120, 200, 3), np.uint8))
    assert picture.shape == (120, 200, 3) and picture.max() > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"budget": 0}, ValueError, "budget >= 1"),
        ({"budget": 2.5}, TypeError, "budget must be an int"),
        ({"patch": 0}, ValueError, "patch >= 1"),
        ({"max_level": 0, "budget": 4}, ValueError, "cannot cover"),
        ({"min_level": 3, "max_level": 1}, ValueError, "below min_level"),
    ],
)
def test_bad_allocation_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        allocate(np.ones((64, 64), np.float32), **kwargs)


def test_bad_relevance():
    with pytest.raises(ValueError, match="NaN"):
        allocate(np.array([[np.nan, 1.0]]))


def test_cli_tokens(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "layout.png"
    result = subprocess.run([sys.executable, "-m", "glmip.cli", "tokens", "--budget", "100", "--gaze", "0.4,0.3",
                             "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens of 16x16 samples (budget 100)" in result.stdout and out.exists()


def test_tokens_match_reference_and_cover_the_layout(ctx):
    from conftest import random_image

    from glmip import reference

    rng = np.random.default_rng(4)
    image = random_image(rng, 150, 211, 3, "uint8")
    layout = allocate(glmip.gaze((211, 150), (0.3, 0.6)), budget=60, patch=8)
    with ctx.pyramid(image, method="box") as p:
        got = p.tokens(layout)
        assert got.shape == (len(layout), 3, 8, 8) and got.dtype == torch.float32
        levels = [p.level(i) for i in range(p.levels)]
        expected = reference.tokens(levels, layout.cx, layout.cy, layout.size, layout.level, 8)
        assert np.abs(got.numpy() - expected).max() * 255 <= 2
        aniso = p.tokens(layout, filter="anisotropic")
        assert np.abs(aniso.numpy() - got.numpy()).max() * 255 <= 2, "square footprints: one tap"
        fractional = p.tokens(layout, lod_bias=0.5)
        expected_half = reference.tokens(levels, layout.cx, layout.cy, layout.size, layout.level + 0.5, 8)
        assert np.abs(fractional.numpy() - expected_half).max() * 255 <= 2


def test_level0_token_reproduces_the_pixels(ctx):
    image = np.random.default_rng(5).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    layout = allocate(np.ones((2, 2), np.float32), budget=4, patch=16, image_size=(32, 32), max_level=0)
    with ctx.pyramid(image, method="box") as p:
        got = p.tokens(layout).numpy()
    assert np.abs(got[0, 0] * 255 - image[:16, :16, 0]).max() <= 0.5
    assert np.abs(got[3, 0] * 255 - image[16:, 16:, 0]).max() <= 0.5


def test_bad_token_arguments(ctx):
    layout = allocate(np.ones((2, 2), np.float32), budget=4, patch=4, image_size=(8, 8))
    with ctx.pyramid(np.zeros((8, 8, 1), np.uint8)) as p:
        with pytest.raises(ValueError, match="'trilinear' or 'anisotropic'"):
            p.tokens(layout, filter="nearest")
        with pytest.raises(ValueError, match="patch must be"):
            p.tokens(layout, patch=0)
