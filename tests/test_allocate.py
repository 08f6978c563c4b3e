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
    assert tensors["centres"].shape == (len(layout), 2) and tensors["level"].dtype == torch.float32
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


# -- allocate_batch: the vectorised greedy -----------------------------------------------------------------------
def adversarial_relevance(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 40, 2))
    if kind == "random":
        return rng.random(shape).astype(np.float32) ** 3
    if kind == "binary":
        return (rng.random(shape) > 0.7).astype(np.float32)
    if kind == "peak":
        r = np.zeros(shape, np.float32)
        r[rng.integers(shape[0]), rng.integers(shape[1])] = 1.0
        return r
    if kind == "levels":  # few distinct values: many exact ties
        return rng.integers(0, 3, shape).astype(np.float32) / 2
    return np.full(shape, 0.5, np.float32)  # constant


def _same_layout(a, b) -> bool:
    same = len(a) == len(b) and all((getattr(a, k) == getattr(b, k)).all() for k in ("cx", "cy", "size", "level"))
    return same and ((a.relevant is None and b.relevant is None) or (a.relevant == b.relevant).all())


batch_cases = st.fixed_dictionaries({
    "width": st.integers(1, 260), "height": st.integers(1, 260), "budget": st.integers(1, 300),
    "patch": st.sampled_from([4, 8, 16]), "min_level": st.integers(0, 1), "seed": st.integers(0, 2**16),
    "kind": st.sampled_from(["random", "binary", "peak", "levels", "constant"]),
    "classes": st.one_of(st.none(), st.tuples(st.integers(0, 30), st.integers(1, 200), st.integers(0, 20),
                                              st.integers(1, 60), st.floats(0.0, 1.0))),
})


@settings(max_examples=60, deadline=None)
@given(case=batch_cases)
def test_batch_is_the_reference_greedy_exactly(case):
    """allocate (through allocate_batch) gives the heap greedy's layout, token for token, with and without classes."""
    from glmip import reference

    relevance = adversarial_relevance(case["kind"], case["seed"])
    size = (case["width"], case["height"])
    classes = None
    if case["classes"] is not None:
        r0, r1, b0, b1, threshold = case["classes"]
        classes = glmip.ClassBudgets((r0, r0 + r1), (b0, b0 + b1), threshold)
        if r0 + b0 > case["budget"]:
            with pytest.raises(ValueError, match="below the class minimums"):
                allocate(relevance, case["budget"], case["patch"], image_size=size, classes=classes)
            return
    pyramid = glmip.relevance_pyramid(relevance, case["patch"] << case["min_level"], size)
    try:
        expected = reference.allocate_greedy(pyramid, case["budget"], case["patch"], case["min_level"], classes=classes)
    except ValueError:
        with pytest.raises(ValueError, match="cannot cover"):
            allocate(pyramid, case["budget"], case["patch"], case["min_level"], classes=classes)
        return
    got = allocate(pyramid, case["budget"], case["patch"], case["min_level"], classes=classes)
    assert _same_layout(got, expected)
    coverage = got.coverage()
    assert coverage.min() == 1 and coverage.max() == 1 and len(got) <= case["budget"]
    if classes is not None:
        relevant = int(got.relevant.sum())
        assert relevant <= classes.relevant[1] and len(got) - relevant <= classes.background[1]


def test_batch_equals_one_image_at_a_time_and_takes_pyramids():
    rng = np.random.default_rng(3)
    maps = [rng.random((17, 29)).astype(np.float32) ** 2, glmip.gaze((300, 200), (0.7, 0.2)),
            np.zeros((5, 5), np.float32)]
    sizes = [(333, 101), None, (64, 640)]
    singles = [allocate(m, 100, 8, image_size=s) for m, s in zip(maps, sizes, strict=True)]
    batch = glmip.allocate_batch(maps, 100, 8, image_sizes=sizes)
    pyramids = [glmip.relevance_pyramid(m, 8, s) for m, s in zip(maps, sizes, strict=True)]
    from_pyramids = glmip.allocate_batch(pyramids, 100, 8)
    for single, a, b in zip(singles, batch, from_pyramids, strict=True):
        assert _same_layout(single, a) and _same_layout(single, b)
    assert glmip.allocate_batch([], 100) == []


def test_matches_the_old_greedy_where_no_tie_and_no_floor_matter():
    """Where over half the map is zero (floor 0) and the budget runs out among distinct positive masses,
    the layout is the pre-vectorisation greedy's (mass x area, insertion-order ties) exactly."""
    from glmip import reference

    for seed in range(6):
        relevance = np.zeros((32, 32), np.float32)
        relevance[:, :12] = np.random.default_rng(seed).random((32, 12)).astype(np.float32) + 0.01
        pyramid = glmip.relevance_pyramid(relevance, 16, (512, 512))
        old = reference.allocate_greedy(pyramid, 128, 16, contrast=False, ties="insertion")
        assert _same_layout(allocate(pyramid, 128, 16), old)


def test_ties_spread_instead_of_filling_the_top_left():
    """A flat map whose next level does not fit: the level-0 tokens spread over all four quadrants."""
    layout = allocate(np.zeros((8, 8), np.float32), budget=100, patch=16, image_size=(256, 256))
    fine = layout.level == layout.level.min()
    assert 0 < fine.sum() < len(layout)
    quadrants = {(int(x >= 128), int(y >= 128)) for x, y in zip(layout.cx[fine], layout.cy[fine], strict=True)}
    assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert abs(layout.cx[fine].mean() - 128) < 48 and abs(layout.cy[fine].mean() - 128) < 48


def test_spread_map_concentrates_tokens_on_its_peaks():
    """A smooth map over a broad range (0.5 background, three peaks to 1): the old mass x area rule gives
    the uniform grid (a coarse cell outranks any cell of a quarter its area unless that is 4x as relevant);
    subtracting the median floor puts the finest tokens on the peaks."""
    from glmip import reference

    y, x = np.mgrid[:256, :256] / 256
    peaks = [(0.2, 0.3), (0.7, 0.6), (0.4, 0.85)]
    bumps = sum(np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 0.05**2)) for px, py in peaks)
    relevance = (0.5 + 0.5 * bumps / bumps.max()).astype(np.float32)
    pyramid = glmip.relevance_pyramid(relevance, 16, (1024, 1024))
    old = reference.allocate_greedy(pyramid, 256, 16, contrast=False, ties="insertion")
    assert len(set(old.level.tolist())) == 1, "the old rule: one uniform grid"
    layout = allocate(relevance, 256, 16, image_size=(1024, 1024))
    for px, py in peaks:
        near = np.hypot(layout.cx - px * 1024, layout.cy - py * 1024) < 40
        assert near.any() and layout.level[near].max() <= 1
    far = np.min([np.hypot(layout.cx - px * 1024, layout.cy - py * 1024) for px, py in peaks], axis=0) > 300
    assert layout.level[far].min() >= 3
    assert layout.coverage().min() == 1 and layout.coverage().max() == 1 and len(layout) <= 256


def test_bundled_image_saliency_concentrates(ctx):
    """On the bundled image's saliency, tokens over its top decile are finer than elsewhere, by more
    than the old mass x area rule made them."""
    from glmip import reference

    with ctx.pyramid(glmip.DEFAULT_IMAGE) as p:
        relevance = glmip.saliency(p)
        size = p.sizes[0]

    def gap(layout) -> float:
        u = np.clip((layout.cx / size[0] * relevance.shape[1]).astype(int), 0, relevance.shape[1] - 1)
        v = np.clip((layout.cy / size[1] * relevance.shape[0]).astype(int), 0, relevance.shape[0] - 1)
        salient = relevance[v, u] >= np.quantile(relevance, 0.9)
        return float(layout.level[~salient].mean() - layout.level[salient].mean())

    layout = allocate(relevance, 128, 16, image_size=size)
    old = reference.allocate_greedy(glmip.relevance_pyramid(relevance, 16, size), 128, 16, contrast=False,
                                    ties="insertion")
    assert gap(layout) >= max(0.75, gap(old))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (([np.ones((4, 4))],), {"image_sizes": [(8, 8), (8, 8)]}, ValueError, "image_sizes has 2 entries for 1"),
        (([np.ones((4, 4))],), {"image_sizes": [(0, 0)]}, ValueError, r"two positive ints .* got \(0, 0\)"),
        (([np.ones((4, 4))],), {"image_sizes": [(8.5, 8)]}, ValueError, r"two positive ints .* got \(8.5, 8\)"),
        (([np.array([[np.nan, 1.0]])],), {}, ValueError, "NaN"),
        (([np.ones((4, 4))], 50), {"classes": glmip.ClassBudgets((40, 100), (16, 64))}, ValueError,
         "below the class minimums"),
        ((np.ones((4, 4)),), {}, TypeError, "list of relevance maps"),
        (([np.ones((4, 4))],), {"max_level": 1.5}, TypeError, "max_level must be an int"),
    ],
)
def test_bad_batch_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        glmip.allocate_batch(*args, **kwargs)
