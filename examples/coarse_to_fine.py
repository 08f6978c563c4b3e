"""Coarse to fine, batched: uniform coarse tokens -> the model's class attention -> refined tokens -> the model.

    python examples/coarse_to_fine.py [--patch 16] [--level 3] [--budgets 56,128] [--picture PNG] [IMAGE]

A batch of three views of the image (the image, its mirror, a crop: two sizes, so two array textures) is
built into pyramids once (`ctx.pyramids`). Pass 0 samples `glmip.refine.cover_layout` (every cell of
`--level`, e.g. 128-px tokens); each later pass scores the last pass's tokens with
`glmip.nn.class_attention` (where the class token of the model's last block looks), splits the
best-scored tokens one level finer up to that pass's budget (`glmip.refine_batch`) and samples only the new
tokens from the same pyramids (`glmip.refine.sample_refined`). The last pass's tokens go through the model.

The model is `glmip.models.TokenClassifier` with random (seeded) weights: its attention is not trained to
look anywhere in particular, so this shows the path and its costs, not where a trained model would look.
Nothing is downloaded. `--picture` draws each pass's layout over the first view.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import glmip
import glmip.nn
from glmip.models import TokenClassifier
from glmip.refine import cover_layout, refine_passes


def views(image: np.ndarray) -> list[np.ndarray]:
    """The image, its mirror image and its top-left crop of 3/4 x 3/4 (a second size)."""
    height, width = image.shape[:2]
    return [image, np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(image[:height * 3 // 4,
                                                                                   :width * 3 // 4])]


def main(argv: Sequence[str] | None = None, ctx: glmip.Context | None = None) -> dict[str, Any]:
    """Run the passes, print tokens per pass and image, tokens sampled and seconds; returns the passes, the
    logits and the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(glmip.DEFAULT_IMAGE))
    parser.add_argument("--patch", type=int, default=16, help="samples a token side")
    parser.add_argument("--level", type=int, default=3, help="the coarse pass's level (token side patch << level)")
    parser.add_argument("--budgets", type=lambda t: [int(v) for v in t.split(",")], default=[56, 128],
                        help="most tokens per image after each refinement pass")
    parser.add_argument("--picture", default=None, help="write each pass's layout over the first view to this PNG")
    args = parser.parse_args(argv)
    images = views(glmip.image.as_image_array(args.image))
    torch.manual_seed(0)
    model = TokenClassifier(patch=args.patch, channels=images[0].shape[2], dim=64, depth=2, heads=4,
                            classes=10).eval()
    own = ctx is None
    ctx = glmip.Context() if own else ctx
    try:
        start = time.perf_counter()
        with ctx.pyramids(images) as batch, torch.no_grad():
            built = time.perf_counter()
            coarse = [cover_layout(size, args.patch, args.level) for size in batch.image_sizes]
            passes = refine_passes(batch, coarse, lambda tokens: glmip.nn.class_attention(model, tokens),
                                   args.budgets)
            looped = time.perf_counter()
            final = passes[-1].tokens
            logits, _ = model(list(torch.split(final.tokens, list(final.lengths))), list(final.layouts))
        done = time.perf_counter()
    finally:
        if own:
            ctx.close()
    for index, step in enumerate(passes):
        counts = ", ".join(str(n) for n in step.tokens.lengths)
        levels = sorted({int(v) for v in step.tokens.levels.tolist()})
        print(f"pass {index}: tokens per image {counts} (levels {levels}); sampled {step.sampled}")
    print(f"pyramids {built - start:.3f} s, passes (sample + score + refine) {looped - built:.3f} s, "
          f"final forward {done - looped:.3f} s -> logits {tuple(logits.shape)}")
    if args.picture:
        print(f"wrote {draw(images[0], passes, args.picture)}")
    return {"passes": passes, "logits": logits, "model": model}


def draw(image: np.ndarray, passes: list[Any], path: str) -> str:
    """Each pass's layout over the first view, side by side."""
    from PIL import Image

    panels = [passes[k].tokens.layouts[0].draw(image) for k in range(len(passes))]
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    strip = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    Image.fromarray(strip).save(path)
    return path


if __name__ == "__main__":
    main()
