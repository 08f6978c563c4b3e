"""The detail pyramid (GPU against its numpy reference) and detail-aware allocation (against the heap greedy).

Tolerance of the GPU detail pyramid against `reference.detail_pyramid` over the same stored levels: per cell
|gpu - reference| <= 1e-5 x reference + C x cell_area x (8 M eps + 4 eps^2), where M is the largest |value|
(1 for unorm formats) and eps bounds the error of a value the shader differences: a few float32 ulps of the
bilinear interpolation (2^-20 M) plus the device's error in what a texel fetch returns (0 for unorm and
float formats; 1.5e-3 for sRGB: llvmpipe decodes sRGB with an approximation that is off by up to 1.2e-3,
under a third of an 8-bit step). Each texel's squared difference d^2 (|d| <= 2 M) is then off by at most
2 |d| 2 eps + (2 eps)^2 per channel, times its area, and a cell's texel areas add up to its own; the
1e-5 relative part is float32 summation over the cell.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image
from hypothesis import example, given, settings
from hypothesis import strategies as st

import glmip
from glmip import reference
from glmip.detail import DetailPyramid, detail_pyramid, grid_chain

SRGB_FETCH_ERROR = 1.5e-3


def assert_matches_reference(got: DetailPyramid, levels: list[np.ndarray], patch: int, min_level: int,
                             srgb: bool) -> None:
    expected = reference.detail_pyramid(levels, patch, min_level, srgb)
    channels = levels[0].shape[2]
    magnitude = 1.0 if levels[0].dtype != np.float32 else max(1.0, float(np.abs(levels[0]).max()))
    eps = (SRGB_FETCH_ERROR if srgb else 0.0) + 2.0**-20 * magnitude
    assert len(got.levels) == len(expected)
    for k, (g, e) in enumerate(zip(got.levels, expected, strict=True)):
        assert g.shape == e.shape and g.dtype == np.float32
        cell_area = float(patch << (min_level + k)) ** 2
        bound = 1e-5 * e + channels * cell_area * (8 * magnitude * eps + 4 * eps**2)
        worst = float((np.abs(g - e) - bound).max())
        assert worst <= 0, f"level {k}: off by {float(np.abs(g - e).max())} (bound {float(bound.max())})"


CASES = [  # (height, width, channels, dtype, method, srgb, patch, min_level)
    (150, 211, 3, "uint8", "box", False, 8, 0),
    (64, 64, 1, "uint8", "hardware", False, 4, 1),
    (97, 33, 4, "uint8", "hardware", True, 4, 0),
    (50, 70, 2, "float32", "lanczos", False, 2, 0),
    (37, 129, 3, "uint16", "box", False, 16, 0),
    (1, 300, 3, "uint8", "box", False, 4, 0),
    (17, 1, 1, "uint8", "hardware", False, 1, 0),
    (1, 1, 3, "uint8", "hardware", False, 16, 0),
]


@pytest.mark.parametrize(("height", "width", "channels", "dtype", "method", "srgb", "patch", "min_level"), CASES)
def test_gpu_matches_reference_on_random_and_odd_sizes(ctx, height, width, channels, dtype, method, srgb, patch,
                                                       min_level):
    rng = np.random.default_rng(height * 1000 + width)
    image = random_image(rng, height, width, channels, dtype)
    with ctx.pyramid(image, method=method, srgb=srgb) as pyramid:
        got = detail_pyramid(pyramid, patch, min_level)
        levels = [pyramid.level(i) for i in range(pyramid.levels)]
    assert got.image_size == (width, height) and (got.patch, got.min_level) == (patch, min_level)
    assert [lv.shape for lv in got.levels] == [(h, w) for w, h in grid_chain((width, height), patch << min_level)]
    assert_matches_reference(got, levels, patch, min_level, srgb)


def adversarial(kind: str, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    if kind == "checker":  # all energy in the finest band
        return (((x + y) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    if kind == "edge":  # one step, off the power-of-two grid
        return np.where(x < width // 3 + 1, 255, 0).astype(np.uint8)[..., None].repeat(3, 2)
    if kind == "extremes":  # float32 far outside [0, 1]
        return (np.where((x // 5 + y // 3) % 2 == 0, 1e3, -1e3)).astype(np.float32)[..., None]
    if kind == "impulse":
        image = np.zeros((height, width, 1), np.uint8)
        image[height // 2, width // 2] = 255
        return image
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["checker", "edge", "extremes", "impulse"])
@pytest.mark.parametrize(("height", "width"), [(64, 64), (45, 77)])
def test_gpu_matches_reference_on_adversarial_images(ctx, kind, height, width):
    image = adversarial(kind, height, width)
    with ctx.pyramid(image, method="box") as pyramid:
        got = detail_pyramid(pyramid, 4)
        levels = [pyramid.level(i) for i in range(pyramid.levels)]
    assert_matches_reference(got, levels, 4, 0, False)
    assert float(got.levels[0].sum()) > 0


def test_convention_sum_of_a_level_is_image_area_times_band_mse(ctx):
    """Summed over a level's cells, the energy is W x H x the mean squared error (summed over channels) of
    level L against level L + 1 upsampled bilinearly at its texel centres: computed here through the GPU's
    own trilinear sampler at those centres, not through the reference."""
    image = random_image(np.random.default_rng(9), 96, 128, 3, "uint8")
    with ctx.pyramid(image, method="box") as pyramid:
        got = detail_pyramid(pyramid, 8)
        for k in range(3):
            w, h = pyramid.sizes[k]
            xs, ys = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
            uv = np.stack([xs.ravel(), ys.ravel()], 1)
            fine = np.asarray(pyramid.sample(uv, float(k), filter="nearest"), np.float64)
            coarse = np.asarray(pyramid.sample(uv, float(k + 1)), np.float64)
            band = ((fine - coarse) ** 2).sum(1).mean() * 128 * 96
            # the sampler's bilinear weights are 8-bit fixed point on most hardware: a loose tolerance
            assert float(got.levels[k].sum()) == pytest.approx(band, rel=2e-2)


def test_flat_regions_hold_no_detail_and_a_constant_image_none_at_all(ctx):
    image = np.full((64, 96, 3), 77, np.uint8)
    image[:, 48:] = random_image(np.random.default_rng(1), 64, 48, 3, "uint8")
    with ctx.pyramid(np.full((40, 50, 3), 200, np.uint8), method="box") as flat, \
            ctx.pyramid(image, method="box") as half:
        assert all(float(np.abs(level).max()) == 0.0 for level in detail_pyramid(flat, 4).levels)
        level0 = detail_pyramid(half, 8).levels[0]
    assert (level0[:, :5] == 0).all() and (level0[:, 7:] > 0).all()


def test_a_batch_equals_each_image_alone_bit_for_bit(ctx):
    rng = np.random.default_rng(2)
    sizes = [(31, 17), (40, 24), (31, 17), (9, 60)]
    images = [random_image(rng, h, w, 3, "uint8") for w, h in sizes]
    with ctx.pyramids(images, method="box") as batch:
        together = detail_pyramid(batch, 4)
        assert len(together) == len(images)
        for b in range(len(images)):
            alone = detail_pyramid(batch[b], 4)
            assert together[b].image_size == sizes[b]
            assert all(np.array_equal(a, c) for a, c in zip(alone.levels, together[b].levels, strict=True))


def test_bad_detail_arguments(ctx):
    with ctx.pyramid(np.zeros((8, 8, 1), np.uint8)) as pyramid:
        with pytest.raises(ValueError, match="patch must be"):
            detail_pyramid(pyramid, 0)
        with pytest.raises(ValueError, match=r"min_level must be an int in 0..30, got -1"):
            detail_pyramid(pyramid, 4, -1)
        with pytest.raises(TypeError, match=r"min_level must be an int in 0..30, got 1.5"):
            detail_pyramid(pyramid, 4, 1.5)
        with pytest.raises(TypeError, match="pyramid must be a glmip.Pyramid"):
            detail_pyramid(np.zeros((8, 8)), 4)
    with pytest.raises(glmip.ClosedError):
        detail_pyramid(pyramid, 4)


# -- allocation -------------------------------------------------------------------------------------------------
def random_detail(rng: np.random.Generator, size: tuple[int, int], patch: int, min_level: int,
                  kind: str) -> DetailPyramid:
    chain = grid_chain(size, patch << min_level)
    if kind == "sparse":  # many exact zeros: ties everywhere
        levels = [(rng.random((h, w)) ** 4 * (rng.random((h, w)) > 0.6)) for w, h in chain]
    elif kind == "levels":  # few distinct values
        levels = [rng.integers(0, 3, (h, w)).astype(np.float64) for w, h in chain]
    elif kind == "zero":
        levels = [np.zeros((h, w)) for w, h in chain]
    else:
        levels = [rng.random((h, w)) * 4.0 ** -k for k, (w, h) in enumerate(chain)]
    return DetailPyramid(tuple(level.astype(np.float32) for level in levels), patch, min_level, size)


detail_cases = st.fixed_dictionaries({
    "width": st.integers(1, 260), "height": st.integers(1, 260), "budget": st.integers(1, 300),
    "patch": st.sampled_from([4, 8, 16]), "min_level": st.integers(0, 1), "seed": st.integers(0, 2**16),
    "kind": st.sampled_from(["random", "sparse", "levels", "zero"]),
    "relevance": st.sampled_from(["uniform", "random", "gaze"]),
    "classes": st.one_of(st.none(), st.tuples(st.integers(0, 30), st.integers(1, 200), st.integers(0, 20),
                                              st.integers(1, 60), st.floats(0.0, 1.0))),
})


def relevance_of(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return np.ones((1, 1), np.float32)
    if kind == "gaze":
        return glmip.gaze((64, 48), (float(rng.random()), float(rng.random())), 0.1)
    return rng.random(tuple(rng.integers(1, 40, 2))).astype(np.float32) ** 3


def _same_layout(a, b) -> bool:
    same = len(a) == len(b) and all((getattr(a, k) == getattr(b, k)).all() for k in ("cx", "cy", "size", "level"))
    return same and ((a.relevant is None and b.relevant is None) or (a.relevant == b.relevant).all())


@settings(max_examples=60, deadline=None)
@given(case=detail_cases)
def test_detail_allocation_is_the_reference_greedy_and_keeps_the_guarantees(case):
    """allocate(detail=...) gives the heap greedy's layout token for token; coverage exact; budget and class
    limits kept."""
    rng = np.random.default_rng(case["seed"])
    size, patch, min_level = (case["width"], case["height"]), case["patch"], case["min_level"]
    relevance = relevance_of(case["relevance"], rng)
    detail = random_detail(rng, size, patch, min_level, case["kind"])
    classes = None
    if case["classes"] is not None:
        r0, r1, b0, b1, threshold = case["classes"]
        if r0 + b0 > case["budget"]:
            return
        classes = glmip.ClassBudgets((r0, r0 + r1), (b0, b0 + b1), threshold)
    pyramid = glmip.relevance_pyramid(relevance, patch << min_level, size)
    try:
        expected = reference.allocate_greedy(pyramid, case["budget"], patch, min_level, classes=classes,
                                             detail=detail)
    except ValueError:
        with pytest.raises(ValueError, match="cannot cover"):
            glmip.allocate(pyramid, case["budget"], patch, min_level, classes=classes, detail=detail)
        return
    got = glmip.allocate(pyramid, case["budget"], patch, min_level, classes=classes, detail=detail)
    assert _same_layout(got, expected)
    coverage = got.coverage()
    assert coverage.min() == 1 and coverage.max() == 1 and len(got) <= case["budget"]
    assert (got.level >= min_level).all()
    if classes is not None:
        relevant = int(got.relevant.sum())
        assert relevant <= classes.relevant[1] and len(got) - relevant <= classes.background[1]


def _tokens_in(layout, region) -> int:
    x0, y0, x1, y1 = region
    boxes = layout.boxes()
    inside = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    return int(inside.sum())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), budget=st.integers(64, 300), patch=st.sampled_from([4, 8, 16]),
       corner=st.tuples(st.integers(0, 15), st.integers(0, 22)), kind=st.sampled_from(["random", "sparse", "levels"]))
@example(seed=13, budget=64, patch=4, corner=(11, 7), kind="levels")
def test_detail_allocation_is_monotone_in_relevance(seed, budget, patch, corner, kind):
    """With the detail fixed, raising relevance in a region never leaves it with fewer tokens. The example:
    scoring a cell by its own gain capped by its parent's left the region 3 tokens of 7 here (the boost lifted
    an ancestor's cap over fine cells outside the region); scoring by the best gain below does not."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(64, 300)), int(rng.integers(64, 300)))
    relevance = rng.random((23, 31)).astype(np.float32) ** 3
    detail = random_detail(rng, size, patch, 0, kind)
    boosted = relevance.copy()
    y, x = corner
    boosted[y:y + 6, x:x + 8] = 1.0
    level = 0
    while -(-size[0] // (patch << level)) * -(-size[1] // (patch << level)) > max(1, budget // 8):
        level += 1
    before = glmip.allocate(relevance, budget, patch, image_size=size, max_level=level, detail=detail)
    after = glmip.allocate(boosted, budget, patch, image_size=size, max_level=level, detail=detail)
    region = (x * size[0] / 31, y * size[1] / 23, (x + 8) * size[0] / 31, (y + 6) * size[1] / 23)
    assert _tokens_in(after, region) >= _tokens_in(before, region)


def textured_left_flat_right(height: int = 256, width: int = 512) -> np.ndarray:
    image = np.full((height, width, 3), 90, np.uint8)
    image[:, :width // 2] = random_image(np.random.default_rng(3), height, width // 2, 3, "uint8")
    return image


def test_uniform_relevance_and_detail_spend_the_budget_on_texture(ctx):
    """Uniform relevance + detail: the content quadtree, every fine token on the textured half and the
    flat half left at the roots."""
    with ctx.pyramid(textured_left_flat_right(), method="box") as pyramid:
        detail = detail_pyramid(pyramid, 16)
    layout = glmip.allocate(np.ones((1, 1), np.float32), 128, 16, image_size=(512, 256), detail=detail)
    flat = layout.cx > 256
    assert layout.level[flat].min() == layout.level.max() and layout.level[~flat].mean() < layout.level[flat].min()
    assert layout.coverage().min() == 1 and layout.coverage().max() == 1 and len(layout) <= 128


def test_a_gaze_with_detail_leaves_flat_gazed_regions_coarse(ctx):
    """A gaze on the boundary between a flat and a textured half: the relevance rule splits both sides
    alike; with detail the flat side near the gaze stays coarser than the textured side."""
    relevance = glmip.gaze((512, 256), (0.5, 0.5), 0.15)
    with ctx.pyramid(textured_left_flat_right(), method="box") as pyramid:
        detail = detail_pyramid(pyramid, 16)
    plain = glmip.allocate(relevance, 128, 16, image_size=(512, 256))
    weighted = glmip.allocate(relevance, 128, 16, image_size=(512, 256), detail=detail)
    near = (np.abs(weighted.cx - 256) < 128)
    near_plain = (np.abs(plain.cx - 256) < 128)
    assert weighted.level[near & (weighted.cx > 256)].mean() > weighted.level[near & (weighted.cx < 256)].mean()
    assert _tokens_in(weighted, (0, 0, 256, 256)) > _tokens_in(plain, (0, 0, 256, 256))
    assert plain.level[near_plain & (plain.cx > 256)].mean() == pytest.approx(
        plain.level[near_plain & (plain.cx < 256)].mean(), abs=0.5)


def _detail(size, patch=8, min_level=0, value=1.0):
    chain = grid_chain(size, patch << min_level)
    return DetailPyramid(tuple(np.full((h, w), value, np.float32) for w, h in chain), patch, min_level, size)


def _with_level(detail: DetailPyramid, k: int, level: np.ndarray) -> DetailPyramid:
    levels = list(detail.levels)
    levels[k] = level
    return DetailPyramid(tuple(levels), detail.patch, detail.min_level, detail.image_size)


@pytest.mark.parametrize(
    ("detail", "error", "match"),
    [
        (_detail((64, 48)), ValueError, r"built for patch 8, min_level 0 over a 64x48 image; .* over 100x60"),
        (_detail((100, 60), patch=4), ValueError, "built for patch 4"),
        (_detail((100, 60), min_level=1), ValueError, "min_level 1"),
        (_with_level(_detail((100, 60)), 1, np.ones((3, 3), np.float32)), ValueError, "level shapes"),
        (_with_level(_detail((100, 60)), 0, np.where(np.eye(8, 13) > 0, np.nan, 1).astype(np.float32)), ValueError,
         r"level 0 holds nan at cell \(0, 0\)"),
        (_with_level(_detail((100, 60)), 2, np.full((2, 4), -0.5, np.float32)), ValueError,
         r"level 2 holds -0.5 at cell \(0, 0\); detail energies must be finite and >= 0"),
        (np.ones((8, 13), np.float32), TypeError, "must be a glmip.detail.DetailPyramid"),
    ],
)
def test_bad_detail_is_refused_before_anything_is_allocated(monkeypatch, detail, error, match):
    import sys

    allocate_module = sys.modules["glmip.allocate"]  # `glmip.allocate` the attribute is the function

    def refuse(*args, **kwargs):
        raise AssertionError("a relevance pyramid was built before the detail pyramid was checked")

    monkeypatch.setattr(allocate_module, "build_relevance_pyramid", refuse)
    with pytest.raises(error, match=match):
        glmip.allocate(np.ones((6, 10), np.float32), 64, 8, image_size=(100, 60), detail=detail)


def test_bad_detail_lists():
    with pytest.raises(ValueError, match="detail has 1 pyramids for 2 relevance maps"):
        glmip.allocate_batch([np.ones((2, 2))] * 2, 64, 8, image_sizes=[(64, 48)] * 2, detail=[_detail((64, 48))])
    with pytest.raises(TypeError, match="detail must be a list"):
        glmip.allocate_batch([np.ones((2, 2))], 64, 8, image_sizes=[(64, 48)], detail=_detail((64, 48)))


def test_tokenize_with_the_detail_criterion_equals_allocate_then_tokens(ctx):
    rng = np.random.default_rng(6)
    images = [random_image(rng, 123, 301, 3, "uint8"), textured_left_flat_right(96, 160),
              random_image(rng, 123, 301, 3, "uint8")]
    maps = [glmip.gaze((301, 123), (0.3, 0.6)), None, None]
    batch = glmip.tokenize(images, [m if m is not None else np.ones((1, 1), np.float32) for m in maps], budget=48,
                           patch=8, context=ctx, criterion="detail")
    for b, (image, relevance) in enumerate(zip(images, maps, strict=True)):
        with ctx.pyramid(image) as pyramid:
            size = (pyramid.width, pyramid.height)
            layout = glmip.allocate(np.ones((1, 1), np.float32) if relevance is None else relevance, 48, 8,
                                    image_size=size, detail=detail_pyramid(pyramid, 8))
            tokens, got = batch[b]
            assert _same_layout(got, layout)
            assert torch.equal(tokens, pyramid.tokens(layout))
    uniform = glmip.tokenize(images[1:2], None, budget=48, patch=8, context=ctx, criterion="detail")
    assert _same_layout(uniform.layouts[0], batch.layouts[1])
    with pytest.raises(ValueError, match="unknown criterion 'entropy'; choose one of 'relevance', 'detail'"):
        glmip.tokenize(images, None, budget=48, patch=8, context=ctx, criterion="entropy")


def test_cli_tokens_detail(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "layout.png"
    result = subprocess.run([sys.executable, "-m", "glmip.cli", "tokens", "--budget", "64", "--detail", "-o",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens of 16x16 samples (budget 64), split by detail with uniform relevance" in result.stdout
    assert out.exists()
