"""Token -> image reconstruction: exact on level-0 and constant tokens, box means from coarse tokens,
every pixel from exactly one token on any layout that covers the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip.allocate import TokenLayout, allocate
from glmip.reconstruct import covering_tokens, reconstruct

LEVEL0_TOLERANCE_LSB = 0.5  # level-0 tokens sample texel centres: the 8-bit value comes back after rounding
COARSE_TOLERANCE_LSB = 1.0  # the box pyramid's own tolerance (docs/pyramids.md: within 1 LSB of the exact area mean)


def grid_layout(width: int, height: int, side: float, level: float, patch: int) -> TokenLayout:
    """A single-level grid of `side`-pixel tokens (side may be fractional) from the top-left corner."""
    cols, rows = math.ceil(width / side - 1e-9), math.ceil(height / side - 1e-9)
    x, y = np.meshgrid(np.arange(cols), np.arange(rows))
    n = cols * rows
    return TokenLayout(cx=(x.ravel() + 0.5) * side, cy=(y.ravel() + 0.5) * side, size=np.full(n, float(side)),
                       level=np.full(n, level), patch=patch, image_size=(width, height))


def test_level0_layout_reconstructs_the_image(ctx):
    """Odd sizes: the last row and column of tokens reach past the image and are clipped."""
    image = np.random.default_rng(1).integers(0, 256, (53, 70, 3), dtype=np.uint8)
    layout = allocate(np.ones((4, 4), np.float32), budget=1000, patch=8, image_size=(70, 53), max_level=0)
    assert (layout.level == 0).all()
    with ctx.pyramid(image, method="box") as p:
        got = reconstruct(p.tokens(layout), layout)
    assert got.shape == (3, 53, 70) and got.dtype == torch.float32
    error = np.abs(got.permute(1, 2, 0).numpy().astype(np.float64) * 255 - image).max()
    assert error <= LEVEL0_TOLERANCE_LSB, f"level-0 reconstruction off by {error:.3f} LSB"


def test_constant_tokens_reconstruct_exactly(ctx):
    layout = allocate(glmip.gaze((90, 70), (0.3, 0.7)), budget=40, patch=4, image_size=(90, 70))
    assert len(set(layout.level.tolist())) > 1, "several levels, so borders between levels are crossed"
    value = torch.tensor([0.1, 0.7]).reshape(1, 2, 1, 1)
    got = reconstruct(value.expand(len(layout), 2, 4, 4).clone(), layout)
    assert torch.equal(got, value[0].expand(2, 70, 90)), "bit-exact, not merely close"
    with ctx.pyramid(np.full((70, 90, 1), 77, np.uint8), method="box") as p:
        tokens = p.tokens(layout)
    assert torch.equal(reconstruct(tokens, layout), torch.full((1, 70, 90), float(tokens[0, 0, 0, 0])))
    assert abs(float(tokens[0, 0, 0, 0]) * 255 - 77) <= 1e-3


@pytest.mark.parametrize("level", [1, 2, 3])
def test_coarse_token_gives_the_box_mean_of_a_flat_region(ctx, level):
    """Blocks of one colour under a +-20 pixel checkerboard: at any level >= 1 every sample of a token
    aligned with a block is the block's colour (the box filter's mean), and so is every reconstructed pixel."""
    rng = np.random.default_rng(level)
    side = 4 << level  # patch 4
    blocks = rng.integers(20, 236, (3, 4, 3))
    image = np.kron(blocks, np.ones((side, side, 1), np.int64))
    checker = (np.indices(image.shape[:2]).sum(0) % 2 * 2 - 1) * 20
    image = (image + checker[..., None]).astype(np.uint8)
    layout = grid_layout(4 * side, 3 * side, side, level, 4)
    with ctx.pyramid(image, method="box") as p:
        got = reconstruct(p.tokens(layout), layout).permute(1, 2, 0).numpy().astype(np.float64) * 255
    expected = np.kron(blocks, np.ones((side, side, 1)))
    error = np.abs(got - expected).max()
    assert error <= COARSE_TOLERANCE_LSB, f"level {level}: {error:.2f} LSB from the block means"


def test_tokens_between_samples_interpolate_bilinearly():
    """One 2x2 token over 4x4 pixels: sample centres at pixels 1 and 3 (level-0 coordinates 1.0, 3.0),
    pixel centres at 0.5 .. 3.5, clamped at the border: weights 0, 1/4, 3/4, 1."""
    layout = grid_layout(4, 4, 4.0, 1.0, 2)
    token = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    got = reconstruct(token, layout)[0]
    ramp = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(got, ramp[None, :] + 2 * ramp[:, None], rtol=0, atol=1e-6)


def test_output_size_resamples_the_same_picture():
    layout = grid_layout(8, 8, 4.0, 1.0, 2)
    tokens = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    got = reconstruct(tokens, layout, size=(2, 2))
    assert torch.equal(got[0], torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert reconstruct(tokens, layout, size=(5, 3)).shape == (1, 3, 5)


def test_shape_and_layout_errors():
    layout = grid_layout(8, 8, 4.0, 0.0, 4)
    good = torch.zeros(4, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(N, C, P, P\)"):
        reconstruct(torch.zeros(4, 3, 4), layout)
    with pytest.raises(ValueError, match=r"\(N, C, P, P\)"):
        reconstruct(torch.zeros(4, 3, 4, 5), layout)
    with pytest.raises(ValueError, match="5 tokens for a layout of 4"):
        reconstruct(torch.zeros(5, 3, 4, 4), layout)
    with pytest.raises(ValueError, match="tokens are 2x2 but the layout's patch is 4"):
        reconstruct(torch.zeros(4, 3, 2, 2), layout)
    with pytest.raises(TypeError, match="floating point"):
        reconstruct(torch.zeros(4, 3, 4, 4, dtype=torch.int32), layout)
    with pytest.raises(TypeError, match="tensor or numpy"):
        reconstruct([[0.0]], layout)
    with pytest.raises(TypeError, match="TokenLayout"):
        reconstruct(good, object())
    for size in ((0, 4), (4,), (4.0, 4), "ab"):
        with pytest.raises(ValueError, match="size must be"):
            reconstruct(good, layout, size=size)
    gap = TokenLayout(cx=layout.cx[:3], cy=layout.cy[:3], size=layout.size[:3], level=layout.level[:3], patch=4,
                      image_size=(8, 8))
    with pytest.raises(ValueError, match="16 pixel.s. are covered by no token and 0 by more than one"):
        reconstruct(good[:3], gap)
    overlap = TokenLayout(cx=np.r_[layout.cx, 4.0], cy=np.r_[layout.cy, 4.0], size=np.r_[layout.size, 4.0],
                          level=np.r_[layout.level, 0.0], patch=4, image_size=(8, 8))
    with pytest.raises(ValueError, match="0 pixel.s. are covered by no token and 16 by more than one"):
        reconstruct(torch.zeros(5, 3, 4, 4), overlap)
    assert reconstruct(good.numpy(), layout).shape == (3, 8, 8), "numpy tokens are accepted"


def owner_by_brute_force(layout: TokenLayout, width: int, height: int) -> np.ndarray:
    """Every (pixel centre, token square) pair tested: -1 where no token holds the centre, -2 where several do."""
    w0, h0 = layout.image_size
    px = (np.arange(width) + 0.5) * w0 / width
    py = (np.arange(height) + 0.5) * h0 / height
    half = layout.size / 2
    inside_x = (px[:, None] >= layout.cx - half - 1e-6) & (px[:, None] < layout.cx + half - 1e-6)  # (W, N)
    inside_y = (py[:, None] >= layout.cy - half - 1e-6) & (py[:, None] < layout.cy + half - 1e-6)  # (H, N)
    hits = inside_y[:, None, :] & inside_x[None, :, :]  # (H, W, N)
    count = hits.sum(-1)
    return np.where(count == 1, hits.argmax(-1), np.where(count == 0, -1, -2))


layout_cases = st.fixed_dictionaries({
    "width": st.integers(1, 96), "height": st.integers(1, 96), "budget": st.integers(1, 120),
    "patch": st.sampled_from([2, 4, 8]), "seed": st.integers(0, 2**16), "grid": st.booleans(),
    "cols": st.integers(1, 12), "out_scale": st.sampled_from([None, 0.5, 1.3]),
})


@settings(max_examples=60, deadline=None)
@given(case=layout_cases)
def test_every_pixel_comes_from_the_one_token_holding_its_centre(case):
    """Quadtree layouts from `allocate` and fractional-side grids: when the layout covers every pixel exactly
    once, each pixel of the reconstruction comes from its covering token, found by brute force, and lies
    within that token's sample range (bilinear weights are convex)."""
    width, height, patch = case["width"], case["height"], case["patch"]
    if case["grid"]:
        side = width / case["cols"]
        layout = grid_layout(width, height, side, math.log2(max(side / patch, 1e-3)), patch)
    else:
        relevance = np.random.default_rng(case["seed"]).random((9, 13)).astype(np.float32) ** 3
        try:
            layout = allocate(relevance, budget=case["budget"], patch=patch, image_size=(width, height))
        except ValueError:
            return  # the budget cannot cover the image (tested in test_allocate)
    scale = case["out_scale"]
    size = (width, height) if scale is None else (max(1, round(width * scale)), max(1, round(height * scale)))
    expected = owner_by_brute_force(layout, *size)
    if (expected < 0).any():  # a resized output may put a pixel centre past the last token: then it must refuse
        with pytest.raises(ValueError, match="cover every pixel exactly once"):
            covering_tokens(layout, size)
        return
    np.testing.assert_array_equal(covering_tokens(layout, size).numpy(), expected)
    n = len(layout)
    ids = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, patch, patch).clone()
    np.testing.assert_array_equal(reconstruct(ids, layout, size)[0].numpy(), expected.astype(np.float32))
    values = torch.rand(n, 2, patch, patch, generator=torch.Generator().manual_seed(case["seed"]))
    got = reconstruct(values, layout, size)
    low = values.amin(dim=(2, 3))[torch.from_numpy(expected)].permute(2, 0, 1)
    high = values.amax(dim=(2, 3))[torch.from_numpy(expected)].permute(2, 0, 1)
    assert torch.isfinite(got).all()
    assert ((got >= low - 1e-6) & (got <= high + 1e-6)).all()


def test_bench_tokens_quick(tmp_path):
    """`python -m bench.tokens --quick` end to end (about 10 s on llvmpipe): JSON, plot and picture written, and the
    reader reads the undistorted text (level-0 tokens, reconstructed) without a mistake."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out, plot, picture = tmp_path / "tokens.json", tmp_path / "quality.png", tmp_path / "reconstruction.png"
    result = subprocess.run([sys.executable, "-m", "bench.tokens", "--quick", "--out", str(out),
                             "--plot", str(plot), "--picture", str(picture)], capture_output=True, text=True,
                            timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert plot.stat().st_size > 0 and picture.stat().st_size > 0
    assert report["summary"]["reader_by_level"]["0"]["accuracy"] == 1.0
    assert report["summary"]["reader_by_level"]["0"]["psnr_relevant"] is None, "level 0 reconstructs losslessly"
    for row in report["quality"]:
        assert row["budget"] is None or row["tokens"] <= row["budget"]
    assert "| relevance |" in result.stdout
