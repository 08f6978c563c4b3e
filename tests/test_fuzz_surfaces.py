"""A bounded randomised test of the newer public calls (slides, warps, TokenBatch, HIPT regions) with valid and
invalid values of every argument: each call returns a result or raises ValueError, TypeError or a glmip error
(`glmip.errors`), leaves GL_NO_ERROR behind, finishes within `CALL_SECONDS`, and never accepts a bad value.

Inputs come from per-parameter pools of (value, is_bad) pairs, as tests/test_fuzz.py draws them, so hypothesis
explores their combinations and shrinks a failure to the smallest one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import glmip
from glmip.errors import GlmipError
from glmip.slides import Slide, group_by_region, region_ids
from glmip.token_batch import TokenBatch

ALLOWED = (ValueError, TypeError, GlmipError)
CALL_SECONDS = 10.0
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAN, INF = float("nan"), float("inf")
IMAGE = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)  # stored levels 0..2 at tile 64
OWN, FOREIGN, SHORT = object(), object(), object()  # stand-ins for layouts made in the fixtures
META = torch.empty(3, device="meta")
NO_CUDA = not torch.cuda.is_available()


def pool(good: list, bad: list) -> st.SearchStrategy:
    """(value, is_bad) drawn from the good and bad values of one parameter."""
    return st.sampled_from([(v, False) for v in good] + [(v, True) for v in bad])


def attempt(ctx, call, bad: bool, allowed: tuple[type[Exception], ...] = ALLOWED):
    """Run `call`: only allowed errors, fast, no GL error left, and no bad input accepted."""
    start = time.perf_counter()
    try:
        result = call()
    except allowed:
        result = None
    else:
        assert not bad, "a bad input was silently accepted"
    finally:
        elapsed = time.perf_counter() - start
    assert elapsed < CALL_SECONDS, f"the call took {elapsed:.1f} s"
    assert ctx.gl.error == "GL_NO_ERROR"
    return result


BIASES = pool([0.0, -1.0, 2.5], [NAN, INF, 1e30, "1", None])
SIZES = pool([(8, 8), (17, 5)], [(0, 4), (1.5, 2), (100000, 100000), (20000, 20), "8x8", None, (4,)])
PATCHES = pool([4, 8], [0, -2, 1.7, "4", True, 2**40, 100000])


@pytest.fixture(scope="module")
def slide(session_context):
    with Slide(session_context, IMAGE, tile=64) as s:
        yield s


@pytest.fixture(scope="module")
def layouts(slide):
    own = slide.allocate(slide.tissue(), 16, 8)
    foreign = glmip.allocate(np.ones((4, 4)), 8, 8, image_size=(64, 64))
    short = glmip.TokenLayout(own.cx, own.cy[:-1], own.size, own.level, own.patch, own.image_size)
    return {OWN: own, FOREIGN: foreign, SHORT: short}


@pytest.fixture(scope="module")
def batch(session_context):
    with session_context.pyramid(IMAGE[:64, :64], method="box") as p:
        layout = glmip.allocate(glmip.gaze((64, 64), (0.3, 0.6)), 12, 8, image_size=(64, 64))
        return TokenBatch.from_parts([p.tokens(layout)], [layout])


@FUZZ
@given(source=pool([IMAGE[:64, :96]], [None, "/no/such/slide.tif", np.zeros((0, 4, 3), np.uint8), META, 5]),
       tile=pool([64, 128], [0, 65, 1.5, "64", True, 2**40]),
       cache=pool([0, 1 << 20, 2**70], [-1, 1.5, "x", None]), gl_cache=pool([0, 1 << 24], [-5, "x", None]))
def test_slide_construction(ctx, source, tile, cache, gl_cache):
    def build():
        with Slide(ctx, source[0], tile=tile[0], cache_bytes=cache[0], gl_cache_bytes=gl_cache[0]) as s:
            return s.levels

    attempt(ctx, build, source[1] or tile[1] or cache[1] or gl_cache[1])


@FUZZ
@given(level=pool([0, 1, 2], [-1, 3, 1.0, "0", None, 2**70, True]),
       box=pool([None, (0, 0, 10, 10), (2, 3, 9, 12)],
                [(0, 0, 10.5, 10), (5, 5, 5, 5), (0, 0, 1000, 10), "abcd", (0, 0, 10), (-1, 0, 4, 4), 7]))
def test_slide_read(ctx, slide, level, box):
    attempt(ctx, lambda: slide.read(level[0], box[0]), level[1] or box[1])


@FUZZ
@given(data=st.data(), n=st.sampled_from([1, 7, 100]), bias=BIASES,
       filter=pool(["trilinear", "nearest"], ["bogus", "anisotropic_hw", 3, None]),
       anisotropy=pool([1, 16], [0.5, NAN, 17, "16"]))
def test_slide_sample(ctx, slide, data, n, bias, filter, anisotropy):
    rng = np.random.default_rng(n)
    uv = data.draw(pool([rng.random((n, 2)), torch.rand(n, 2)],
                        [np.full((n, 2), NAN), rng.random((n, 3)), [["a", "b"]] * n, None, "uv",
                         torch.empty(n, 2, device="meta")]))
    lod = data.draw(pool([0.0, 2.5, np.linspace(0, 4, n), torch.linspace(0, 4, n)],
                         ["1", NAN, np.zeros(n + 1), 1e9, np.full(n, NAN), ["a"] * n, torch.zeros(n, device="meta")]))
    attempt(ctx, lambda: slide.sample(uv[0], lod[0], lod_bias=bias[0], filter=filter[0], anisotropy=anisotropy[0]),
            uv[1] or lod[1] or bias[1] or filter[1] or anisotropy[1])


@FUZZ
@given(which=pool([OWN], [FOREIGN, SHORT, None, "layout", 5]), patch=pool([None, 4, 8], [0, 1.7, "4", 2**40]),
       bias=BIASES, filter=pool(["trilinear", "anisotropic"], ["nearest", "bogus"]),
       out=pool([None], [META, torch.zeros(1, 3, 8, 8), "out"]))
def test_slide_tokens(ctx, slide, layouts, which, patch, bias, filter, out):
    layout = layouts.get(which[0], which[0])
    attempt(ctx, lambda: slide.tokens(layout, patch[0], filter[0], bias[0], out[0]),
            which[1] or patch[1] or bias[1] or filter[1] or out[1])


@FUZZ
@given(lods=pool([None, np.zeros((2, 2)), np.full((5, 3), 2.5, np.float32)],
                 [np.full((2, 2), NAN), np.zeros((0, 3)), np.array([["a"]]), "map", torch.zeros(2, 2, device="meta")]),
       size=pool([None, (8, 8), (17, 5)], [(0, 4), (1.5, 2), (100000, 100000), (9000, 4), "8x8", (4,)]),
       region=pool([(0, 0, 1, 1), (0.2, 0.1, 0.5, 0.9)], ["abcd", (1, 0, 0, 1), (0, 0, 1), (NAN, 0, 1, 1),
                                                                      None, "0011"]),
       bias=BIASES)
def test_slide_render(ctx, slide, lods, size, region, bias):
    attempt(ctx, lambda: slide.render(lods[0], size=size[0], region=region[0], lod_bias=bias[0]),
            lods[1] or size[1] or region[1] or bias[1])


@FUZZ
@given(relevance=pool([np.ones((4, 4)), np.random.default_rng(1).random((7, 5))],
                      [np.full((4, 4), NAN), np.zeros((0, 4)), "map", None, torch.zeros(4, 4, device="meta")]),
       budget=pool([4, 16], [0, 2**70, 2.5, "8", None]), patch=pool([8, 16], [0, "8", 1.5]),
       min_level=pool([None, 0, 1], [-1, 1.5, "0", 2**70, 200]))
def test_slide_allocate(ctx, slide, relevance, budget, patch, min_level):
    attempt(ctx, lambda: slide.allocate(relevance[0], budget[0], patch[0], min_level[0]),
            relevance[1] or budget[1] or patch[1] or min_level[1])


MATRICES = pool([np.eye(3), np.diag([2.0, 2.0, 1.0]), np.eye(3) * 1e150, np.stack([np.eye(3)] * 2),
                 glmip.tilt_homography((40, 24), (8, 8), 60), torch.eye(3)],
                [np.zeros((3, 3)), np.full((3, 3), NAN), "eye", np.eye(2), [[1, 2, 3], [2, 4, 6], [0, 0, 1]],
                 np.diag([1e300, 1e-300, 1.0]), None, np.zeros((0, 3, 3))])


@FUZZ
@given(matrix=MATRICES, size=SIZES,
       filter=pool(["anisotropic", "trilinear", "nearest", "anisotropic_hw"], ["bogus", None]),
       anisotropy=pool([1, 16], [0, NAN, 17, "16"]), bias=BIASES, border=pool(["clamp", "zero", "mirror"], ["x", None]),
       out=pool([None], [META, torch.zeros(1, 3, 2, 2), np.zeros((1, 3, 8, 8), np.float32)]))
def test_warp(ctx, matrix, size, filter, anisotropy, bias, border, out):
    with ctx.pyramid(IMAGE[:24, :40], method="box") as p:
        attempt(ctx, lambda: p.warp(matrix[0], size[0], filter=filter[0], anisotropy=anisotropy[0], lod_bias=bias[0],
                                    border=border[0], out=out[0]),
                matrix[1] or size[1] or filter[1] or anisotropy[1] or bias[1] or border[1] or out[1])


@FUZZ
@given(tilt=pool([0, 30, 89.5], [90, -1, NAN, "30", None]), zoom=pool([1, 2.5], [0, -1, INF, "1"]),
       size=pool([(8, 8), (17, 5), (100000, 100000)], [(0, 4), (1.5, 2), "8x8", None, (4,)]),
       pan=pool([(0.0, 0.0), (3, -2.5)], [(NAN, 0), (1.0,), "ab", None]))
def test_tilt_homography(ctx, tilt, zoom, size, pan):
    attempt(ctx, lambda: glmip.tilt_homography((40, 24), size[0], tilt[0], zoom[0], pan[0]),
            tilt[1] or zoom[1] or size[1] or pan[1])


@FUZZ
@given(which=pool(["tokens", "levels"], ["numpy", "short", "string", "scalar", None]),
       pad_to=pool([None, 12, 40], [0, 1.5, "x", -1, True]), value=pool([0.0, 1, -2.5, NAN], ["x", None, True]))
def test_token_batch_views(ctx, batch, which, pad_to, value):
    packed = {"tokens": batch.tokens, "levels": batch.levels, "numpy": batch.levels.numpy(),
              "short": batch.levels[:-1], "string": "tokens", "scalar": torch.tensor(1.0), None: None}[which[0]]
    attempt(ctx, lambda: batch.pad(packed, pad_to[0], value[0]), which[1] or pad_to[1] or value[1])
    if which[0] is not None:
        attempt(ctx, lambda: batch.nested(packed), which[1])
    attempt(ctx, lambda: batch.valid(pad_to[0]), pad_to[1])


@FUZZ
@given(device=pool(["cpu", None, "meta", torch.device("cpu")],
                   ["xyz", 1.5, True, [0]] + (["cuda", 0, "cuda:3"] if NO_CUDA else [])),
       dtype=pool([None, torch.float16, torch.bfloat16, torch.float64], [torch.int64, "float16", torch.bool]),
       index=pool([0, -1], [1, -2, "0", 1.5, None]))
def test_token_batch_to_and_index(ctx, batch, device, dtype, index):
    moved = attempt(ctx, lambda: batch.to(device[0], dtype[0]), device[1] or dtype[1])
    if moved is not None:
        assert moved.cu_seqlens.dtype == torch.int32 and moved.levels.dtype == torch.float32
    attempt(ctx, lambda: batch[index[0]], index[1], ALLOWED + (IndexError,))  # a sequence's end, as Python's


@FUZZ
@given(where=pool(["file"], ["missing-folder", "folder", 123, None]),
       extra=pool([None, "ids"], ["short", "string", "scalar"]))
def test_token_batch_files(ctx, batch, tmp_path_factory, where, extra):
    folder = tmp_path_factory.mktemp("fuzz-files")
    path = {"file": folder / "t.pt", "missing-folder": folder / "nope" / "t.pt", "folder": folder}.get(where[0],
                                                                                                    where[0])
    n = batch.tokens.shape[0]
    values = {None: None, "ids": np.arange(n), "short": np.arange(n - 1), "string": "ids",
              "scalar": torch.tensor(3)}[extra[0]]
    tagged = attempt(ctx, lambda: batch if values is None else batch.with_extra(region=values), extra[1])
    if tagged is not None:
        attempt(ctx, lambda: tagged.save(path), where[1])
        if not where[1]:
            loaded = attempt(ctx, lambda: TokenBatch.load(path), False)
            assert torch.equal(loaded.tokens, batch.tokens) and set(loaded.extra) == set(tagged.extra)


@FUZZ
@given(which=pool([OWN], [None, "layout"]), region=pool([1, 64, 4096], [0, -1, 1.5, "64", None, True]),
       tokens=pool(["tensor", "numpy"], ["short", "string", None]))
def test_regions(ctx, slide, layouts, which, region, tokens):
    layout = layouts.get(which[0], which[0])
    attempt(ctx, lambda: region_ids(layout, region[0]), which[1] or region[1])
    n = len(layouts[OWN])
    values = {"tensor": torch.rand(n, 3), "numpy": np.random.default_rng(0).random((n, 3)),
              "short": torch.rand(n - 1, 3), "string": "tokens", None: None}[tokens[0]]
    attempt(ctx, lambda: group_by_region(layout, values, region[0]), which[1] or region[1] or tokens[1])
