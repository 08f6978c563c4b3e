"""A plain-torch ViT on glmip tokens, end to end: image -> pyramid -> gaze relevance -> token layout
-> tokens -> LodPatchEmbed -> transformer encoder (padding-masked) -> class logits.

    python examples/vit_tokens.py [--budget 256] [--gaze 0.45,0.35] [IMAGE]

Two views of the image make the batch: one at the gaze point with the whole budget, and a
cheaper glance at the mirrored point with half of it, so their token counts differ and the
padding mask is exercised. The weights are random (seeded): nothing is downloaded. To run a
pretrained timm ViT instead, pack the tokens with `glmip.TokenBatch.from_parts(tokens, layouts)`
and call `glmip.nn.forward_timm(model, batch)` (blocks and pooling with the mask applied).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import glmip
from glmip.nn import LodPatchEmbed, attention_mask


class Block(nn.Module):
    """Pre-norm transformer encoder block whose attention skips padding keys."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask: (B, 1, 1, L), True = attend
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """LodPatchEmbed (sin-cos position, one class token) + `depth` blocks + a linear head on the class token."""

    def __init__(self, patch: int = 16, dim: int = 192, depth: int = 4, heads: int = 3, classes: int = 1000) -> None:
        super().__init__()
        self.embed = LodPatchEmbed(patch, 3, dim, position="sincos", prefix_tokens=1)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: list[torch.Tensor], layouts: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits (B, classes), features (B, L, dim))."""
        x, valid = self.embed(tokens, layouts)
        mask = attention_mask(valid)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return self.head(x[:, 0]), x


def parse_point(text: str) -> tuple[float, float]:
    x, y = (float(v) for v in text.split(","))
    return x, y


def main(argv: Sequence[str] | None = None, ctx: glmip.Context | None = None) -> dict[str, Any]:
    """Run the pipeline, print what happened, and return the model, its inputs and outputs, and timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(glmip.DEFAULT_IMAGE))
    parser.add_argument("--budget", type=int, default=256, help="most tokens per view")
    parser.add_argument("--gaze", type=parse_point, default=(0.45, 0.35), help="first view's gaze point, uv X,Y")
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    own_context = ctx is None
    ctx = ctx or glmip.Context()
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        with ctx.pyramid(Path(args.image)) as pyramid:
            timings["pyramid"] = time.perf_counter() - start
            size, levels = (pyramid.width, pyramid.height), pyramid.levels
            views = [(args.gaze, args.budget), ((1 - args.gaze[0], 1 - args.gaze[1]), max(1, args.budget // 2))]
            start = time.perf_counter()
            layouts = [glmip.allocate(glmip.gaze(size, point), budget=budget) for point, budget in views]
            timings["allocate"] = time.perf_counter() - start
            start = time.perf_counter()
            tokens = [pyramid.tokens(layout) for layout in layouts]
            timings["tokens"] = time.perf_counter() - start
    finally:
        if own_context:
            ctx.close()
    model = TinyViT(depth=args.depth).eval()
    with torch.inference_mode():
        start = time.perf_counter()
        embedded, valid = model.embed(tokens, layouts)
        timings["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        logits, features = model(tokens, layouts)
        timings["vit"] = time.perf_counter() - start

    print(f"image {Path(args.image).name}: {size[0]}x{size[1]}, {levels} levels")
    for (point, budget), layout, item in zip(views, layouts, tokens, strict=True):
        used, counts = np.unique(layout.level, return_counts=True)
        per_level = ", ".join(f"{c} at {lv}" for lv, c in zip(used, counts, strict=True))
        print(f"gaze {point[0]:.2f},{point[1]:.2f}, budget {budget}: {len(layout)} tokens ({per_level}), "
              f"tokens {tuple(item.shape)}")
    print(f"embeddings {tuple(embedded.shape)}, valid {tuple(valid.shape)} ({int((~valid).sum())} padded rows)")
    print(f"features {tuple(features.shape)}, logits {tuple(logits.shape)}, top class per view "
          f"{logits.argmax(1).tolist()} (random weights)")
    print("time: " + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in timings.items()))
    return {"model": model, "tokens": tokens, "layouts": layouts, "logits": logits, "features": features,
            "valid": valid, "timings": timings}


if __name__ == "__main__":
    main()
