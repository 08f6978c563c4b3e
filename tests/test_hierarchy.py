"""`MipViT` and `CrossScaleAttention` over the grids of `PyramidBatch.grids`: shapes, gradients to every stage,
sparse runs that keep everything equal dense ones, an image's outputs independent of its batch (1e-5),
a fullgraph compile, and the relevance bias doing what its docstring says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import glmip
from glmip.hierarchy import CrossScaleAttention, MipViT, pool_to_parents

LEVELS = [0, 1, 2, 3]
HEADS = ["class", "mean"]


def images(seed: int, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), np.uint8) for w, h in sizes]


def model(seed: int = 0, **options) -> MipViT:
    torch.manual_seed(seed)
    return MipViT(patch=4, channels=3, dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), heads=(1, 2, 2, 4), classes=5,
                  **options).eval()


@pytest.mark.parametrize("head", HEADS)
def test_shapes_of_every_stage_and_the_logits(ctx, head):
    with ctx.pyramids(images(0, [(64, 64)] * 3)) as batch:
        grids = batch.grids(LEVELS, 4)
    net = model(head=head)
    stages = net.stages(grids)
    assert [tuple(x.shape) for x, _ in stages] == [(3, 256, 16), (3, 64, 32), (3, 16, 48), (3, 4, 64)]
    assert tuple(net(grids).shape) == (3, 5)


@pytest.mark.parametrize("head", HEADS)
def test_gradients_reach_every_stage(ctx, head):
    with ctx.pyramids(images(1, [(48, 40), (32, 32)])) as batch:
        grids = batch.grids(LEVELS, 4, relevance=glmip.gaze((48, 40), (0.3, 0.3)), budget=[6, 4, 3, None])
    net = model(head=head).train()
    net(grids).square().sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("head", HEADS)
def test_a_sparse_run_that_keeps_everything_equals_the_dense_run(ctx, head):
    with ctx.pyramids(images(2, [(64, 48), (64, 48)])) as batch:
        dense = batch.grids(LEVELS, 4)
        keep_all = [np.ones((2, *g.shape), bool) for g in dense]
        sparse = batch.grids(LEVELS, 4, masks=keep_all)
        everything = batch.grids(LEVELS, 4, relevance=np.ones((48, 64)), threshold=0.0)
    net = model(head=head)
    with torch.no_grad():
        torch.testing.assert_close(net(sparse), net(dense), rtol=0, atol=0)
        torch.testing.assert_close(net(everything), net(dense), rtol=0, atol=0)


@pytest.mark.parametrize("head", HEADS)
def test_the_order_of_a_stage_s_tokens_does_not_matter(ctx, head):
    """Pooling follows positions, not token order: shuffling the finest stage's tokens (with their positions)
    changes nothing but float summation order."""
    with ctx.pyramids(images(3, [(64, 64)])) as batch:
        grids = batch.grids(LEVELS, 4)
    order = torch.randperm(grids[0].tokens.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = dataclasses.replace(grids[0], tokens=grids[0].tokens[:, order], positions=grids[0].positions[:, order],
                                   valid=grids[0].valid[:, order])
    net = model(head=head)
    with torch.no_grad():
        torch.testing.assert_close(net([shuffled, *grids[1:]]), net(grids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_dropping_fine_cells_changes_the_logits(ctx, head):
    """The sparse path is not a no-op: a budget on the fine stages gives other logits than the dense run."""
    with ctx.pyramids(images(4, [(64, 64)])) as batch:
        dense = batch.grids(LEVELS, 4)
        sparse = batch.grids(LEVELS, 4, relevance=glmip.gaze((64, 64), (0.2, 0.2)), budget=[8, 4, None, None])
    assert sparse[0].tokens.shape[1] == 8 and sparse[2].tokens.shape == dense[2].tokens.shape
    net = model(head=head)
    with torch.no_grad():
        assert (net(sparse) - net(dense)).abs().max() > 1e-3


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("sparse", [False, True])
def test_an_image_gets_the_same_logits_in_a_padded_batch_as_alone(ctx, sparse, head):
    pictures = images(5, [(64, 64), (40, 56), (64, 64)])
    maps = [glmip.gaze((w, h), point) for (w, h), point in
            zip([(64, 64), (40, 56), (64, 64)], [(0.2, 0.7), (0.5, 0.5), (0.9, 0.1)], strict=True)]
    budgets = [[9, 5, None, None], [30, 7, 3, None], [4, 2, None, None]]
    net = model(head=head)

    def grids_of(indices: list[int]) -> list:
        with ctx.pyramids([pictures[i] for i in indices]) as batch:
            if not sparse:
                return batch.grids(LEVELS, 4)
            selected = [batch.grids(LEVELS, 4, relevance=[maps[i] for i in indices], budget=budgets[i])
                        for i in indices]
        return [dataclasses.replace(per_level[0], **{  # image k keeps its own budget: stitch the rows together
            name: pad_cat([s[li].__dict__[name][k] for k, s in enumerate(selected)], name)
            for name in ("tokens", "positions", "valid")}) for li, per_level in enumerate(zip(*selected, strict=True))]

    with torch.no_grad():
        together = net(grids_of([0, 1, 2]))
        for i in range(3):
            torch.testing.assert_close(together[i:i + 1], net(grids_of([i])), rtol=1e-5, atol=1e-5)


def pad_cat(rows: list[torch.Tensor], name: str) -> torch.Tensor:
    """Stack per-image rows (N_b, ...) into (B, max N, ...), padding as `LevelGrid` pads."""
    longest = max(r.shape[0] for r in rows)
    fill = {"tokens": 0, "positions": -1, "valid": False}[name]
    return torch.stack([torch.cat([r, torch.full((longest - r.shape[0], *r.shape[1:]), fill, dtype=r.dtype)])
                        for r in rows])


def test_pool_to_parents_takes_the_mean_of_valid_children_and_clamps_odd_edges():
    x = torch.arange(1.0, 7.0).view(1, 6, 1)
    positions = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [2, 2]]])
    valid = torch.tensor([[True, True, True, False, True, True]])
    parents = torch.tensor([[[0, 0], [0, 1], [-1, -1]]])
    pooled = pool_to_parents(x, positions, valid, parents, torch.tensor([[1, 1]]), (1, 2))
    # grid of 1 x 1 at the parent level: every child clamps to (0, 0); (0, 1) exists only in the padded shape
    assert pooled.flatten().tolist() == [pytest.approx((1 + 2 + 3 + 5 + 6) / 5), 0.0, 0.0]
    pooled = pool_to_parents(x, positions, valid, parents[:, :2], torch.tensor([[2, 2]]), (2, 2))
    assert pooled.flatten().tolist() == [pytest.approx(2.0), pytest.approx(5.0)]


@pytest.mark.parametrize("head", HEADS)
def test_mipvit_compiles_with_fullgraph(ctx, head):
    """Traced whole by dynamo (no graph break) and run through AOTAutograd with the 'aot_eager' backend: the
    inductor backend would compile C++ on this 2-core machine for minutes; fullgraph is about the trace."""
    with ctx.pyramids(images(6, [(64, 64), (48, 40)])) as batch:
        grids = batch.grids(LEVELS, 4, relevance=glmip.gaze((64, 64), (0.5, 0.5)), budget=[10, 6, None, None])
    net = model(head=head)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(grids), net(grids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("grids_of", "words"), [
    (lambda g: g[:3], "needs one grid per stage"),
    (lambda g: [g[0], g[2], g[1], g[3]], "consecutive levels"),
])
def test_mipvit_refuses_grids_it_cannot_read(ctx, grids_of, words):
    with ctx.pyramids(images(7, [(32, 32)])) as batch:
        grids = batch.grids(LEVELS, 2)
        with pytest.raises(ValueError, match="needs \\(B, N, 3, 4, 4\\)"):
            model()(grids)
        grids = batch.grids(LEVELS, 4)
    with pytest.raises(ValueError, match=words):
        model()(grids_of(grids))
    with pytest.raises(ValueError, match="multiple of 4"):
        MipViT(dims=(16, 30, 48, 64))
    with pytest.raises(ValueError, match="one value per channel"):
        MipViT(mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match="give both mean and std"):
        MipViT(mean=(0.5, 0.5, 0.5), std=None)
    with pytest.raises(ValueError, match="head must be 'mean' or 'class', got 'cls'"):
        MipViT(head="cls")


def test_the_per_channel_normalisation_is_applied_to_every_stage(ctx):
    """The default model on [0, 1] grids equals an unnormalising one (mean=None, same weights) on grids the
    caller normalised with ImageNet's mean and std."""
    with ctx.pyramids(images(9, [(64, 48)])) as batch:
        grids = batch.grids(LEVELS, 4)
    mean, std = torch.tensor(glmip.nn.IMAGENET_MEAN), torch.tensor(glmip.nn.IMAGENET_STD)
    normalised = [dataclasses.replace(g, tokens=(g.tokens - mean[:, None, None]) / std[:, None, None]) for g in grids]
    plain = model(mean=None, std=None)
    with torch.no_grad():
        torch.testing.assert_close(plain(normalised), model()(grids), rtol=1e-5, atol=1e-5)
        assert (plain(grids) - model()(grids)).abs().max() > 1e-3


def attention(seed: int = 0) -> CrossScaleAttention:
    torch.manual_seed(seed)
    return CrossScaleAttention(dim=16, heads=2).eval()


def test_cross_scale_attention_in_a_padded_batch_equals_alone():
    torch.manual_seed(1)
    block = attention()
    lengths = [(5, 9), (3, 14), (7, 4)]
    queries = [torch.randn(q, 16) for q, _ in lengths]
    contexts = [torch.randn(k, 16) for _, k in lengths]
    relevances = [torch.rand(k) for _, k in lengths]
    x = pad_cat(queries, "tokens")
    context = pad_cat(contexts, "tokens")
    valid = pad_cat([torch.ones(k, dtype=torch.bool) for _, k in lengths], "valid")
    relevance = pad_cat(relevances, "tokens")
    with torch.no_grad():
        together = block(x, context, valid, relevance)
        for i, (q, _) in enumerate(lengths):
            alone = block(queries[i][None], contexts[i][None], None, relevances[i][None])
            torch.testing.assert_close(together[i, :q], alone[0], rtol=1e-5, atol=1e-5)


def test_relevance_scales_each_key_s_share_of_attention():
    """softmax(q·k + log r): a key twice at relevance 0.5 weighs as the key once at relevance 1, and a
    relevance that is the same for every key changes nothing."""
    torch.manual_seed(2)
    block = attention()
    x, context = torch.randn(1, 4, 16), torch.randn(1, 6, 16)
    relevance = torch.rand(1, 6) * 0.5 + 0.5
    doubled = torch.cat([context, context[:, :1]], dim=1)
    split = torch.cat([relevance, relevance[:, :1] / 2], dim=1)
    split[0, 0] /= 2
    with torch.no_grad():
        torch.testing.assert_close(block(x, doubled, None, split), block(x, context, None, relevance),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(x, context, None, torch.full((1, 6), 0.3)), block(x, context),
                                   rtol=1e-5, atol=1e-5)
        assert (block(x, context, None, relevance) - block(x, context)).abs().max() > 1e-4


def test_cross_scale_attention_refuses_mismatched_shapes():
    block = attention()
    with pytest.raises(ValueError, match="context must be"):
        block(torch.randn(2, 3, 16), torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="relevance must be \\(2, 5\\)"):
        block(torch.randn(2, 3, 16), torch.randn(2, 5, 16), None, torch.rand(2, 4))


def test_the_multiscale_example_runs_headless(ctx, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "multiscale.py"
    spec = importlib.util.spec_from_file_location("multiscale_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    found = example.main(["--patch", "16", "--budget", "10,6,4"], ctx=ctx)
    assert [int(g.valid.sum()) for g in found["sparse"]] == [10, 6, 4, 20]
    assert [int(g.valid.sum()) for g in found["dense"]] == [950, 247, 70, 20]
    assert tuple(found["logits"]["sparse"].shape) == (1, 10)
    assert "sparse tokens: 10 (level 0)" in capsys.readouterr().out


def test_to_feature_map_puts_each_valid_cell_back_and_zeros_the_rest(ctx):
    from glmip.hierarchy import to_feature_map

    with ctx.pyramids(images(8, [(32, 24), (16, 16)])) as batch:
        dense = batch.grids([0], 4)[0]
        mask = np.zeros((2, 6, 8), bool)
        mask[0, 2, 5] = mask[1, 3, 1] = mask[1, 0, 0] = True
        sparse = batch.grids([0], 4, masks=[mask])[0]
    features = dense.tokens.flatten(2)
    grid = to_feature_map(features, dense.positions, dense.valid, dense.shape)
    assert tuple(grid.shape) == (2, 3 * 16, 6, 8)
    torch.testing.assert_close(grid[0].permute(1, 2, 0).reshape(48, -1), features[0], rtol=0, atol=0)
    torch.testing.assert_close(grid[1, :, :4, :4].permute(1, 2, 0).reshape(16, -1), features[1, :16], rtol=0, atol=0)
    assert not grid[1, :, 4:].any() and not grid[1, :, :, 4:].any()
    kept = to_feature_map(sparse.tokens.flatten(2), sparse.positions, sparse.valid, sparse.shape)
    expected = torch.zeros_like(grid)
    for b, r, c in ((0, 2, 5), (1, 3, 1), (1, 0, 0)):
        expected[b, :, r, c] = grid[b, :, r, c]
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)
