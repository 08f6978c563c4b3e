"""What users pass as an image: numpy, torch, PIL, paths; and the errors bad input gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import glmip
from glmip.image import as_image_array


def test_numpy_hw_and_hwc():
    assert as_image_array(np.zeros((3, 5), np.uint8)).shape == (3, 5, 1)
    assert as_image_array(np.zeros((3, 5, 2), np.uint16)).shape == (3, 5, 2)


def test_torch_layouts():
    chw = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    got = as_image_array(chw)
    assert got.shape == (3, 5, 2)
    np.testing.assert_array_equal(got[..., 1], chw[1].numpy())
    hwc = torch.zeros(6, 7, 3, dtype=torch.uint8)
    assert as_image_array(hwc).shape == (6, 7, 3)
    assert as_image_array(torch.zeros(1, 4, 6, 7)).shape == (6, 7, 4)
    assert as_image_array(torch.zeros(6, 7, dtype=torch.uint8)).shape == (6, 7, 1)


def test_convention_ambiguous_torch_tensor_is_chw():
    assert as_image_array(torch.zeros(3, 4, 4)).shape == (4, 4, 3)


def test_pil_modes_and_paths(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8))
    np.testing.assert_array_equal(as_image_array(rgb), np.asarray(rgb))
    assert as_image_array(rgb.convert("L")).shape == (9, 11, 1)
    assert as_image_array(rgb.convert("P")).shape == (9, 11, 4)
    path = tmp_path / "x.png"
    rgb.save(path)
    np.testing.assert_array_equal(as_image_array(path), np.asarray(rgb))
    np.testing.assert_array_equal(as_image_array(str(path)), np.asarray(rgb))
    gray16 = np.arange(99, dtype=np.uint16).reshape(9, 11) * 600
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    got = as_image_array(tmp_path / "g16.png")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[..., 0], gray16)


def test_bundled_image_loads():
    assert as_image_array(glmip.DEFAULT_IMAGE).shape == (400, 600, 3)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.zeros((4, 4, 3), np.int32), TypeError, "dtype int32 is not supported"),
        (np.zeros((4, 4, 3), np.float64), TypeError, r"astype\(np.float32\)"),
        (np.zeros((4, 4, 3), bool), TypeError, "dtype bool"),
        (torch.zeros(3, 4, 4, dtype=torch.float64), TypeError, "torch.float64 is not supported"),
        (np.zeros((4, 4, 5), np.uint8), ValueError, "1 to 4 channels"),
        (np.zeros((3, 40, 40), np.uint8), ValueError, "transpose to HxWxC"),
        (np.zeros((2, 4, 4, 3), np.uint8), ValueError, "HxW or HxWxC"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, "empty"),
        (np.zeros((4, 0), np.uint8), ValueError, "empty"),
        (torch.zeros(2, 3, 4, 4), ValueError, "one image"),
        (torch.zeros(7, 8, 9), ValueError, "CxHxW or HxWxC"),
        (np.array([[np.nan, 0.0]], np.float32), ValueError, "1 NaN or infinite"),
        (np.array([[np.inf, -np.inf]], np.float32), ValueError, "2 NaN or infinite"),
        ([[1, 2], [3, 4]], TypeError, "cannot read an image from list"),
        ("/no/such/file.png", ValueError, "image file not found"),
    ],
)
def test_bad_input_gets_a_clear_error(ctx, bad, error, match):
    with pytest.raises(error, match=match):
        as_image_array(bad)
    with pytest.raises(error, match=match):
        ctx.pyramid(bad)


def test_unreadable_file(tmp_path, ctx):
    path = tmp_path / "not-an-image.png"
    path.write_text("hello")
    with pytest.raises(ValueError, match="cannot read"):
        ctx.pyramid(path)


def test_failed_build_leaves_nothing_behind(ctx):
    before = len(ctx.gl.objects) if hasattr(ctx.gl, "objects") else None
    with pytest.raises(ValueError):
        ctx.pyramid(np.full((4, 4), np.nan, np.float32))
    if before is not None:
        assert len(ctx.gl.objects) == before
