"""The FPN example (examples/fpn.py): glmip's level grids, embedded per level, fused by torchvision's
`FeaturePyramidNetwork`. torchvision is installed only in the integration environment
(scripts/integration.sh); elsewhere this file skips."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision", reason="torchvision is installed only in the integration environment")

LEVELS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def example():
    path = Path(__file__).resolve().parents[1] / "examples" / "fpn.py"
    spec = importlib.util.spec_from_file_location("fpn_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_runs_and_fuses_with_torchvision_s_fpn(ctx, example, capsys):
    from torchvision.ops import FeaturePyramidNetwork

    found = example.main(["--patch", "4", "--size", "64", "--batch", "2"], ctx=ctx)
    assert isinstance(found["model"].fpn, FeaturePyramidNetwork)
    assert [tuple(m.shape) for m in found["fused"].values()] == [(2, 64, n, n) for n in (16, 8, 4, 2)]
    assert tuple(found["logits"].shape) == (2, 5, 16, 16)
    assert "-> logits (2, 5, 16, 16)" in capsys.readouterr().out


def test_every_level_reaches_the_finest_logits(ctx, example):
    """Top-down fusion: gradients reach every level's patch embedding, and changing only the coarsest level's
    cells changes the finest map's logits."""
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
    with ctx.pyramids(images) as batch:
        grids = batch.grids(LEVELS, 4)
    torch.manual_seed(0)
    model = example.MipFPN(4)
    logits, _ = model(grids)
    logits.square().sum().backward()
    for level, embed in zip(LEVELS, model.embeds, strict=True):
        assert embed.weight.grad is not None and embed.weight.grad.abs().sum() > 0, f"level {level}"
    changed = [*grids[:3], dataclasses.replace(grids[3], tokens=torch.rand_like(grids[3].tokens))]
    with torch.no_grad():
        assert (model(changed)[0] - model(grids)[0]).abs().max() > 1e-4


def test_a_sparse_fine_level_that_keeps_everything_equals_the_dense_run(ctx, example):
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), np.uint8)
    with ctx.pyramids(images) as batch:
        dense = batch.grids(LEVELS, 4)
        sparse = batch.grids(LEVELS, 4, masks=[np.ones((2, 16, 16), bool), None, None, None])
        dropped = batch.grids(LEVELS, 4, masks=[np.eye(16, dtype=bool)[None].repeat(2, 0), None, None, None])
    torch.manual_seed(0)
    model = example.MipFPN(4).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(sparse)[0], model(dense)[0], rtol=0, atol=0)
        assert dropped[0].tokens.shape[1] == 16 and (model(dropped)[0] - model(dense)[0]).abs().max() > 1e-4
