"""`PyramidBatch`: a batch's pyramids in array textures, equal to the images' own pyramids; bad batches
refused before anything is allocated; textures freed by `close()`, with the context, or by the
garbage collector."""

from __future__ import annotations

import gc
import resource

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import glmip
from glmip import reference
from glmip.relevance import batch_relevance_pyramids, relevance_pyramid

METHODS = ("hardware", "box", "lanczos")


def images_of(rng: np.random.Generator, sizes: list[tuple[int, int]], channels: int, dtype: str) -> list[np.ndarray]:
    if dtype == "float32":
        return [rng.uniform(-2, 3, (h, w, channels)).astype(np.float32) for w, h in sizes]
    top = 255 if dtype == "uint8" else 65535
    return [rng.integers(0, top + 1, (h, w, channels)).astype(dtype) for w, h in sizes]


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.sampled_from([(1, 1), (1, 9), (13, 1), (16, 16), (17, 33), (40, 24)]), min_size=1, max_size=6),
       method=st.sampled_from(METHODS), channels=st.integers(1, 4),
       dtype=st.sampled_from(["uint8", "uint16", "float32"]), seed=st.integers(0, 2**16))
@example(sizes=[(17, 33), (17, 33), (40, 24)], method="box", channels=3, dtype="uint8", seed=0)
@example(sizes=[(17, 33), (17, 33), (40, 24)], method="lanczos", channels=4, dtype="uint16", seed=1)
def test_every_level_of_every_layer_equals_its_own_pyramid(session_context, sizes, method, channels, dtype, seed):
    """Bit for bit: a layer of a batch array is built by the same filter over the same texels as a
    batch of one; the compute methods also match the numpy reference within 1 LSB (box) / 2 LSB
    (lanczos) for integer formats and 1e-5 relative for float32."""
    ctx = session_context
    images = images_of(np.random.default_rng(seed), sizes, channels, dtype)
    with ctx.pyramids(images, method=method) as batch:
        assert len(batch.arrays) == len(set(sizes)) and batch.image_sizes == sizes
        for b, image in enumerate(images):
            with ctx.pyramid(image, method=method) as alone:
                for level in range(alone.levels):
                    got = batch[b].level(level)
                    np.testing.assert_array_equal(got, alone.level(level))
                    if method != "hardware":
                        expected = reference.pyramid(image, method)[level]
                        if dtype == "float32":
                            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
                        else:
                            lsb = 1 if method == "box" else 2
                            assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= lsb
    assert ctx.gl.error == "GL_NO_ERROR"


def test_batch_level_reads_each_array_once_in_batch_order(ctx):
    rng = np.random.default_rng(2)
    same = images_of(rng, [(21, 11)] * 5, 3, "uint8")
    with ctx.pyramids(np.stack(same)) as batch:
        levels = batch.level(1)
        assert levels.shape == (5, 5, 10, 3)
        for b, image in enumerate(same):
            with ctx.pyramid(image) as alone:
                np.testing.assert_array_equal(levels[b], alone.level(1))
    mixed = images_of(rng, [(21, 11), (8, 8), (21, 11)], 1, "uint16")
    with ctx.pyramids(mixed) as batch:
        levels = batch.level(0, out="torch")
        assert [tuple(t.shape) for t in levels] == [(11, 21, 1), (8, 8, 1), (11, 21, 1)]
        for got, image in zip(levels, mixed, strict=True):
            np.testing.assert_array_equal(got.numpy(), image)


def test_a_bchw_tensor_and_a_channels_last_tensor_give_the_same_batch(ctx):
    rng = np.random.default_rng(5)
    stack = torch.from_numpy(np.stack(images_of(rng, [(19, 7)] * 4, 3, "uint8"))).permute(0, 3, 1, 2)
    with ctx.pyramids(stack) as plain, ctx.pyramids(stack.contiguous(memory_format=torch.channels_last)) as last:
        np.testing.assert_array_equal(plain.level(0), last.level(0))
        np.testing.assert_array_equal(plain.level(0), stack.permute(0, 2, 3, 1).numpy())


def test_batch_relevance_pyramids_equal_the_reference_and_are_shared_where_the_source_is(ctx):
    rng = np.random.default_rng(7)
    sizes = [(64, 48), (64, 48), (30, 70)]
    maps = [rng.random((12, 16)).astype(np.float32), rng.random((12, 16)).astype(np.float32),
            rng.random((5, 9)).astype(np.float32)]
    built = batch_relevance_pyramids(maps, sizes, 8, ctx)
    for pyramid, r, size in zip(built, maps, sizes, strict=True):
        expected = reference.relevance_pyramid(r, 8, size)
        assert len(pyramid.levels) == len(expected)
        for got, want in zip(pyramid.levels, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    uniform = batch_relevance_pyramids(None, sizes, 8, ctx)
    assert uniform[0] is uniform[1] and uniform[0] is not uniform[2]
    one = np.ones((1, 1), np.float32)
    for got, want in zip(uniform[2].levels, relevance_pyramid(one, 8, sizes[2]).levels, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="relevance map 1: .*NaN"):
        batch_relevance_pyramids([maps[0], np.full((2, 2), np.nan), maps[2]], sizes, 8, ctx)
    assert ctx.gl.error == "GL_NO_ERROR"


@pytest.mark.parametrize("images, error, match", [
    ([], ValueError, "empty batch"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 3), np.uint8)], ValueError, "image 1: .*empty"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8)], ValueError, "image 1 has 4 channel"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint16)], ValueError, "image 1 has 3 channel.* uint16"),
    ([np.zeros((8, 8, 3), np.uint8), "missing.png"], ValueError, "image 1: image file not found"),
    ([np.zeros((8, 8, 3), np.uint8), 5], TypeError, "image 1: cannot read an image from int"),
    (np.zeros((2, 8, 8, 5), np.uint8), ValueError, "the batch array: images must have 1 to 4 channels"),
    (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty batch"),
    (np.full((2, 8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
    (np.zeros((2, 8, 8, 3), np.int32), TypeError, "dtype int32"),
    (torch.zeros(2, 5, 8, 8), ValueError, "BxCxHxW with C in 1..4"),
    (torch.zeros(2, 3, 8, 8, device="meta"), TypeError, "meta tensor"),
    (np.zeros((8, 8, 3), np.uint8), TypeError, "wrap a single image in a list"),
    ("image.png", TypeError, "wrap a single image in a list"),
])
def test_bad_batches_are_refused_before_anything_is_allocated(ctx, images, error, match):
    before = ctx.live_textures
    with pytest.raises(error, match=match):
        ctx.pyramids(images)
    assert ctx.live_textures == before
    assert ctx.gl.error == "GL_NO_ERROR"


def test_a_batch_over_the_texture_size_is_refused_naming_the_limit(ctx):
    side = ctx.max_texture_size + 1
    before = ctx.live_textures
    with pytest.raises(ValueError, match="maximum texture size"):
        ctx.pyramids(np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (1, 1, side, 1)))
    assert ctx.live_textures == before


def test_a_batch_past_the_layer_limit_is_split_not_refused(ctx, monkeypatch):
    monkeypatch.setattr(type(ctx), "max_array_layers", property(lambda self: 3))
    rng = np.random.default_rng(9)
    images = images_of(rng, [(10, 6)] * 7, 3, "uint8")
    with ctx.pyramids(images) as batch:
        assert [a.layers for a in batch.arrays] == [3, 3, 1]
        layouts = [glmip.TokenLayout.grid((10, 6), 2)] * 7
        together = batch.tokens(layouts)
        for b, image in enumerate(images):
            with ctx.pyramid(image) as alone:
                assert torch.equal(together[b * 15:(b + 1) * 15], alone.tokens(layouts[b]))


def test_views_close_with_their_batch_and_a_batch_of_one_with_its_pyramid(ctx):
    images = [np.zeros((6, 6, 1), np.uint8)] * 2
    before = ctx.live_textures
    batch = ctx.pyramids(images)
    view = batch[1]
    assert batch[1] is view and view.texture.glo != 0
    assert ctx.live_textures == before + 2  # the array and the view
    batch.close()
    assert view.closed and ctx.live_textures == before
    with pytest.raises(glmip.ClosedError):
        view.level(0)
    with pytest.raises(glmip.ClosedError):
        batch.tokens([glmip.TokenLayout.grid((6, 6), 2)] * 2)
    single = ctx.pyramid(images[0])
    single.texture  # noqa: B018 - makes the view
    single.close()
    assert single.batch.closed and ctx.live_textures == before


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_thousand_dropped_pyramids_leave_no_live_texture_and_flat_memory(ctx):
    """Pyramids dropped without close() are freed by the garbage collector (their GL names are queued
    and deleted at the context's next use, on its own thread). Peak RSS stays flat: the second 500
    raise it by less than 8 MiB over the first 500 (each pyramid holds 256 KiB of texels)."""
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    gc.collect()
    before = ctx.live_textures
    for _ in range(500):
        ctx.pyramid(image).level(0)
    gc.collect()
    assert ctx.live_textures == before
    peak = rss_mib()
    for _ in range(500):
        ctx.pyramid(image).level(0)
        ctx.pyramids([image, image])[1].texture  # noqa: B018 - a view of a dropped batch
    gc.collect()
    assert ctx.live_textures == before
    assert rss_mib() - peak < 8
    assert ctx.gl.error == "GL_NO_ERROR"


def test_batch_saliency_is_one_dispatch_per_array_and_equals_each_image_alone(ctx):
    rng = np.random.default_rng(11)
    images = images_of(rng, [(48, 32), (48, 32), (20, 64)], 3, "uint8")
    with ctx.pyramids(images, method="box") as batch:
        maps = glmip.saliency(batch)
        raw = glmip.saliency(batch, (12, 8), normalise=False)
        for b, image in enumerate(images):
            with ctx.pyramid(image, method="box") as alone:
                np.testing.assert_array_equal(maps[b], glmip.saliency(alone))
                np.testing.assert_array_equal(raw[b], glmip.saliency(alone, (12, 8), normalise=False))
    assert [m.shape for m in maps] == [(8, 12), (8, 12), (16, 5)]
    with pytest.raises(TypeError, match="must be a glmip.Pyramid"):
        glmip.saliency(np.zeros((8, 8, 3)))
    assert ctx.gl.error == "GL_NO_ERROR"


def test_two_contexts_in_one_thread_each_get_their_own_buffers_and_programs(ctx):
    """Interleaved calls on two contexts of one thread: every call that hands out a context's GL object
    (a persistent buffer, a program) makes that context current first, so neither writes into the other."""
    rng = np.random.default_rng(12)
    images = images_of(rng, [(37, 53), (64, 64), (21, 90)], 3, "uint8")
    maps = [glmip.gaze((w, h), (0.3, 0.6)) for h, w, _ in (i.shape for i in images)]
    with glmip.Context() as other:
        first = glmip.tokenize(images, maps, 10, 8, context=ctx)
        second = glmip.tokenize(images, maps, 10, 8, context=other)
        third = glmip.tokenize(images[::-1], maps[::-1], 10, 8, context=ctx)
        fourth = glmip.tokenize(images, maps, 10, 8, context=other)
        assert torch.equal(first.tokens, second.tokens) and torch.equal(first.tokens, fourth.tokens)
        assert torch.equal(third[0][0], first[2][0])
        assert other.gl.error == "GL_NO_ERROR"
    assert ctx.gl.error == "GL_NO_ERROR"
