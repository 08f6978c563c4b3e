"""Train a timm ViT on glmip tokens, end to end: image -> pyramid -> gaze relevance -> token layout
-> tokens -> `glmip.nn.from_timm(vit)` (the ViT with its own LodPatchEmbed) -> loss -> optimiser step.

    python examples/vit_tokens.py [--model vit_tiny_patch16_224] [--steps 5] [--budget 256] [IMAGE]

Two views of the image make the batch: one at the gaze point with the whole budget, and a cheaper
glance at the mirrored point with half of it, so their token counts differ and the padding mask is
exercised. `from_timm` moves the ViT's patch and position embedding into a `LodPatchEmbed` that the
model owns: it starts from the ViT's weights, gets gradients, and is saved in `model.state_dict()`.
timm's gradient checkpointing and patch dropout apply (`--grad-checkpointing`, `--patch-drop 0.5`).

The weights are random (seeded) and the two views get made-up labels: this shows the training path,
nothing is downloaded. For pretrained weights create the model with `timm.create_model(name,
pretrained=True)` (timm fetches them) and pass it to `glmip.nn.from_timm` the same way. Needs timm.
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

import glmip
import glmip.nn

try:  # before any glmip.Context exists: importing timm (triton) after one crashes in some environments
    import timm
except ImportError:
    timm = None


def parse_point(text: str) -> tuple[float, float]:
    x, y = (float(v) for v in text.split(","))
    return x, y


def main(argv: Sequence[str] | None = None, ctx: glmip.Context | None = None) -> dict[str, Any]:
    """Tokenize two views, train the model `--steps` steps on them, print what happened, and return the
    model, its batch, the losses, the final logits and timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(glmip.DEFAULT_IMAGE))
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="a timm VisionTransformer name")
    parser.add_argument("--depth", type=int, default=None, help="blocks (default: the model's)")
    parser.add_argument("--budget", type=int, default=256, help="most tokens per view")
    parser.add_argument("--gaze", type=parse_point, default=(0.45, 0.35), help="first view's gaze point, uv X,Y")
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in the backward pass")
    parser.add_argument("--patch-drop", type=float, default=0.0, help="timm's patch_drop_rate (real tokens only)")
    args = parser.parse_args(argv)
    if timm is None:
        raise SystemExit("this example needs timm: pip install timm")
    torch.manual_seed(0)
    overrides = {"depth": args.depth} if args.depth is not None else {}
    vit = timm.create_model(args.model, pretrained=False, num_classes=2, patch_drop_rate=args.patch_drop, **overrides)
    model = glmip.nn.from_timm(vit)  # owns its embedding from here on; train `model`, not `vit`
    model.set_grad_checkpointing(args.grad_checkpointing)
    initial_projection = model.embed.proj.weight.detach().clone()

    own_context = ctx is None
    ctx = ctx or glmip.Context()
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        with ctx.pyramid(Path(args.image)) as pyramid:
            size, levels = (pyramid.width, pyramid.height), pyramid.levels
            views = [(args.gaze, args.budget), ((1 - args.gaze[0], 1 - args.gaze[1]), max(1, args.budget // 2))]
            layouts = [glmip.allocate(glmip.gaze(size, point), budget=budget, patch=model.embed.patch)
                       for point, budget in views]
            batch = glmip.TokenBatch.from_parts([pyramid.tokens(layout) for layout in layouts], layouts)
        timings["tokenize"] = time.perf_counter() - start
    finally:
        if own_context:
            ctx.close()

    labels = torch.tensor([0, 1])  # made up: which view is which
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses = []
    model.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = F.cross_entropy(model(batch), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    timings["train"] = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        logits = model(batch)
    moved = (model.embed.proj.weight.detach() - initial_projection).abs().max().item()

    print(f"image {Path(args.image).name}: {size[0]}x{size[1]}, {levels} levels; model {args.model}")
    for (point, budget), layout in zip(views, layouts, strict=True):
        used, counts = np.unique(layout.level, return_counts=True)
        per_level = ", ".join(f"{c} at {lv}" for lv, c in zip(used, counts, strict=True))
        print(f"gaze {point[0]:.2f},{point[1]:.2f}, budget {budget}: {len(layout)} tokens ({per_level})")
    print(f"loss per step: {', '.join(f'{v:.4f}' for v in losses)}; the embedding's projection moved by up to "
          f"{moved:.2e} (it is trained with the model)")
    print(f"logits {tuple(logits.shape)}, predicted {logits.argmax(1).tolist()} for labels {labels.tolist()}")
    print("time: " + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in timings.items()))
    return {"model": model, "batch": batch, "layouts": layouts, "losses": losses, "logits": logits,
            "moved": moved, "timings": timings}


if __name__ == "__main__":
    main()
