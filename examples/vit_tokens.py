"""A plain-torch ViT on glmip tokens, end to end: image -> pyramid -> gaze relevance -> token layout
-> tokens -> LodPatchEmbed -> transformer encoder (padding-masked) -> class logits
(`glmip.models.TokenClassifier`).

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

import glmip
from glmip.models import TokenClassifier


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
    model = TokenClassifier(depth=args.depth).eval()
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
