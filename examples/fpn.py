"""FPN + ViT patch embedding from one mip pyramid: every level's grid embedded by its own patch embedding,
fused top-down by torchvision's `FeaturePyramidNetwork` (lateral 1x1 convs, nearest upsampling, 3x3 output
convs), and a small dense head giving class logits per finest cell.

    python examples/fpn.py [--patch 8] [--size 128] [--batch 2]

Needs torchvision (scripts/integration.sh's environment has it). The pyramid's levels 0..3 are read in one
`batch.grids` call; each level's cells go through a Linear (a ViT patch embedding), `to_feature_map` puts
them back on their grid, and the FPN fuses the four maps. Weights are random (seeded); nothing is downloaded.

Convention: a batch of one image size (FPN's nearest upsampling resizes to each map's own size, so in a
padded mixed-size batch an image's border cells would depend on the padding).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

import glmip
from glmip.hierarchy import to_feature_map

LEVELS = [0, 1, 2, 3]


class MipFPN(nn.Module):
    """Per-level patch embeddings -> `torchvision.ops.FeaturePyramidNetwork` -> a dense head.

    Shapes: `forward(grids)` with one `LevelGrid` per level of `levels` (tokens (B, N_l, C, P, P)) ->
    (logits (B, classes, rows_0, cols_0) on the finest grid, the FPN's maps {str(level): (B, width,
    rows_l, cols_l)}). Cells a sparse pyramid dropped enter the FPN as zeros.
    """

    def __init__(self, patch: int, channels: int = 3, dims: Sequence[int] = (32, 48, 64, 96), width: int = 64,
                 classes: int = 5) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Linear(channels * patch * patch, d) for d in dims)
        self.fpn = FeaturePyramidNetwork(list(dims), width)
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, classes, 1))

    def forward(self, grids: Sequence[Any]) -> tuple[torch.Tensor, OrderedDict[str, torch.Tensor]]:
        maps = OrderedDict(
            (str(grid.level), to_feature_map(embed(grid.tokens.flatten(2)), grid.positions, grid.valid, grid.shape))
            for embed, grid in zip(self.embeds, grids, strict=True))
        fused = self.fpn(maps)
        return self.head(fused[str(grids[0].level)]), fused


def main(argv: Sequence[str] | None = None, ctx: glmip.Context | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8)
    own = ctx is None
    ctx = glmip.Context() if own else ctx
    try:
        with ctx.pyramids(images) as batch:
            grids = batch.grids(LEVELS, args.patch)
    finally:
        if own:
            ctx.close()
    torch.manual_seed(0)
    model = MipFPN(args.patch).eval()
    with torch.no_grad():
        logits, fused = model(grids)
    print(f"grids {[g.shape for g in grids]} -> FPN maps {[tuple(m.shape) for m in fused.values()]} -> "
          f"logits {tuple(logits.shape)}")
    return {"model": model, "grids": grids, "logits": logits, "fused": fused}


if __name__ == "__main__":
    main()
