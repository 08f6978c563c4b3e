"""`PyramidBatch.grids`: every requested level's patch grid equals the reference cut of that level (the stored
texels exactly; box within 1 LSB of the numpy pyramid, hardware within 1 LSB of one mip step of the level
above), padded with zeros where the patch does not divide a level; level images fold the same cells back;
sparse pyramids keep exactly the cells their masks, thresholds or budgets name; bad requests are refused
before anything is allocated; one dispatch per array texture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import glmip.grids
from glmip import reference
from glmip.grids import cell_relevance

SIZES = [(1, 1), (3, 1), (9, 7), (16, 16), (17, 33), (40, 24), (31, 31)]
FLOAT_ATOL = 1e-6  # float32 texels against float64 decoding


def images_of(rng: np.random.Generator, sizes: list[tuple[int, int]], channels: int, dtype: str) -> list[np.ndarray]:
    if dtype == "float32":
        return [rng.uniform(-2, 3, (h, w, channels)).astype(np.float32) for w, h in sizes]
    top = np.iinfo(dtype).max
    return [rng.integers(0, top + 1, (h, w, channels)).astype(dtype) for w, h in sizes]


def lsb(dtype: str) -> float:
    return 1.0 if dtype == "float32" else 1.0 / np.iinfo(dtype).max


@settings(max_examples=14, deadline=None)
@given(sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=4), method=st.sampled_from(["box", "hardware"]),
       channels=st.integers(1, 4), dtype=st.sampled_from(["uint8", "uint16", "float32"]), patch=st.integers(1, 5),
       first=st.integers(0, 2), count=st.integers(1, 3), seed=st.integers(0, 2**16))
@example(sizes=[(17, 33), (40, 24), (17, 33)], method="box", channels=3, dtype="uint8", patch=4, first=0, count=3,
         seed=0)
@example(sizes=[(9, 7)], method="hardware", channels=4, dtype="float32", patch=3, first=1, count=2, seed=1)
def test_every_cell_is_the_reference_cut_of_its_level(session_context, sizes, method, channels, dtype, patch, first,
                                                      count, seed):
    """Against the batch's stored levels exactly (texelFetch), and through them against the numpy pyramid:
    box within 1 LSB, hardware within 1 LSB of a Mesa mip step of the stored level above."""
    ctx = session_context
    images = images_of(np.random.default_rng(seed), sizes, channels, dtype)
    levels_available = min(len(glmip.level_sizes(w, h)) for w, h in sizes)
    levels = [lv for lv in range(first, first + count) if lv < levels_available]
    assume(levels)
    assume(all(patch <= max(glmip.level_sizes(w, h)[lv]) for w, h in sizes for lv in levels))
    with ctx.pyramids(images, method=method) as batch:
        grids = batch.grids(levels, patch)
        assert [g.level for g in grids] == levels
        for grid in grids:
            assert grid.tokens.dtype == torch.float32 and grid.tokens.shape[2:] == (channels, patch, patch)
            for b, image in enumerate(images):
                stored = [batch[b].level(i) for i in range(batch[b].levels)]
                expected = reference.grid_cells(stored, grid.level, patch)
                rows, cols = -(-stored[grid.level].shape[0] // patch), -(-stored[grid.level].shape[1] // patch)
                assert grid.grid[b].tolist() == [rows, cols]
                valid = grid.valid[b].numpy()
                assert valid.sum() == rows * cols and valid[:rows * cols].all()
                np.testing.assert_array_equal(grid.positions[b, :rows * cols].numpy(),
                                              np.stack(np.divmod(np.arange(rows * cols), cols), axis=1))
                got = grid.tokens[b, :rows * cols].numpy()
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=FLOAT_ATOL)
                assert not grid.tokens[b, rows * cols:].any() and (grid.positions[b, rows * cols:] == -1).all()
                if grid.level == 0:
                    continue
                if method == "box":
                    ideal = reference.pyramid(image, "box")
                else:
                    step = reference.mip_step(stored[grid.level - 1], reference.bilinear_weights)
                    ideal = stored[:grid.level] + [step]
                cut = reference.grid_cells(ideal, grid.level, patch)
                scale = max(1.0, float(np.abs(image).max())) * 1e-5 if dtype == "float32" else lsb(dtype)
                assert np.abs(got - cut).max() <= scale + FLOAT_ATOL


def test_the_seed_grids_at_224_are_56_28_14_7(ctx):
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8)
    with ctx.pyramids([image, image]) as batch:
        grids = batch.grids(range(4), 4)
    assert [g.shape for g in grids] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [tuple(g.tokens.shape) for g in grids] == [(2, n * n, 3, 4, 4) for n in (56, 28, 14, 7)]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_level_images_are_the_levels_and_fold_the_token_cells(ctx, dtype):
    """as_images gives (B, C, H_l, W_l) zero-padded to the largest level; with a patch, padded to its multiple,
    and cutting it into patch cells gives the tokens back exactly."""
    rng = np.random.default_rng(3)
    images = images_of(rng, [(37, 21), (20, 30), (37, 21)], 3, dtype)
    with ctx.pyramids(images, method="box") as batch:
        plain = batch.grids([0, 2], as_images=True)
        padded = batch.grids([1, 2], 4, as_images=True)
        tokens = batch.grids([1, 2], 4)
        for lv in plain:
            for b in range(len(images)):
                stored = reference.decode(batch[b].level(lv.level))
                h, w = stored.shape[:2]
                assert lv.sizes[b].tolist() == [h, w]
                got = lv.image[b].permute(1, 2, 0).numpy()
                np.testing.assert_allclose(got[:h, :w], stored, atol=FLOAT_ATOL, rtol=1e-6)
                assert not got[h:].any() and not got[:, w:].any()
        for image, grid in zip(padded, tokens, strict=True):
            batch_size, channels, height, width = image.image.shape
            assert height % 4 == 0 and width % 4 == 0
            cells = image.image.reshape(batch_size, channels, height // 4, 4, width // 4, 4).permute(0, 2, 4, 1, 3, 5)
            for b in range(batch_size):
                rows, cols = grid.grid[b].tolist()
                mine = cells[b, :rows, :cols].reshape(rows * cols, channels, 4, 4)
                torch.testing.assert_close(grid.tokens[b, :rows * cols], mine, rtol=0, atol=0)


def test_srgb_levels_are_decoded_to_linear(ctx):
    """Within half an 8-bit LSB: llvmpipe's texelFetch decodes sRGB with an approximation (measured up to
    1.2e-3 off the exact curve; test_sampling allows 2/255 for the same reason)."""
    image = np.random.default_rng(4).integers(0, 256, (12, 20, 3), np.uint8)
    with ctx.pyramids([image], method="box", srgb=True) as batch:
        grid = batch.grids([0, 1], 4)
        for lv in grid:
            expected = reference.grid_cells([batch[0].level(i) for i in range(2)], lv.level, 4, srgb=True)
            np.testing.assert_allclose(lv.tokens[0].numpy(), expected, atol=0.5 / 255, rtol=0)


def test_one_dispatch_per_array_texture_for_all_levels(ctx, monkeypatch):
    calls = []
    real = glmip.grids.dispatch_flat
    monkeypatch.setattr(glmip.grids, "dispatch_flat", lambda *a: (calls.append(a[1]), real(*a)))
    rng = np.random.default_rng(5)
    with ctx.pyramids(images_of(rng, [(32, 32), (24, 40), (32, 32), (32, 32)], 3, "uint8")) as batch:
        batch.grids([0, 1, 2, 3], 2)
        assert len(calls) == 2
        batch.grids([1, 3], as_images=True)
        assert len(calls) == 4


def test_masks_keep_exactly_the_named_cells_in_row_major_order(ctx):
    rng = np.random.default_rng(6)
    images = images_of(rng, [(32, 24), (16, 16)], 1, "uint8")
    with ctx.pyramids(images, method="box") as batch:
        dense = batch.grids([0, 1], 4)
        mask = np.zeros((2, 6, 8), bool)
        mask[0, 1, 2] = mask[0, 5, 7] = mask[0, 0, 3] = True
        mask[1, 3, 3] = True
        mask[1, 5, 7] = True  # outside image 1's 4 x 4 grid: ignored
        sparse = batch.grids([0, 1], 4, masks=[mask, None])
    fine, coarse = sparse
    assert fine.tokens.shape[:2] == (2, 3)
    assert fine.positions[0].tolist() == [[0, 3], [1, 2], [5, 7]]
    assert fine.positions[1].tolist() == [[3, 3], [-1, -1], [-1, -1]]
    assert fine.valid.tolist() == [[True, True, True], [True, False, False]]
    for b in range(2):
        for n in range(int(fine.valid[b].sum())):
            row, col = fine.positions[b, n].tolist()
            torch.testing.assert_close(fine.tokens[b, n], dense[0].tokens[b, row * dense[0].grid[b, 1] + col])
    assert not fine.tokens[1, 1:].any()
    torch.testing.assert_close(coarse.tokens, dense[1].tokens)


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.sampled_from([(9, 7), (16, 16), (17, 33), (40, 24)]), min_size=1, max_size=3),
       patch=st.integers(1, 4), keep=st.floats(0.05, 0.9), seed=st.integers(0, 2**16))
def test_random_masks_keep_the_reference_cells_of_mixed_batches(session_context, sizes, patch, keep, seed):
    rng = np.random.default_rng(seed)
    pictures = images_of(rng, sizes, 2, "uint16")
    with session_context.pyramids(pictures, method="box") as batch:
        shapes = batch.grids([0, 1], patch)
        masks = [rng.random((len(sizes), *g.shape)) < keep for g in shapes]
        for mask, g in zip(masks, shapes, strict=True):
            for b, (rows, cols) in enumerate(g.grid.tolist()):
                mask[b, rng.integers(rows), rng.integers(cols)] = True  # no level is left empty
        grids = batch.grids([0, 1], patch, masks=masks)
        for grid, mask in zip(grids, masks, strict=True):
            for b in range(len(sizes)):
                rows, cols = grid.grid[b].tolist()
                kept = np.flatnonzero(mask[b, :rows, :cols])
                cells = reference.grid_cells([batch[b].level(i) for i in range(2)], grid.level, patch)
                assert int(grid.valid[b].sum()) == kept.size and grid.valid[b, :kept.size].all()
                np.testing.assert_array_equal(grid.positions[b, :kept.size].numpy(),
                                              np.stack(np.divmod(kept, cols), axis=1))
                np.testing.assert_allclose(grid.tokens[b, :kept.size].numpy(), cells[kept], atol=FLOAT_ATOL)
                assert not grid.tokens[b, kept.size:].any()


def test_cell_relevance_is_the_area_mean_over_the_cell_inside_the_level():
    rng = np.random.default_rng(7)
    relevance = rng.random((7, 11))
    level_size, patch = (10, 13), 4  # 3 x 4 cells, the last row and column partly outside
    samples_y, samples_x = 7 * 13, 11 * 10  # sample grids both the map and the level divide: exact upsampling
    ys, xs = (np.arange(samples_y) + 0.5) / samples_y, (np.arange(samples_x) + 0.5) / samples_x
    dense = relevance[(ys * 7).astype(int)][:, (xs * 11).astype(int)]
    cell_y, cell_x = (ys * level_size[1]).astype(int) // patch, (xs * level_size[0]).astype(int) // patch
    expected = np.array([[dense[cell_y == r][:, cell_x == c].mean() for c in range(3)] for r in range(4)])
    np.testing.assert_allclose(cell_relevance(relevance, level_size, patch), expected, rtol=1e-12)


def test_threshold_and_budget_keep_the_most_relevant_cells_below_the_coarsest_level(ctx):
    rng = np.random.default_rng(8)
    images = images_of(rng, [(64, 48)] * 2, 3, "uint8")
    relevance = np.stack([glmip.gaze((64, 48), (0.2, 0.3)), glmip.gaze((64, 48), (0.8, 0.7))])
    with ctx.pyramids(images) as batch:
        by_budget = batch.grids([0, 1, 2], 4, relevance=relevance, budget=5)
        by_threshold = batch.grids([0, 1, 2], 4, relevance=list(relevance), threshold=[0.5, 0.2, None])
        dense = batch.grids([0, 1, 2], 4)
    assert by_budget[2].valid.all() and by_budget[2].tokens.shape == dense[2].tokens.shape  # the base keeps all
    for b in range(2):
        for li, lv in enumerate((0, 1)):
            scores = cell_relevance(relevance[b], glmip.level_sizes(64, 48)[lv], 4)
            top = np.sort(np.argsort(-scores.ravel(), kind="stable")[:5])
            kept = by_budget[li].positions[b].numpy()
            np.testing.assert_array_equal(kept[:, 0] * scores.shape[1] + kept[:, 1], top)
            np.testing.assert_allclose(by_budget[li].relevance[b].numpy(), scores.ravel()[top], rtol=1e-6)
            chosen = np.flatnonzero(scores.ravel() >= (0.5, 0.2)[li])
            got = by_threshold[li].positions[b][by_threshold[li].valid[b]].numpy()
            np.testing.assert_array_equal(got[:, 0] * scores.shape[1] + got[:, 1], chosen)
    assert dense[0].relevance is None and by_budget[2].relevance.shape == (2, 12)
    row, col = by_budget[0].positions[1, 0].tolist()
    torch.testing.assert_close(by_budget[0].tokens[1, 0], dense[0].tokens[1, row * 16 + col])


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda b: b.grids([0, 9], 2), ValueError, "level 9 does not exist"),
    (lambda b: b.grids([-1, 0], 2), ValueError, "level -1 does not exist"),
    (lambda b: b.grids([2, 1], 2), ValueError, "not increasing"),
    (lambda b: b.grids([1, 1], 2), ValueError, "name level 1 twice"),
    (lambda b: b.grids([], 2), ValueError, "levels is empty"),
    (lambda b: b.grids([0.0], 2), TypeError, "must be ints"),
    (lambda b: b.grids("01", 2), TypeError, "sequence of ints"),
    (lambda b: b.grids([0], 0), ValueError, "patch must be a positive int, got 0"),
    (lambda b: b.grids([0], 2.0), TypeError, "patch must be a positive int, got 2.0"),
    (lambda b: b.grids([0], True), TypeError, "patch must be a positive int"),
    (lambda b: b.grids([3], 5), ValueError, "patch 5 is larger than level 3 (4x2)"),
    (lambda b: b.grids([0], 2000), ValueError, "over the limit"),
    (lambda b: b.grids([0]), ValueError, "tokens need a patch"),
    (lambda b: b.grids([0], 2, as_images=1), TypeError, "as_images must be a bool"),
    (lambda b: b.grids([0, 1], 4, masks=[np.ones((2, 4, 8), bool), None]), ValueError, "(2, 5, 8), got (2, 4, 8)"),
    (lambda b: b.grids([0, 1], 4, masks=[np.ones((2, 5, 8)), None]), TypeError, "must be bool"),
    (lambda b: b.grids([0, 1], 4, masks=[None]), ValueError, "one value (or None) per level (2), got 1"),
    (lambda b: b.grids([0, 1], 4, masks=np.ones((2, 5, 8), bool)), TypeError, "masks must be a list"),
    (lambda b: b.grids([0, 1], 4, masks=[np.zeros((2, 5, 8), bool), None]), ValueError,
     "level 0 of image 0 keeps no cell"),
    (lambda b: b.grids([0, 1], 4, relevance=np.zeros((20, 32)), threshold=0.5), ValueError,
     "level 0 of image 0 keeps no cell"),
    (lambda b: b.grids([0, 1], 4, relevance=np.ones((20, 32)), threshold=0.5, budget=3), ValueError,
     "exactly one of threshold"),
    (lambda b: b.grids([0, 1], 4, threshold=0.5), ValueError, "pass relevance= too"),
    (lambda b: b.grids([0, 1], 4, relevance=np.ones((20, 32)), threshold=1.5), ValueError, "threshold of level 0"),
    (lambda b: b.grids([0, 1], 4, relevance=np.ones((20, 32)), budget=0), ValueError, "budget of level 0"),
    (lambda b: b.grids([0, 1], 4, relevance=[np.ones((20, 32))], budget=2), ValueError, "one relevance map per image"),
    (lambda b: b.grids([0, 1], 4, relevance=np.full((20, 32), np.nan), budget=2), ValueError, "NaN"),
    (lambda b: b.grids([0, 1], 4, as_images=True, relevance=np.ones((20, 32)), budget=2), ValueError,
     "level images are always whole"),
    (lambda b: b.grids([0], 4, device="gpu"), ValueError, "device must be"),
    (lambda b: b.grids([1], 4, relevance=np.ones((20, 32)), budget=3), ValueError, "pass [3] to select cells"),
])
def test_bad_requests_are_refused_before_anything_is_allocated(ctx, monkeypatch, call, error, words):
    """Refused before the output buffer is asked for, any scratch buffer made or any texture created."""
    images = images_of(np.random.default_rng(9), [(32, 20), (32, 20)], 2, "uint8")
    with ctx.pyramids(images) as batch:
        touched = []
        real_buffer, real_scratch = ctx.persistent_buffer, glmip.grids.scratch
        monkeypatch.setattr(ctx, "persistent_buffer", lambda *a: (touched.append("buffer"), real_buffer(*a))[1])
        monkeypatch.setattr(glmip.grids, "scratch", lambda *a: (touched.append("scratch"), real_scratch(*a))[1])
        textures = ctx.live_textures
        batch.grids([0], 1)
        assert {"buffer", "scratch"} <= set(touched)  # the watch sees a good call
        touched.clear()
        with pytest.raises(error) as raised:
            call(batch)
        assert words in str(raised.value)
        assert touched == [] and ctx.live_textures == textures


def test_a_closed_batch_is_refused(ctx):
    batch = ctx.pyramids([np.zeros((8, 8, 1), np.uint8)])
    batch.close()
    with pytest.raises(glmip.ClosedError):
        batch.grids([0], 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU machine has none)")
def test_grids_reach_a_cuda_device(ctx):
    image = np.random.default_rng(10).integers(0, 256, (32, 32, 3), np.uint8)
    with ctx.pyramids([image]) as batch:
        host = batch.grids([0, 1], 4)
        cuda = batch.grids([0, 1], 4, device="cuda")
    for a, b in zip(host, cuda, strict=True):
        assert b.tokens.is_cuda and b.positions.is_cuda and b.valid.is_cuda
        torch.testing.assert_close(b.tokens.cpu(), a.tokens, rtol=0, atol=0)
