"""`glmip.tokenize`: a batch in, one TokenBatch out, equal to the one-image path image by image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip.sampling import tokens_batch
from glmip.tokenize import thread_context


def scene(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def test_one_image_equals_allocate_then_pyramid_tokens_bit_for_bit(ctx):
    rng = np.random.default_rng(0)
    image = scene(rng, 123, 301)
    relevance = glmip.gaze((301, 123), (0.3, 0.6))
    batch = glmip.tokenize([image], relevance, budget=64, patch=8, context=ctx)
    with ctx.pyramid(image) as pyramid:
        layout = glmip.allocate(relevance, budget=64, patch=8, image_size=(301, 123), context=ctx)
        expected = pyramid.tokens(layout)
    assert len(batch) == 1 and batch.cu_seqlens.tolist() == [0, len(layout)]
    assert torch.equal(batch.tokens, expected)
    np.testing.assert_array_equal(batch.layouts[0].level, layout.level)


@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(8, 90), st.integers(8, 90)), min_size=2, max_size=5),
       anisotropic=st.booleans())
def test_a_batch_of_mixed_sizes_equals_each_image_alone(session_context, sizes, anisotropic):
    ctx = session_context
    rng = np.random.default_rng(len(sizes))
    images = [scene(rng, h, w) for w, h in sizes]
    filt = "anisotropic" if anisotropic else "trilinear"
    batch = glmip.tokenize(images, glmip.saliency, budget=24, patch=4, context=ctx, filter=filt)
    for b, image in enumerate(images):
        tokens, layout = batch[b]
        with ctx.pyramid(image) as pyramid:
            assert torch.equal(tokens, pyramid.tokens(layout, filter=filt))
    assert batch.image_sizes == tuple(sizes)
    assert ctx.gl.error == "GL_NO_ERROR"


def test_a_pyramid_batch_samples_what_separate_pyramids_sample(ctx):
    """Images of several sizes in one PyramidBatch (one array texture per size, one dispatch each) give
    bit for bit what each image's own pyramid gives, in the input order."""
    rng = np.random.default_rng(4)
    sizes = [(31, 17), (40, 24), (31, 17), (9, 60), (40, 24), (31, 17)]
    images = [scene(rng, h, w) for w, h in sizes]
    layouts = glmip.allocate_batch([np.ones((1, 1))] * len(images), 8, 4, context=ctx, image_sizes=sizes)
    with ctx.pyramids(images) as batch:
        assert len(batch.arrays) == 3 and batch.image_sizes == sizes
        for filt in ("trilinear", "anisotropic"):
            together = batch.tokens(layouts, 4, filt)
            apart = []
            for image, layout in zip(images, layouts, strict=True):
                with ctx.pyramid(image) as pyramid:
                    apart.append(pyramid.tokens(layout, 4, filt))
            assert torch.equal(together, torch.cat(apart))
        assert torch.equal(tokens_batch([batch[5], batch[0]], [layouts[5], layouts[0]], 4),
                           torch.cat([apart[5], apart[0]]))
    assert ctx.gl.error == "GL_NO_ERROR"


def test_a_bchw_tensor_is_one_array_and_uniform_relevance_one_allocation(ctx):
    rng = np.random.default_rng(3)
    count = 19
    stack = torch.from_numpy(np.stack([scene(rng, 40, 56) for _ in range(count)])).permute(0, 3, 1, 2)
    batch = glmip.tokenize(stack, None, budget=12, patch=4, context=ctx)
    assert len(batch) == count
    with ctx.pyramid(stack[count - 1]) as last:
        tokens, layout = batch[count - 1]
        assert torch.equal(tokens, last.tokens(layout))
    uniform = glmip.allocate(np.ones((1, 1), np.float32), budget=12, patch=4, image_size=(56, 40))
    np.testing.assert_array_equal(batch.layouts[0].level, uniform.level)  # None = a constant relevance
    np.testing.assert_array_equal(batch.layouts[0].cx, uniform.cx)
    assert all(layout is batch.layouts[0] for layout in batch.layouts)  # allocated once, shared


def test_tokenize_without_a_context_reuses_this_threads_context_and_frees_its_textures():
    batch = glmip.tokenize([np.zeros((20, 30, 1), np.uint8)], None, budget=4, patch=4, device="cpu")
    assert batch.tokens.shape[1:] == (1, 4, 4) and float(batch.tokens.abs().max()) == 0.0
    ctx = thread_context()
    assert ctx.live_textures == 0  # the batch's array texture went with the call
    glmip.tokenize([np.ones((20, 30, 1), np.uint8)], None, budget=4, patch=4)
    assert thread_context() is ctx and ctx.live_textures == 0
    ctx.close()
    assert thread_context() is not ctx  # a closed cached context is replaced
    thread_context().close()


@pytest.mark.parametrize("images, relevance, message", [
    ([], None, "empty batch"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 1), np.uint8)], None, "one channel count, dtype and device"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], None, "one channel count, dtype and device"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((2, 2))] * 3, "3 relevance maps for 2 images"),
])
def test_bad_batches_are_refused_before_any_work(ctx, images, relevance, message):
    with pytest.raises(ValueError, match=message):
        glmip.tokenize(images, relevance, budget=8, patch=4, context=ctx)


def test_bad_batch_types(ctx):
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        glmip.tokenize(np.zeros((8, 8, 3), np.uint8), None, context=ctx)
    with pytest.raises(TypeError, match="relevance must be"):
        glmip.tokenize([np.zeros((8, 8, 3), np.uint8)], "centre", context=ctx)


def test_tokens_refuse_a_layout_made_for_another_image_size(ctx):
    layout = glmip.allocate(np.ones((4, 4), np.float32), budget=8, patch=4, image_size=(64, 64))
    with ctx.pyramid(np.zeros((32, 48, 3), np.uint8)) as pyramid:
        with pytest.raises(ValueError, match="made for an image of 64x64, but its image is 48x32"):
            pyramid.tokens(layout)
        with pytest.raises(ValueError, match="one layout per image"):
            tokens_batch([pyramid], [layout, layout])
