"""Coarse-to-fine refinement: splits keep the cover exact and the budget, follow the scores monotonically,
match the one-at-a-time reference, and the new tokens sampled alone merge into what sampling from scratch gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip import reference
from glmip.allocate import allocate
from glmip.refine import cover_layout, refine, refine_batch

cases = st.fixed_dictionaries({
    "width": st.integers(1, 300), "height": st.integers(1, 300), "budget": st.integers(1, 200),
    "patch": st.sampled_from([4, 8, 16]), "seed": st.integers(0, 2**16), "extra": st.integers(0, 120),
    "ties": st.booleans(), "min_level": st.sampled_from([0, 0, 1]),
})


def quadtree(case) -> glmip.TokenLayout | None:
    """A mixed-level quadtree layout from allocate (random relevance), or None where the budget cannot cover."""
    relevance = np.random.default_rng(case["seed"]).random((23, 31)).astype(np.float32) ** 3
    try:
        return allocate(relevance, budget=case["budget"], patch=case["patch"], min_level=case["min_level"],
                        image_size=(case["width"], case["height"]))
    except ValueError as error:
        assert "cannot cover" in str(error)
        return None


def random_scores(case, n: int) -> np.ndarray:
    rng = np.random.default_rng(case["seed"] + 1)
    return rng.integers(0, 3, n).astype(np.float64) if case["ties"] else rng.random(n)


@settings(max_examples=60, deadline=None)
@given(case=cases)
def test_cover_exact_budget_kept_and_equal_to_the_reference(case):
    layout = quadtree(case)
    if layout is None:
        return
    scores = random_scores(case, len(layout))
    budget = len(layout) + case["extra"]
    result = refine(layout, scores, budget, min_level=case["min_level"])
    refined = result.layout
    assert len(layout) <= len(refined) <= budget
    coverage = refined.coverage()
    assert coverage.min() == 1 and coverage.max() == 1, "no gaps, no overlaps"
    np.testing.assert_array_equal(refined.size, case["patch"] * 2.0 ** refined.level)
    assert (refined.level >= case["min_level"]).all()
    expected, new = reference.refine_greedy(layout, scores, budget, case["min_level"])
    for name in ("cx", "cy", "size", "level"):
        np.testing.assert_array_equal(getattr(refined, name), getattr(expected, name))
    np.testing.assert_array_equal(result.new, np.nonzero(new)[0])
    # the bookkeeping: kept tokens are unchanged and where it says; new ones are children of split ones
    for name in ("cx", "cy", "size", "level"):
        np.testing.assert_array_equal(getattr(refined, name)[result.kept_at], getattr(layout, name)[result.kept])
    assert sorted(np.concatenate([result.kept, result.split]).tolist()) == list(range(len(layout)))
    parents = layout.boxes()[result.split]
    for box, level in zip(refined.boxes()[result.new], refined.level[result.new], strict=True):
        inside = (parents[:, 0] <= box[0]) & (box[2] <= parents[:, 2]) & (parents[:, 1] <= box[1]) \
            & (box[3] <= parents[:, 3])
        assert inside.sum() == 1 and layout.level[result.split][inside][0] == level + 1
    assert len(refined) - len(layout) == len(result.new) - len(result.split)


@settings(max_examples=60, deadline=None)
@given(case=cases, pick=st.integers(0, 10**6), boost=st.floats(0.0, 3.0))
def test_monotone_raising_a_score_never_stops_its_split(case, pick, boost):
    layout = quadtree(case)
    if layout is None:
        return
    scores = random_scores(case, len(layout))
    budget = len(layout) + case["extra"] % (len(layout) + 1)  # often binding: not every token can split
    before = refine(layout, scores, budget, min_level=case["min_level"])
    if not len(before.split):
        return
    token = before.split[pick % len(before.split)]
    raised = scores.copy()
    raised[token] += boost
    after = refine(layout, raised, budget, min_level=case["min_level"])
    assert token in after.split


@settings(max_examples=30, deadline=None)
@given(case=cases)
def test_ties_are_deterministic_and_spread(case):
    """Equal scores: the same split on every call (and in a batch), coarser tokens first, as the reference."""
    layout = quadtree(case)
    if layout is None:
        return
    flat = np.ones(len(layout))
    budget = len(layout) + case["extra"]
    first = refine(layout, flat, budget, min_level=case["min_level"])
    again = refine_batch([layout, layout], [flat, flat.copy()], budget, min_level=case["min_level"])
    for other in again:
        np.testing.assert_array_equal(other.split, first.split)
    _, new = reference.refine_greedy(layout, flat, budget, case["min_level"])
    np.testing.assert_array_equal(first.new, np.nonzero(new)[0])


@settings(max_examples=25, deadline=None)
@given(first=cases, second=cases)
def test_a_batch_refines_each_image_as_alone_and_refinements_chain(first, second):
    layouts = [quadtree(first), quadtree(second)]
    if any(layout is None for layout in layouts):
        return
    scores = [random_scores(first, len(layouts[0])), random_scores(second, len(layouts[1]))]
    budgets = [len(layouts[0]) + first["extra"], len(layouts[1]) + second["extra"]]
    together = refine_batch(layouts, scores, budgets)
    for layout, score, budget, result in zip(layouts, scores, budgets, together, strict=True):
        alone = refine(layout, score, budget)
        np.testing.assert_array_equal(alone.layout.cx, result.layout.cx)
        np.testing.assert_array_equal(alone.new, result.new)
        again = refine(result.layout, np.random.default_rng(len(result.layout)).random(len(result.layout)),
                       budget + 30)
        coverage = again.layout.coverage()
        assert coverage.min() == 1 and coverage.max() == 1 and len(again.layout) <= budget + 30


def test_convention_ties_spread_over_the_image_not_packed_in_a_corner():
    layout = cover_layout((256, 256), 16, 2)  # 4 x 4 tokens of 64 px
    result = refine(layout, np.zeros(16), 16 + 4 * 3)
    centres = np.stack([layout.cx[result.split], layout.cy[result.split]], 1)
    assert len(result.split) == 4
    assert set(map(tuple, centres // 128)) == {(0, 0), (0, 1), (1, 0), (1, 1)}, "one split per quarter"


def test_convention_edge_tokens_split_into_the_quadrants_inside_the_image():
    """A 100 x 70 image, 32-px tokens: the bottom-right token (96..128, 64..96) has one quadrant inside, so its
    split costs nothing; a bottom-row token has two."""
    layout = cover_layout((100, 70), 8, 2)
    assert len(layout) == 12
    scores = np.zeros(12)
    scores[11] = 2.0
    scores[9] = 1.0
    result = refine(layout, scores, 13)
    assert result.split.tolist() == [9, 11]
    new = result.layout.boxes()[result.new]
    assert sorted(map(tuple, new)) == [(32, 64, 48, 80), (48, 64, 64, 80), (96, 64, 112, 80)]


def test_budget_takes_the_highest_scores_and_passes_over_splits_that_do_not_fit():
    layout = cover_layout((128, 128), 16, 2)  # 2 x 2 tokens of 64 px, each split adds 3
    result = refine(layout, np.array([0.1, 0.9, 0.5, 0.7]), 4 + 7)
    assert result.split.tolist() == [1, 3]
    assert len(result.layout) == 10


def test_tokens_at_min_level_stay():
    layout = cover_layout((64, 64), 16, 0)
    result = refine(layout, np.ones(len(layout)), 100)
    assert len(result.new) == 0 and len(result.layout) == len(layout)
    coarse = cover_layout((64, 64), 16, 1)
    assert len(refine(coarse, np.ones(4), 100, min_level=1).new) == 0
    assert len(refine(coarse, np.ones(4), 100, min_level=0).new) == 16


def test_torch_scores_and_per_image_budgets():
    layouts = [cover_layout((64, 64), 8, 2), cover_layout((96, 32), 8, 1)]
    scores = [torch.rand(len(layouts[0]), requires_grad=True), torch.rand(len(layouts[1]))]
    results = refine_batch(layouts, scores, [len(layouts[0]) + 3, len(layouts[1])])
    assert len(results[0].new) == 4 and len(results[1].new) == 0


@pytest.mark.parametrize(("change", "kind", "words"), [
    (lambda lay, s, b: (lay, s[:-1], b), ValueError, "one score per token"),
    (lambda lay, s, b: (lay, np.where(np.arange(len(s)) == 2, np.nan, s), b), ValueError, "token 2 has nan"),
    (lambda lay, s, b: (lay, -s, b), ValueError, "finite and >= 0"),
    (lambda lay, s, b: (lay, s.astype(bool), b), TypeError, "numbers"),
    (lambda lay, s, b: (lay, s, len(lay) - 1), ValueError, "below the 16 tokens"),
    (lambda lay, s, b: (lay, s, 0), ValueError, "positive int"),
    (lambda lay, s, b: (lay, s, 2.5), TypeError, "budget"),
    (lambda lay, s, b: (glmip.TokenLayout.grid((70, 70), 16, 0), np.ones(16), b), ValueError, "exactly once"),
    (lambda lay, s, b: (glmip.TokenLayout(lay.cx, lay.cy, lay.size, lay.level, 16, (200, 128)), s, b), ValueError,
     "another image size"),
    (lambda lay, s, b: (glmip.TokenLayout(lay.cx + 1, lay.cy, lay.size, lay.level, 16, (128, 128)), s, b), ValueError,
     "not a quadtree cell"),
    (lambda lay, s, b: (glmip.TokenLayout(lay.cx, lay.cy, lay.size, lay.level + 0.5, 16, (128, 128)), s, b),
     ValueError, "integer levels"),
    (lambda lay, s, b: ("layout", s, b), TypeError, "glmip.TokenLayout"),
])
def test_bad_input_names_the_value(change, kind, words):
    layout = cover_layout((128, 128), 16, 1)
    args = change(layout, np.linspace(0, 1, len(layout)), 40)
    with pytest.raises(kind, match=words):
        refine(*args)


def test_bad_input_past_level_zero_and_mismatched_lists():
    layout = cover_layout((64, 64), 16, 1)
    doubled = glmip.TokenLayout(np.r_[layout.cx[:3], layout.cx[0]], np.r_[layout.cy[:3], layout.cy[0]], layout.size,
                                layout.level, 16, (64, 64))  # the right area, one cell twice and one gap
    with pytest.raises(ValueError, match="exactly once"):
        refine(doubled, np.ones(4), 10)
    nested = glmip.TokenLayout(np.r_[layout.cx[:3], 8, 24, 8, 24], np.r_[layout.cy[:3], 8, 8, 24, 24],
                               np.r_[layout.size[:3], [16.0] * 4], np.r_[layout.level[:3], [0] * 4], 16, (64, 64))
    with pytest.raises(ValueError, match="exactly once"):  # cell 0 and its four quadrants: the right area again
        refine(nested, np.ones(7), 10)
    with pytest.raises(ValueError, match="past it"):
        refine(layout, np.ones(4), 10, min_level=-1)
    with pytest.raises(ValueError, match="integer levels in 2"):
        refine(layout, np.ones(4), 10, min_level=2)
    with pytest.raises(ValueError, match="not 32x64"):
        refine(layout, np.ones(4), 10, image_size=(32, 64))
    with pytest.raises(ValueError, match="one score vector per image"):
        refine_batch([layout, layout], [np.ones(4)], 10)
    with pytest.raises(ValueError, match="one per image"):
        refine_batch([layout, layout], [np.ones(4)] * 2, [10])
    with pytest.raises(ValueError, match="below the 4 tokens layout 1"):
        refine_batch([layout, layout], [np.ones(4)] * 2, [10, 3])


# -- sampling only the new tokens --------------------------------------------------------------
def images_of_two_sizes() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (96, 128, 3), np.uint8), rng.integers(0, 256, (70, 100, 3), np.uint8),
            rng.integers(0, 256, (96, 128, 3), np.uint8)]


@pytest.mark.parametrize("filter", ["trilinear", "anisotropic"])
def test_new_tokens_merge_into_exactly_what_sampling_from_scratch_gives(ctx, filter):
    from glmip.refine import merge_refined, sample_refined
    from glmip.token_batch import TokenBatch

    images = images_of_two_sizes()
    with ctx.pyramids(images) as batch:
        layouts = [cover_layout(size, 8, 2) for size in batch.image_sizes]
        coarse = TokenBatch.from_sampled(batch.tokens(layouts, filter=filter), layouts)
        rng = np.random.default_rng(1)
        scores = [rng.random(len(layout)) for layout in layouts]
        first = refine_batch(layouts, scores, [len(layouts[0]) + 9, len(layouts[1]) + 5, len(layouts[2])])
        assert len(first[2].new) == 0, "an image with nothing new is merged too"
        refined = sample_refined(batch, coarse, first, filter=filter)
        second = refine_batch(list(refined.layouts), [np.arange(len(r.layout), dtype=float) for r in first], 60)
        finer = sample_refined(batch, refined, second, filter=filter)
        for result, step in ((refined, first), (finer, second)):
            scratch = batch.tokens([r.layout for r in step], filter=filter)
            assert torch.equal(result.tokens, scratch)
            assert torch.equal(result.cu_seqlens, TokenBatch.from_sampled(scratch, [r.layout for r in step]).cu_seqlens)
            assert torch.equal(result.levels, TokenBatch.from_sampled(scratch, [r.layout for r in step]).levels)
        # merge_refined alone, from new tokens sampled by the caller
        new = batch.tokens([r.new_layout for r in first], filter=filter)
        assert torch.equal(merge_refined(coarse, new, first).tokens, refined.tokens)
        assert len(new) == sum(len(r.new) for r in first) < len(refined.tokens)


def test_sampling_checks_everything_before_it_samples(ctx):
    from glmip.refine import merge_refined, sample_refined
    from glmip.token_batch import TokenBatch

    images = images_of_two_sizes()
    with ctx.pyramids(images) as batch:
        layouts = [cover_layout(size, 8, 2) for size in batch.image_sizes]
        coarse = TokenBatch.from_sampled(batch.tokens(layouts), layouts)
        steps = refine_batch(layouts, [np.ones(len(layout)) for layout in layouts], 40)
        with pytest.raises(ValueError, match="3 refinements for a batch of 2"):
            sample_refined(batch, TokenBatch.from_sampled(coarse.tokens[:len(layouts[0]) + len(layouts[1])],
                                                          layouts[:2]), steps)
        swapped = [steps[1], steps[0], steps[2]]
        with pytest.raises(ValueError, match="refinement 0 refines a layout of"):
            sample_refined(batch, coarse, swapped)
        with pytest.raises(ValueError, match="new_tokens must be a tensor of shape"):
            merge_refined(coarse, torch.zeros(3, 3, 8, 8), steps)
        with pytest.raises(TypeError, match="PyramidBatch"):
            sample_refined(images, coarse, steps)
    with ctx.pyramids(images[:2] + images[1:2]) as other:
        with pytest.raises(ValueError, match="image 2 of the batch is 100x70"):
            sample_refined(other, coarse, steps)


# -- the scorer --------------------------------------------------------------------------------
def small_classifier(patch: int = 8) -> torch.nn.Module:
    from glmip.models import TokenClassifier

    torch.manual_seed(0)
    return TokenClassifier(patch=patch, dim=32, depth=2, heads=4, classes=5).eval()


def random_batch(lengths: list[int], patch: int = 8, seed: int = 0):
    from glmip.token_batch import TokenBatch

    generator = torch.Generator().manual_seed(seed)
    layouts = [cover_layout((patch * 4 * n, patch * 4), patch, 2) for n in lengths]
    tokens = [torch.rand(n, 3, patch, patch, generator=generator) for n in lengths]
    return TokenBatch.from_parts(tokens, layouts)


def test_class_attention_shapes_range_and_padded_batch_equals_alone():
    from glmip.nn import class_attention

    model = small_classifier()
    batch = random_batch([3, 7, 5])
    with torch.no_grad():
        scores = class_attention(model, batch)
        assert [tuple(s.shape) for s in scores] == [(3,), (7,), (5,)]
        assert all(s.dtype == torch.float32 and (s >= 0).all() and s.sum() < 1 for s in scores)
        for b in range(3):
            torch.testing.assert_close(scores[b], class_attention(model, _image(batch, b))[0], atol=1e-5, rtol=0)


def _image(batch, index):
    from glmip.token_batch import TokenBatch

    tokens, layout = batch[index]
    return TokenBatch.from_parts([tokens], [layout])


def test_class_attention_equals_the_last_block_computed_by_hand():
    from glmip.nn import class_attention

    model = small_classifier()
    batch = random_batch([6])
    with torch.no_grad():
        x, _ = model.embed(batch)
        for block in model.encoder.blocks[:-1]:
            x = block(x)
        last = model.encoder.blocks[-1]
        q, k, _ = last.qkv(last.norm1(x)).view(1, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
        expected = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / 8 ** 0.5, -1)  # (1, heads, 1, 7)
        expected = expected[0, :, 0].mean(0)[1:]
        torch.testing.assert_close(class_attention(model, batch)[0], expected, atol=1e-6, rtol=0)


def test_scored_forward_gives_forward_padded_logits_and_class_attention_scores():
    """One padded forward: the logits `forward_padded` gives, and per real token the score `class_attention` gives
    for that image alone (1e-5), 0 at padding; gradients reach the weights through the logits only."""
    from glmip.nn import class_attention, scored_forward

    model = small_classifier()
    batch = random_batch([3, 7, 5], seed=4)
    length = 7
    tokens = torch.zeros(3, length, 3, 8, 8)
    levels, positions = torch.zeros(3, length), torch.zeros(3, length, 2)
    valid = torch.zeros(3, length, dtype=torch.bool)
    for b in range(3):
        part, layout = batch[b]
        n = len(layout)
        tokens[b, :n], valid[b, :n] = part, True
        levels[b, :n] = torch.from_numpy(np.asarray(layout.level, np.float32))
        positions[b, :n] = torch.from_numpy(np.stack([layout.cx, layout.cy], 1).astype(np.float32))
    logits, scores = scored_forward(model, tokens, levels, positions, valid)
    expected_logits, _ = model.forward_padded(tokens, levels, positions, valid)
    torch.testing.assert_close(logits, expected_logits, atol=1e-6, rtol=0)
    assert scores.shape == (3, length) and not scores.requires_grad and logits.requires_grad
    with torch.no_grad():
        for b, n in enumerate(batch.lengths):
            torch.testing.assert_close(scores[b, :n], class_attention(model, _image(batch, b))[0], atol=1e-5, rtol=0)
            assert torch.all(scores[b, n:] == 0)
    logits.sum().backward()
    assert model.head.weight.grad is not None
    with pytest.raises(TypeError, match="TokenClassifier"):
        from glmip.models import TinyViT

        scored_forward(TinyViT(32, 1, 4), tokens, levels, positions, valid)


def test_class_attention_refuses_what_it_cannot_score():
    from glmip.models import TinyViT
    from glmip.nn import class_attention

    with pytest.raises(TypeError, match="TinyViT"):
        class_attention(TinyViT(32, 1, 4), random_batch([2]))
    with pytest.raises(TypeError, match="TokenBatch"):
        class_attention(small_classifier(), torch.zeros(2, 3, 8, 8))


def test_class_attention_of_a_timm_vit_through_from_timm():
    timm = pytest.importorskip("timm", reason="timm is installed only in the integration environment")
    from glmip.nn import class_attention, from_timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64, num_classes=3)
    model = from_timm(vit).eval()
    batch = random_batch([4, 9], patch=16)
    with torch.no_grad():
        scores = class_attention(model, batch)
        assert [tuple(s.shape) for s in scores] == [(4,), (9,)]
        torch.testing.assert_close(scores[1], class_attention(model, _image(batch, 1))[0], atol=1e-5, rtol=0)
        # the hand computation through timm's own attention module (fused or not)
        x, valid = model.embed(_image(batch, 0))
        x = model.vit.norm_pre(x)
        x = model.vit.blocks[0](x)
        attention = model.vit.blocks[1].attn
        h = model.vit.blocks[1].norm1(x)
        q, k, _ = attention.qkv(h).view(1, 5, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((attention.q_norm(q)[:, :, :1] @ attention.k_norm(k).transpose(-1, -2))
                                * attention.scale, -1)
        torch.testing.assert_close(scores[0], weights[0, :, 0].mean(0)[1:], atol=1e-5, rtol=0)


# -- the example ------------------------------------------------------------------------------
def test_the_coarse_to_fine_example_runs_small_and_samples_only_new_tokens(ctx, capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "coarse_to_fine.py"
    spec = importlib.util.spec_from_file_location("coarse_to_fine_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    image = np.random.default_rng(3).integers(0, 256, (96, 160, 3), np.uint8)
    source = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(image).save(source)
    found = example.main([str(source), "--patch", "8", "--level", "3", "--budgets", "8,20,40"], ctx=ctx)
    passes = found["passes"]
    assert passes[0].tokens.lengths == (6, 6, 4)  # 64-px cells over 160x96 (3 x 2) and its 120x72 crop (2 x 2)
    for before, after in zip(passes, passes[1:], strict=False):
        assert all(len(a) <= 40 for a in after.tokens.layouts)
        assert after.sampled == sum(len(r.new) for r in after.refinements) < sum(after.tokens.lengths)
        assert sum(after.tokens.lengths) > sum(before.tokens.lengths)
    for step in passes:
        for layout in step.tokens.layouts:
            coverage = layout.coverage()
            assert coverage.min() == 1 and coverage.max() == 1
    assert tuple(found["logits"].shape) == (3, 10)
    assert "pass 3: tokens per image" in capsys.readouterr().out


def test_the_loop_checks_layouts_and_budgets_before_the_coarse_pass(ctx):
    from glmip.refine import refine_passes

    def never(_):
        raise AssertionError("nothing is scored or sampled")

    images = images_of_two_sizes()[:2]
    with ctx.pyramids(images) as batch:
        good = [cover_layout(size, 8, 2) for size in batch.image_sizes]
        with pytest.raises(ValueError, match="layout 1 was made for an image of 128x96"):
            refine_passes(batch, [good[0], good[0]], never, [40])
        with pytest.raises(ValueError, match="exactly once"):
            refine_passes(batch, [good[0], glmip.TokenLayout.grid((100, 70), 8, 2)], never, [40])
        with pytest.raises(ValueError, match="pass 2's budget 20 for image 0 is below"):
            refine_passes(batch, good, never, [40, 20])
        with pytest.raises(TypeError, match="budgets must be a list"):
            refine_passes(batch, good, never, 40)
