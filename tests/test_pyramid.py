"""GPU pyramids against glmip.reference, level by level, on random, odd-sized and adversarial images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOLERANCE_LSB, max_error, random_image, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip import reference

DTYPES = ["uint8", "uint16", "float32"]
sizes = st.tuples(st.integers(1, 97), st.integers(1, 97))


def test_convention_floor_not_ceil_on_odd_size(ctx):
    with ctx.pyramid(np.zeros((5, 13, 4), np.uint8), method="box") as p:
        assert p.sizes == [(13, 5), (6, 2), (3, 1), (1, 1)]
        assert p.levels == 4
        assert [p.level(i).shape for i in range(p.levels)] == [(5, 13, 4), (2, 6, 4), (1, 3, 4), (1, 1, 4)]


def test_convention_row0_is_image_top(ctx):
    image = np.zeros((8, 8, 1), np.uint8)
    image[:4] = 255  # top half white
    for method in ("hardware", "box", "lanczos"):
        with ctx.pyramid(image, method=method) as p:
            np.testing.assert_array_equal(p.level(0), image)
            level2 = p.level(2)[:, :, 0]
            assert level2[0, 0] > 200 and level2[1, 0] < 55, (method, level2)


def test_level_sizes_follow_opengl():
    assert glmip.level_sizes(1, 1) == [(1, 1)]
    assert glmip.level_sizes(1, 9) == [(1, 9), (1, 4), (1, 2), (1, 1)]
    assert glmip.level_sizes(1024, 1024)[-1] == (1, 1) and len(glmip.level_sizes(1024, 1024)) == 11


@pytest.mark.parametrize("method", ["box", "lanczos"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_compute_methods_match_reference_every_dtype_and_channel_count(ctx, method, dtype, channels):
    image = random_image(np.random.default_rng(channels), 45, 67, channels, dtype)
    expected = reference.pyramid(image, method)
    with ctx.pyramid(image, method=method) as p:
        assert p.levels == len(expected)
        for i, level in enumerate(expected):
            got = p.level(i)
            assert got.dtype == image.dtype and got.shape == level.shape
            assert max_error(got, level) <= tolerance(method, dtype, image), (i, max_error(got, level))


@settings(max_examples=40, deadline=None)
@given(size=sizes, channels=st.integers(1, 4), method=st.sampled_from(["box", "lanczos"]), seed=st.integers(0, 2**16))
def test_compute_methods_match_reference_on_random_sizes(session_context, size, channels, method, seed):
    height, width = size
    image = random_image(np.random.default_rng(seed), height, width, channels, "uint8")
    expected = reference.pyramid(image, method)
    with session_context.pyramid(image, method=method) as p:
        for i, level in enumerate(expected):
            assert max_error(p.level(i), level) <= TOLERANCE_LSB[method], (size, i)


@settings(max_examples=30, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**16), adversarial=st.booleans())
def test_box_never_drifts_from_the_exact_area_mean(session_context, size, seed, adversarial):
    height, width = size
    rng = np.random.default_rng(seed)
    if adversarial:  # a 0/255 checkerboard: every 2x2 mean sits on a rounding edge
        y, x = np.mgrid[:height, :width]
        image = (((x + y) % 2) * 255).astype(np.uint8)[..., None].repeat(4, axis=2)
    else:
        image = random_image(rng, height, width, 4, "uint8")
    with session_context.pyramid(image, method="box") as p:
        for i in range(p.levels):
            drift = max_error(p.level(i), reference.area_mean_level(image, i))
            assert drift <= 1, (size, i, drift)


def test_box_drift_within_one_lsb_where_hardware_drifts(ctx):
    """512² RGBA8: the compute box filter stays within 1 LSB of the exact mean at every level;
    glGenerateMipmap, rounding each level, drifts (the figures land in the test's output)."""
    image = random_image(np.random.default_rng(7), 512, 512, 4, "uint8")
    drift = {}
    for method in ("hardware", "box"):
        with ctx.pyramid(image, method=method) as p:
            drift[method] = [max_error(p.level(i), reference.area_mean_level(image, i)) for i in range(p.levels)]
    print("max drift per level (LSB):", drift)
    assert max(drift["box"]) <= 1
    assert max(drift["hardware"]) >= 2, "glGenerateMipmap rounds every level, so its error grows down the chain"


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15, deadline=None)
@given(size=sizes, channels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_hardware_each_level_is_a_mip_step_of_the_level_above(session_context, dtype, size, channels, seed):
    """Each level within 1 LSB of the 2x2 box mean of the stored level above (even sizes); on odd
    sizes GL leaves the filter to the driver: within 1 LSB of the box or of one bilinear tap."""
    height, width = size
    image = random_image(np.random.default_rng(seed), height, width, channels, dtype)
    with session_context.pyramid(image, method="hardware") as p:
        above = p.level(0)
        for i in range(1, p.levels):
            got = p.level(i)
            tol = tolerance("hardware_step", dtype, image)
            box = max_error(got, reference.mip_step(above, reference.box_weights))
            if all(s % 2 == 0 or s == 1 for s in above.shape[:2]):
                assert box <= tol, (size, i, box)
            else:
                bilinear = max_error(got, reference.mip_step(above, reference.bilinear_weights))
                assert min(box, bilinear) <= tol, (size, i, box, bilinear)
            above = got


@pytest.mark.parametrize("method", ["hardware", "box", "lanczos"])
def test_srgb_filters_in_linear_light(ctx, method):
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, ::2] = 255  # black/white stripes: the linear mean is 0.5, sRGB-encoded 188
    with ctx.pyramid(image, method=method, srgb=True) as p:
        level1 = p.level(1)
        expected = reference.pyramid(image, method, srgb=True)[1]
        assert max_error(level1, expected) <= 1
        assert abs(int(level1[10, 10, 0]) - 188) <= 1
    with ctx.pyramid(image, method=method, srgb=False) as p:
        assert abs(int(p.level(1)[10, 10, 0]) - 128) <= 1


def test_srgb_keeps_alpha_linear(ctx):
    image = np.zeros((16, 16, 4), np.uint8)
    image[:, ::2] = 255
    with ctx.pyramid(image, method="box", srgb=True) as p:
        pixel = p.level(1)[0, 0]
        assert abs(int(pixel[0]) - 188) <= 1 and abs(int(pixel[3]) - 128) <= 1


def test_nbytes_is_four_thirds_of_level0_for_square_power_of_two(ctx):
    for size, channels in ((256, 4), (512, 1), (128, 3)):
        with ctx.pyramid(np.zeros((size, size, channels), np.uint8)) as p:
            level0 = size * size * channels
            assert abs(p.nbytes / level0 - 4 / 3) < 0.01 * 4 / 3


def test_level_out_torch(ctx):
    image = random_image(np.random.default_rng(3), 20, 30, 3, "uint16")
    with ctx.pyramid(torch.from_numpy(image.astype(np.int32)).to(torch.uint16).permute(2, 0, 1)) as p:
        t = p.level(0, out="torch")
        assert isinstance(t, torch.Tensor) and t.dtype == torch.uint16 and t.shape == (20, 30, 3)
        np.testing.assert_array_equal(t.numpy(), image)


def test_level_index_errors(ctx):
    with ctx.pyramid(np.zeros((4, 4, 1), np.uint8)) as p:
        with pytest.raises(ValueError, match="levels 0..2"):
            p.level(3)
        with pytest.raises(ValueError, match="levels 0..2"):
            p.level(-1)
        with pytest.raises(TypeError, match="int"):
            p.level(1.0)
        with pytest.raises(ValueError, match="out must be"):
            p.level(0, out="jax")


def test_closed_pyramid_and_context_refuse_work():
    ctx = glmip.Context()
    p = ctx.pyramid(np.zeros((4, 4, 4), np.uint8))
    p.close()
    p.close()  # twice is fine
    with pytest.raises(RuntimeError, match="Pyramid is closed"):
        p.level(0)
    q = ctx.pyramid(np.zeros((4, 4, 4), np.uint8))
    ctx.close()
    assert q.closed, "closing the context closes its pyramids"
    with pytest.raises(RuntimeError, match="Context is closed"):
        ctx.pyramid(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        q.level(0)


def test_bad_method_and_srgb_arguments(ctx):
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown pyramid method 'bicubic'"):
        ctx.pyramid(image, method="bicubic")
    with pytest.raises(ValueError, match="srgb=True needs an 8-bit RGB"):
        ctx.pyramid(np.zeros((4, 4, 1), np.uint8), srgb=True)
    with pytest.raises(ValueError, match="srgb=True needs an 8-bit RGB"):
        ctx.pyramid(np.zeros((4, 4, 3), np.float32), srgb=True)
    with pytest.raises(TypeError, match="srgb must be a bool"):
        ctx.pyramid(image, srgb="yes")


def test_methods_accept_enum(ctx):
    with ctx.pyramid(np.zeros((4, 4, 3), np.uint8), method=glmip.PyramidMethod.LANCZOS) as p:
        assert p.method is glmip.PyramidMethod.LANCZOS
