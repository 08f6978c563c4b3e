"""Multi-scale input from one pyramid: the patch grids of four mip levels, a sparse pyramid that keeps only the
cells near a gaze point at the finer levels, and `glmip.hierarchy.MipViT` reading both.

    python examples/multiscale.py [--patch 16] [--gaze 0.45,0.35] [--budget 40,20,12] [--picture PNG] [IMAGE]

`batch.grids([0, 1, 2, 3], patch)` cuts every level into patch x patch cells in one dispatch (a level the
patch does not divide is zero-padded at its right and bottom); with `relevance=` and `budget=` the finer
levels keep only their most relevant cells while the coarsest keeps all. The model's weights are random
(seeded): nothing is downloaded. `--picture` draws the levels with their grids (top) and the sparse pyramid
(bottom), as in docs/multiscale.png.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import glmip
from glmip.hierarchy import MipViT

LEVELS = [0, 1, 2, 3]


def parse_numbers(text: str, kind: type) -> tuple[Any, ...]:
    return tuple(kind(v) for v in text.split(","))


def main(argv: Sequence[str] | None = None, ctx: glmip.Context | None = None) -> dict[str, Any]:
    """Build the grids and the sparse pyramid, run MipViT on both, print the token counts; returns them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(glmip.DEFAULT_IMAGE))
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--gaze", type=lambda t: parse_numbers(t, float), default=(0.45, 0.35), help="uv X,Y")
    parser.add_argument("--budget", type=lambda t: parse_numbers(t, int), default=(40, 20, 12),
                        help="cells kept at levels 0,1,2 (level 3 keeps all)")
    parser.add_argument("--picture", default=None, help="write the figure to this PNG")
    args = parser.parse_args(argv)
    if len(args.budget) != len(LEVELS) - 1:
        parser.error(f"--budget needs {len(LEVELS) - 1} numbers, got {args.budget}")
    image = glmip.image.as_image_array(args.image)
    height, width = image.shape[:2]
    relevance = glmip.gaze((width, height), args.gaze)
    own = ctx is None
    ctx = glmip.Context() if own else ctx
    try:
        with ctx.pyramids([image]) as batch:
            dense = batch.grids(LEVELS, args.patch)
            sparse = batch.grids(LEVELS, args.patch, relevance=relevance, budget=[*args.budget, None])
            pictures = batch.grids(LEVELS, args.patch, as_images=True)
    finally:
        if own:
            ctx.close()
    torch.manual_seed(0)
    model = MipViT(patch=args.patch, channels=image.shape[2], dims=(32, 64, 96, 128), heads=(2, 2, 4, 4),
                   classes=10).eval()
    with torch.no_grad():
        logits = {"dense": model(dense), "sparse": model(sparse)}
    for name, grids in (("dense", dense), ("sparse", sparse)):
        counts = " + ".join(f"{int(g.valid.sum())} (level {g.level})" for g in grids)
        print(f"{name:6s} tokens: {counts} = {sum(int(g.valid.sum()) for g in grids)}; "
              f"logits {tuple(logits[name].shape)}")
    if args.picture:
        print(f"wrote {draw(pictures, sparse, relevance, args.patch, args.picture)}")
    return {"dense": dense, "sparse": sparse, "logits": logits, "images": pictures}


def draw(pictures: list[Any], sparse: list[Any], relevance: np.ndarray, patch: int, path: str) -> str:
    """Top: every level (zero padding shown black) with its cell grid; bottom: the sparse pyramid, dropped
    cells dimmed, kept cells outlined, the gaze relevance as contours on level 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(2, len(pictures), figsize=(4 * len(pictures), 6.2))
    for column, (level, kept) in enumerate(zip(pictures, sparse, strict=True)):
        picture = level.image[0].permute(1, 2, 0).clamp(0, 1).numpy()
        rows, cols = kept.grid[0].tolist()
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(picture, interpolation="nearest")
        for r in range(rows + 1):
            top.axhline(r * patch - 0.5, color="white", linewidth=0.4)
        for c in range(cols + 1):
            top.axvline(c * patch - 0.5, color="white", linewidth=0.4)
        h, w = level.sizes[0].tolist()
        top.set_title(f"level {level.level}: {w}x{h}, {rows}x{cols} cells of {patch}²", fontsize=9)
        bottom.imshow(picture * 0.25, interpolation="nearest")
        for (r, c), valid in zip(kept.positions[0].tolist(), kept.valid[0].tolist(), strict=True):
            if valid:
                ys, xs = slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)
                bottom.imshow(picture[ys, xs], extent=(xs.start - 0.5, xs.stop - 0.5, ys.stop - 0.5, ys.start - 0.5),
                              interpolation="nearest")
                bottom.add_patch(Rectangle((c * patch - 0.5, r * patch - 0.5), patch, patch, fill=False,
                                           edgecolor="yellow", linewidth=0.6))
        bottom.set_xlim(-0.5, picture.shape[1] - 0.5)
        bottom.set_ylim(picture.shape[0] - 0.5, -0.5)
        if column == 0:
            ys = (np.arange(relevance.shape[0]) + 0.5) * h / relevance.shape[0] - 0.5
            xs = (np.arange(relevance.shape[1]) + 0.5) * w / relevance.shape[1] - 0.5
            bottom.contour(xs, ys, relevance, levels=[0.25, 0.5, 0.75], colors="cyan", linewidths=0.6)
        bottom.set_title(f"sparse: {int(kept.valid.sum())} of {rows * cols} cells kept", fontsize=9)
        for axis in (top, bottom):
            axis.set_xticks([])
            axis.set_yticks([])
    fig.suptitle("batch.grids([0, 1, 2, 3], patch): one dispatch; below, relevance= (gaze) with budget= per level",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
