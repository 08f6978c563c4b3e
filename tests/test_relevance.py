"""Relevance sources and their max/mean pyramid: GPU against reference, class budgets, queries."""

from __future__ import annotations

import functools
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip import reference
from glmip.allocate import ClassBudgets, allocate
from glmip.query import ClipScorer, query_relevance, sliding_windows
from glmip.relevance import relevance_pyramid, saliency

# Tolerance of the GPU pyramid's means (relevance in [0, 1]): float32 sums in another order, and
# cell edges mapped onto the relevance map in float32 (an overlap weight off by ~1e-6 texel).
MEAN_RTOL, MEAN_ATOL = 1e-5, 2e-5


@settings(max_examples=40, deadline=None)
@given(map_h=st.integers(1, 40), map_w=st.integers(1, 40), width=st.integers(1, 300), height=st.integers(1, 300),
       cell=st.sampled_from([1, 3, 8, 16, 32]), seed=st.integers(0, 2**16))
def test_relevance_pyramid_gpu_matches_reference(session_context, map_h, map_w, width, height, cell, seed):
    relevance = np.random.default_rng(seed).random((map_h, map_w)).astype(np.float32)
    gpu = relevance_pyramid(relevance, cell, (width, height), context=session_context)
    ref = relevance_pyramid(relevance, cell, (width, height))
    assert len(gpu.levels) == len(ref.levels)
    assert gpu.levels[-1].shape[:2] == (1, 1)
    assert gpu.grid_size == (-(-width // cell), -(-height // cell))
    for ours, theirs in zip(gpu.levels, ref.levels, strict=True):
        np.testing.assert_allclose(ours[..., 0], theirs[..., 0], rtol=MEAN_RTOL, atol=MEAN_ATOL)
        np.testing.assert_array_equal(ours[..., 1], theirs[..., 1])  # max: one of the map's own values
        np.testing.assert_array_equal(ours[..., 2], theirs[..., 2])  # areas: whole pixel counts
    mean, peak, area = gpu.texel(len(gpu.levels) - 1, 0, 0)
    assert area == width * height
    assert peak == relevance.max()
    assert mean == pytest.approx(float(relevance.mean()), rel=1e-4)  # the whole map stretched over the image


@functools.cache
def overlaps(p0: int, p1: int, n_map: int, n_pixels: int) -> list[tuple[int, Fraction]]:
    """The map texels that pixels [p0, p1) of an `n_pixels`-wide image cover when an `n_map`-texel map is
    stretched over it, with the exact length of each overlap (in map texels)."""
    lo, hi = Fraction(p0 * n_map, n_pixels), Fraction(p1 * n_map, n_pixels)
    return [(m, min(hi, m + 1) - max(lo, Fraction(m))) for m in range(n_map) if m < hi and m + 1 > lo]


def brute_force_texel(relevance: np.ndarray, cell: int, size: tuple[int, int], level: int, x: int, y: int
                      ) -> tuple[float, float, int]:
    """(mean, max, area) of texel (x, y) of `level` by the definition, pixel by pixel: the block is image
    pixels [x cell 2^level, (x + 1) cell 2^level) cut at the image's edge; the map is stretched over the
    image, so pixel p sees map span [p mw / W, (p + 1) mw / W); the mean is the mean over the block's pixels
    of each pixel's area-weighted map mean; the max is over the map texels the block's span touches."""
    width, height = size
    map_h, map_w = relevance.shape
    side = cell << level
    xs = range(x * side, min((x + 1) * side, width))
    ys = range(y * side, min((y + 1) * side, height))
    total = 0.0
    for py in ys:
        rows = overlaps(py, py + 1, map_h, height)
        for px in xs:
            columns = overlaps(px, px + 1, map_w, width)
            weight = sum(float(a * b) for _, a in rows for _, b in columns)
            total += sum(float(a * b) * relevance[j, i] for j, a in rows for i, b in columns) / weight
    touched = [relevance[j, i] for j, _ in overlaps(ys[0], ys[-1] + 1, map_h, height)
               for i, _ in overlaps(xs[0], xs[-1] + 1, map_w, width)]
    return total / (len(xs) * len(ys)), float(max(touched)), len(xs) * len(ys)


@settings(max_examples=25, deadline=None)
@given(map_h=st.integers(1, 9), map_w=st.integers(1, 9), width=st.integers(1, 40), height=st.integers(1, 40),
       cell=st.sampled_from([1, 3, 8]), seed=st.integers(0, 2**16))
def test_cpu_relevance_pyramid_is_the_definition_of_its_cells(map_h, map_w, width, height, cell, seed):
    """The CPU pyramid (`allocate`'s default without a context), every texel of every level, against the
    cell definition computed pixel by pixel with exact span arithmetic."""
    relevance = np.random.default_rng(seed).random((map_h, map_w)).astype(np.float32)
    pyramid = relevance_pyramid(relevance, cell, (width, height))
    assert pyramid.grid_size == (-(-width // cell), -(-height // cell)) and pyramid.levels[-1].shape[:2] == (1, 1)
    for level, texels in enumerate(pyramid.levels):
        for y in range(texels.shape[0]):
            for x in range(texels.shape[1]):
                mean, peak, area = brute_force_texel(relevance.astype(np.float64), cell, (width, height), level, x, y)
                got = pyramid.texel(level, x, y)
                assert got[0] == pytest.approx(mean, rel=1e-5, abs=1e-6), (level, x, y)
                assert got[1] == np.float32(peak) and got[2] == area, (level, x, y, got, peak, area)


def test_relevance_pyramid_mean_is_exact_on_nested_blocks(ctx):
    """A 64x64 map over a 64x64 image with 4-pixel cells: each level-k texel is the plain block mean."""
    relevance = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    pyramid = relevance_pyramid(relevance, 4, context=ctx)
    for k, level in enumerate(pyramid.levels):
        side = 4 << k
        blocks = relevance.reshape(64 // side, side, 64 // side, side)
        np.testing.assert_allclose(level[..., 0], blocks.mean(axis=(1, 3)), rtol=MEAN_RTOL)
        np.testing.assert_array_equal(level[..., 1], blocks.max(axis=(1, 3)))


def test_allocation_on_the_gpu_pyramid_equals_the_reference(ctx):
    relevance = np.random.default_rng(11).random((50, 70)).astype(np.float32)
    gpu = allocate(relevance, budget=300, image_size=(700, 500), context=ctx)
    cpu = allocate(relevance, budget=300, image_size=(700, 500))
    for name in ("cx", "cy", "size", "level"):
        np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name))
    pyramid = relevance_pyramid(relevance, 16, (700, 500), context=ctx)
    np.testing.assert_array_equal(allocate(pyramid, budget=300).level, gpu.level)
    with pytest.raises(ValueError, match="cell"):
        allocate(pyramid, budget=300, patch=8)


class_cases = st.fixed_dictionaries({
    "width": st.integers(32, 400), "height": st.integers(32, 400), "budget": st.integers(8, 600),
    "rel": st.tuples(st.integers(0, 80), st.integers(1, 400)), "bg": st.tuples(st.integers(0, 40), st.integers(1, 80)),
    "point": st.tuples(st.floats(0, 1), st.floats(0, 1)), "radius": st.floats(0.02, 0.4),
    "threshold": st.floats(0.05, 0.95),
})


@settings(max_examples=60, deadline=None)
@given(case=class_cases)
def test_class_budgets_are_respected(case):
    rel = (min(case["rel"]), max(case["rel"]))
    bg = (min(case["bg"]), max(case["bg"]))
    classes = ClassBudgets(relevant=rel, background=bg, threshold=case["threshold"])
    size = (case["width"], case["height"])
    relevance = glmip.gaze(size, case["point"], case["radius"])
    try:
        layout = allocate(relevance, budget=case["budget"], patch=8, image_size=size, classes=classes)
    except ValueError as error:
        below_minimums = case["budget"] < rel[0] + bg[0]
        assert ("below the class minimums" if below_minimums else "cannot cover") in str(error)
        return
    coverage = layout.coverage()
    assert coverage.min() == 1 and coverage.max() == 1
    relevant = int(layout.relevant.sum())
    background = len(layout) - relevant
    assert len(layout) <= case["budget"]
    assert relevant <= rel[1] and background <= bg[1]
    # Each token's class is the largest relevance under it against the threshold.
    pyramid = relevance_pyramid(relevance, 8, size)
    for x, y, s, level, flag in zip(layout.cx, layout.cy, layout.size, layout.level, layout.relevant, strict=True):
        peak = pyramid.texel(int(level), int((x - s / 2) // s), int((y - s / 2) // s))[1]
        assert flag == (peak >= case["threshold"])


def test_class_minimums_are_met_first():
    """A wide fovea and a tight budget: without classes the fovea takes almost every token; with a
    background minimum of 40 the background gets its 40 first; maxima cap each class."""
    size = (512, 512)
    relevance = glmip.gaze(size, (0.3, 0.3), 0.15)
    plain = allocate(relevance, budget=120, patch=16, image_size=size, classes=ClassBudgets((0, 120), (0, 120), 0.2))
    assert (~plain.relevant).sum() < 20
    floor = allocate(relevance, budget=120, patch=16, image_size=size, classes=ClassBudgets((0, 120), (40, 120), 0.2))
    assert (~floor.relevant).sum() == 40 and len(floor) <= 120
    capped = allocate(relevance, budget=400, patch=16, image_size=size, classes=ClassBudgets((64, 400), (16, 64)))
    assert capped.relevant.sum() >= 64 and (~capped.relevant).sum() == 64


@pytest.mark.parametrize("kwargs, match", [
    ({"relevant": (10, 5)}, "min <= max"), ({"background": (1, 0)}, "max >= 1"), ({"threshold": 1.5}, "threshold"),
    ({"relevant": (1.5, 4)}, "ints"),
])
def test_bad_class_budgets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassBudgets(**kwargs)
    with pytest.raises(TypeError, match="ClassBudgets"):
        allocate(np.ones((4, 4)), classes={"relevant": (1, 2)})


# -- saliency --------------------------------------------------------------------------------
# A trilinear sample is within 2 LSB per channel of its reference, so one centre-surround
# distance is within 2 x sqrt(2^2 + 4^2 + 4^2) = 12 LSB; most are far tighter.
SALIENCY_PAIR_LSB = 12


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_saliency_matches_reference(ctx, channels):
    from conftest import random_image

    rng = np.random.default_rng(channels)
    image = random_image(rng, 61, 83, channels, "uint8")
    image[20:40, 30:50] = 255  # a block that stands out
    with ctx.pyramid(image, method="box") as pyramid:
        levels = [pyramid.level(i) for i in range(pyramid.levels)]
        for centres, deltas in (((1,), (2,)), ((1, 2, 3), (2, 3))):
            ours = saliency(pyramid, (37, 23), centres=centres, deltas=deltas, normalise=False)
            theirs = reference.saliency(levels, (37, 23), centres, deltas)
            error = np.abs(ours - theirs)
            pairs = len(centres) * len(deltas)
            assert error.max() <= pairs * SALIENCY_PAIR_LSB / 255
            assert np.percentile(error, 99) <= pairs * 2 / 255


def test_saliency_finds_the_odd_one_out(ctx):
    image = np.full((128, 192, 3), 90, np.uint8)
    image[40:60, 130:150] = (230, 40, 40)  # a red square on grey
    with ctx.pyramid(image, method="box") as pyramid:
        sal = saliency(pyramid, (96, 64))
    assert sal.min() == 0.0 and sal.max() == 1.0
    y, x = np.unravel_index(np.argmax(sal), sal.shape)
    assert 15 <= y <= 35 and 60 <= x <= 80, (y, x)  # on the square (map at half resolution)
    assert sal[:, :40].max() < 0.05  # far from it, nothing
    flat = np.full((64, 64, 3), 120, np.uint8)
    with ctx.pyramid(flat) as pyramid:
        assert not saliency(pyramid).any()


def test_bad_saliency_arguments(ctx):
    with ctx.pyramid(np.zeros((32, 32), np.uint8)) as pyramid:
        for kwargs in ({"centres": (1, 3)}, {"deltas": ()}, {"deltas": (0,)}, {"size": (0, 4)}):
            with pytest.raises(ValueError):
                saliency(pyramid, **kwargs)


# -- text queries ----------------------------------------------------------------------------
def test_query_scores_are_the_models_scores_of_the_windows(ctx, tiny_clip):
    """Each window's score is the model's cosine similarity on the reference crop of that window."""
    model, tokenizer = tiny_clip
    with ctx.pyramid(glmip.DEFAULT_IMAGE, method="box") as pyramid:
        relevance, windows, scores = query_relevance(pyramid, "a cup of coffee", model, tokenizer,
                                                     return_scores=True)
        levels = [pyramid.level(i) for i in range(pyramid.levels)]
    assert relevance.shape == (50, 75) and relevance.min() == 0.0 and relevance.max() == 1.0
    crops = reference.tokens(levels, windows.cx, windows.cy, windows.size, windows.level, 32)
    scorer = ClipScorer.load(model, tokenizer)
    expected = (scorer.image_features(torch.from_numpy(crops).float()) @ scorer.text_features(["a cup of coffee"]).T)
    np.testing.assert_allclose(scores, expected[:, 0].numpy(), atol=2e-3)  # crops within 2 LSB of the reference
    assert len(windows.cx) == len(sliding_windows((600, 400), (0.5, 0.25), 32).cx)


def test_query_from_a_local_directory_equals_the_object(ctx, tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with ctx.pyramid(glmip.DEFAULT_IMAGE, method="box") as pyramid:
        from_object = query_relevance(pyramid, "red cup", model, tokenizer)
        from_path = query_relevance(pyramid, "red cup", str(tmp_path))
    np.testing.assert_allclose(from_path, from_object, atol=1e-5)
    result = subprocess.run([sys.executable, "-m", "glmip.cli", "tokens", "--budget", "64", "--query", "red cup",
                             "--clip-model", str(tmp_path), "-o", str(tmp_path / "layout.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens of 16x16 samples (budget 64)" in result.stdout and (tmp_path / "layout.png").exists()


class ColourClip(torch.nn.Module):
    """A hand-built CLIP-style model in open_clip's interface: an image's feature is its mean colour
    plus a constant grey component (so the more of a colour a window holds, the closer it points to
    that colour), a text's feature the colour its first word names. Real arithmetic, no learning."""

    COLOURS = {1: (1.0, -0.5, -0.5, 0.0), 2: (-0.5, 1.0, -0.5, 0.0), 3: (-0.5, -0.5, 1.0, 0.0)}

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.image_size = (16, 16)
        self.visual.preprocess_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def encode_image(self, pixels):
        means = pixels.mean(dim=(2, 3))
        return torch.cat([means, torch.full_like(means[:, :1], 0.5)], dim=1)

    def encode_text(self, ids):
        return torch.tensor([self.COLOURS[int(i)] for i in ids[:, 0]])


def colour_tokenizer(texts):
    return torch.tensor([[{"red": 1, "green": 2, "blue": 3}[t.split()[0]]] for t in texts])


def test_query_finds_what_the_text_names(ctx):
    image = np.full((240, 320, 3), 128, np.uint8)
    image[150:200, 40:90] = (220, 30, 30)
    image[30:80, 220:270] = (30, 30, 220)
    with ctx.pyramid(image, method="box") as pyramid:
        red = query_relevance(pyramid, "red square", ColourClip(), colour_tokenizer, scales=(0.25,))
        blue = query_relevance(pyramid, "blue square", ColourClip(), colour_tokenizer, scales=(0.25,))
    for relevance, (y0, y1, x0, x1) in ((red, (150, 200, 40, 90)), (blue, (30, 80, 220, 270))):
        y, x = np.unravel_index(np.argmax(relevance), relevance.shape)
        assert y0 <= (y + 0.5) * 8 <= y1 and x0 <= (x + 0.5) * 8 <= x1, (y, x)


def test_bad_queries(ctx, tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    with ctx.pyramid(np.zeros((64, 64, 3), np.uint8)) as pyramid:
        with pytest.raises(ValueError, match="non-empty"):
            query_relevance(pyramid, " ", model, tokenizer)
        with pytest.raises(ValueError, match="local directory"):
            query_relevance(pyramid, "cup", str(tmp_path / "missing"))
        with pytest.raises(TypeError, match="tokenizer"):
            query_relevance(pyramid, "cup", model)
        with pytest.raises(TypeError, match="open_clip"):
            query_relevance(pyramid, "cup", object())
        with pytest.raises(ValueError, match="scales"):
            query_relevance(pyramid, "cup", model, tokenizer, scales=(1.5,))
