"""A bounded fuzz of glmip's public API with good and bad inputs.

Every call must: raise only ValueError, TypeError or a glmip error (`glmip.errors`), leave
GL_NO_ERROR behind, finish within `CALL_SECONDS` (good sizes are small; oversized ones must be
refused before any work), raise whenever one of its inputs is bad (nothing silently accepted) and
return whenever all are good (nothing refused that should work). Inputs come from per-parameter
pools of (value, is_bad) pairs, so hypothesis explores their combinations and shrinks a failure to
the smallest one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import glmip
from glmip import bridge
from glmip.errors import GlmipError
from glmip.reconstruct import reconstruct

ALLOWED = (ValueError, TypeError, GlmipError)
CALL_SECONDS = 10.0
EXAMPLES = 100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IMAGE = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
NAN = float("nan")
THE_LAYOUT, THE_CONTEXT = object(), object()  # stand-ins for the fixtures in the pools


def pool(good: list, bad: list) -> st.SearchStrategy:
    """(value, is_bad) drawn from the good and bad values of one parameter."""
    return st.sampled_from([(v, False) for v in good] + [(v, True) for v in bad])


SIZES = pool([(1, 1), (7, 3), (33, 20)],
             [(0, 4), (4, -1), (1.5, 2), (10.5, 4), ("8", 8), (NAN, 3), (True, 4), (100000, 100000),
              (200000, 200000), (2**40, 2**40), (4,), 5, "8x8"])
RADII = pool([0.05, 0.5, 3], [0, -1.0, NAN, float("inf"), 1e-30, "0.1", None])
POINTS = pool([(0.5, 0.5), (0.0, 1.0)], [(1.5, 0.5), (NAN, 0.5), "ab", (0.5,), None])
BIASES = pool([0.0, -1.0, 2.5], [NAN, float("inf"), 1e30, "1", None])
PATCHES = pool([1, 4, 16], [0, -2, 1.7, 2**40, 100000, "4", True])
LEVELS = pool([0, 1, 5], [-1, 6, 1.0, "0", 2**70, None])  # the 40x24 pyramid has levels 0..5
LOD_MAPS = pool([np.zeros((2, 2)), np.full((5, 3), 2.5, np.float32)],
                [np.full((2, 2), NAN), np.full((2, 20000), 4.0), np.zeros((0, 3)), np.array([["a"]]), "map", None])
IMAGES = pool([IMAGE, IMAGE[:5, :7, :1].astype(np.uint16) * 257, np.ones((3, 9, 4), np.float32)],
              [IMAGE.astype(np.float64), np.full((4, 4), NAN, np.float32), np.zeros((0, 4, 3), np.uint8),
               np.zeros((4, 4, 5), np.uint8), np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3)),
               "/no/such/image.png", None, torch.empty(3, 4, 4, device="meta")])
METHODS = pool(["hardware", "box", "lanczos"], ["bogus", 3, None])
CELLS = pool([1, 2, 8], [0, 2.5, "2", None, -4])
RELEVANCES = pool([np.ones((4, 4)), np.random.default_rng(1).random((7, 5))],
                  [np.full((4, 4), NAN), np.zeros((0, 4)), "map", None, np.ones((2, 2, 2))])


def uv_pool(n: int) -> st.SearchStrategy:
    rng = np.random.default_rng(n)
    return pool([rng.random((n, 2)), torch.rand(n, 2)],
                [np.full((n, 2), NAN), rng.random((n, 3)), [["a", "b"]] * n, None, "uv",
                 torch.empty(n, 2, device="meta")])


def lod_pool(n: int) -> st.SearchStrategy:
    return pool([0.0, 2.5, np.linspace(0, 4, n)], ["1", NAN, np.zeros(n + 1), 1e9, np.full(n, NAN), ["a"] * n])


def attempt(ctx, call, bad: bool):
    """Run `call`: only allowed errors, fast, no GL error; a bad input refused and a good one accepted (so a
    change that refused everything fails as surely as one that accepted a bad value)."""
    start = time.perf_counter()
    try:
        result = call()
    except ALLOWED as error:
        assert bad, f"a good input was refused: {type(error).__name__}: {error}"
        result = None
    else:
        assert not bad, "a bad input was silently accepted"
    finally:
        elapsed = time.perf_counter() - start
    assert elapsed < CALL_SECONDS, f"the call took {elapsed:.1f} s"
    assert ctx.gl.error == "GL_NO_ERROR"
    return result


@pytest.fixture(scope="module")
def fuzz_pyramid(session_context):
    with session_context.pyramid(IMAGE) as p:
        yield p


@pytest.fixture(scope="module")
def layout():
    return glmip.allocate(np.ones((8, 8)), budget=4, patch=4, image_size=(40, 24))


@FUZZ
@given(size=SIZES, point=POINTS, radius=RADII)
def test_gaze(ctx, size, point, radius):
    attempt(ctx, lambda: glmip.gaze(size[0], point[0], radius[0]), size[1] or point[1] or radius[1])


@FUZZ
@given(size=SIZES)
def test_saliency(ctx, fuzz_pyramid, size):
    attempt(ctx, lambda: glmip.saliency(fuzz_pyramid, size=size[0]), size[1])


@FUZZ
@given(lods=LOD_MAPS, size=SIZES, bias=BIASES)
def test_render(ctx, fuzz_pyramid, lods, size, bias):
    attempt(ctx, lambda: fuzz_pyramid.render(lods[0], size=size[0], lod_bias=bias[0]), lods[1] or size[1] or bias[1])


@FUZZ
@given(data=st.data(), n=st.sampled_from([1, 5, 64]), bias=BIASES,
       filter=pool(["nearest", "trilinear"], ["bogus", 3]))
def test_sample(ctx, fuzz_pyramid, data, n, bias, filter):
    uv, lod = data.draw(uv_pool(n)), data.draw(lod_pool(n))
    attempt(ctx, lambda: fuzz_pyramid.sample(uv[0], lod=lod[0], lod_bias=bias[0], filter=filter[0]),
            uv[1] or lod[1] or bias[1] or filter[1])


@FUZZ
@given(patch=PATCHES, bias=BIASES, which=pool([THE_LAYOUT], [None, "layout", 5]))
def test_tokens(ctx, fuzz_pyramid, layout, patch, bias, which):
    chosen = layout if which[0] is THE_LAYOUT else which[0]
    attempt(ctx, lambda: fuzz_pyramid.tokens(chosen, patch=patch[0], lod_bias=bias[0]),
            patch[1] or bias[1] or which[1])


@FUZZ
@given(level=LEVELS, out=pool(["numpy", "torch"], ["jax", None]))
def test_level(ctx, fuzz_pyramid, level, out):
    attempt(ctx, lambda: fuzz_pyramid.level(level[0], out=out[0]), level[1] or out[1])


@FUZZ
@given(image=IMAGES, method=METHODS)
def test_pyramid(ctx, image, method):
    def build():
        with ctx.pyramid(image[0], method=method[0]) as p:
            return p.levels

    attempt(ctx, build, image[1] or method[1])


@FUZZ
@given(relevance=RELEVANCES, max_level=pool([0.0, 4.0], [NAN, -1.0]), gamma=pool([0.5, 1.0], [0.0, NAN]))
def test_maps(ctx, relevance, max_level, gamma):
    attempt(ctx, lambda: glmip.as_relevance(relevance[0]), relevance[1])
    attempt(ctx, lambda: glmip.lod_map(relevance[0], max_level[0], gamma=gamma[0]),
            relevance[1] or max_level[1] or gamma[1])


@FUZZ
@given(relevance=RELEVANCES, cell=CELLS, size=SIZES, context=pool([THE_CONTEXT, None], ["ctx", 3]))
def test_relevance_pyramid(ctx, relevance, cell, size, context):
    chosen = ctx if context[0] is THE_CONTEXT else context[0]
    attempt(ctx, lambda: glmip.relevance_pyramid(relevance[0], cell[0], image_size=size[0], context=chosen),
            relevance[1] or cell[1] or size[1] or context[1])


@FUZZ
@given(shape=pool([(2, 2), (4,), ()], [(2.5, 2), (-1,), "ab", (100, 100), None, (NAN,)]),
       released=st.booleans())
def test_buffer_to_tensor(ctx, shape, released):
    buffer = ctx.gl.buffer(reserve=64)
    if released:
        buffer.release()
    try:
        attempt(ctx, lambda: bridge.buffer_to_tensor(buffer, shape[0]), shape[1] or released)
    finally:
        buffer.release()


@FUZZ
@given(tensor=pool([torch.rand(3, 4, 1), torch.randint(0, 255, (2, 5, 3), dtype=torch.uint8)],
                   [torch.rand(16385, 1, 1), torch.empty(2, 2, 1, device="meta"), torch.full((2, 2, 1), NAN),
                    torch.zeros(2, 2, 1, dtype=torch.int64), torch.rand(2, 2, 5), np.zeros((2, 2, 1)), None]))
def test_tensor_to_texture(ctx, tensor):
    texture = attempt(ctx, lambda: bridge.tensor_to_texture(ctx, tensor[0]), tensor[1])
    if texture is not None:
        texture.release()


@FUZZ
@given(kind=pool(["good"], ["nan", "shape", "string", "ints"]), size=pool([None, (40, 24), (7, 3)], [
    (0, 4), (1.5, 2), (100000, 100000), "8x8"]))
def test_reconstruct(ctx, fuzz_pyramid, layout, kind, size):
    tokens = fuzz_pyramid.tokens(layout)
    chosen = {"good": tokens, "nan": tokens.clone().fill_(NAN), "shape": tokens[:, :, :2], "string": "tokens",
              "ints": tokens.to(torch.int32)}[kind[0]]
    attempt(ctx, lambda: reconstruct(chosen, layout, size[0]), kind[1] or size[1])


@FUZZ
@given(budget=pool([4, 16], [0, -1, 2.5, "8", None]), size=SIZES, context=pool([THE_CONTEXT, None], ["ctx"]))
def test_allocate(ctx, budget, size, context):
    chosen = ctx if context[0] is THE_CONTEXT else context[0]
    attempt(ctx, lambda: glmip.allocate(np.ones((8, 8)), budget=budget[0], patch=4, image_size=size[0],
                                        context=chosen), budget[1] or size[1] or context[1])


@FUZZ
@given(kind=pool(["good"], ["nan", "shape", "string"]))
def test_lod_patch_embed(ctx, fuzz_pyramid, layout, kind):
    embed = glmip.LodPatchEmbed(patch=4, in_channels=3, dim=8)
    tokens = fuzz_pyramid.tokens(layout, patch=4)
    chosen = {"good": tokens, "nan": tokens.clone().fill_(NAN), "shape": tokens[:, :, :2], "string": "tokens"}[kind[0]]
    attempt(ctx, lambda: embed(chosen, layout), kind[1])
