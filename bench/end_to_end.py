"""End to end: image -> pyramid -> relevance -> tokens -> LodPatchEmbed -> a small ViT, against dense tokens.

glmip, per batch: upload + mip chains (`ctx.pyramids`, method box: one array texture, one upload),
weight-free GPU saliency as the relevance (`glmip.saliency` over the batch), one `glmip.allocate_batch`,
one token dispatch into a tensor on the torch device (CUDA-GL interop where available, else pinned
read-back), then
`glmip.nn.LodPatchEmbed` (sin-cos position + level embedding) and a small pre-norm ViT encoder
(`glmip.models.TinyViT`, --dim/--depth/--heads) with the padding masked out. The peer, dense
full-resolution tokenisation: the same image uploaded to the torch device, every patch x patch patch
embedded by a strided conv, sin-cos position, the same encoder. For one image (median of --repeats) and
for a batch of --batch images (one embedding + encoder call for the padded batch; dense: one stacked batch).
Every stage of a timing ends with a device sync. Ratios in the same
run: `dense_vs_glmip` = dense median / glmip median (> 1: glmip faster). Runs on CUDA when torch has
it, else on the CPU (GL on llvmpipe there). JSON under bench/results/end_to_end-<device>.json.

The CUDA rows ran once, on an H100 (bench/results/end_to_end-h100.json, the README's "On NVIDIA"), with the
earlier per-image pipeline; this batch pipeline has not run on a GPU yet. With --source device (the default on
CUDA) the images start as one uint8 tensor on the GPU and reach the GL texture device to device.

Usage: python -m bench.end_to_end [--size 1024] [--budget 256] [--patch 16] [--batch 64] [--repeats 5]
                                   [--dim 384] [--depth 6] [--heads 6] [--source auto|host|device] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import glmip
from bench.harness import Seconds, markdown_table, measure, now, sync, write_report
from glmip.models import TinyViT
from glmip.nn import LodPatchEmbed, sincos_position
from glmip.relevance import batch_relevance_pyramids
from glmip.token_batch import TokenBatch


def images(size: int, count: int) -> list[np.ndarray]:
    """`count` RGB uint8 size x size images: the bundled photo resized, each shifted differently."""
    base = np.asarray(Image.open(glmip.DEFAULT_IMAGE).convert("RGB").resize((size, size), Image.BICUBIC))
    return [np.ascontiguousarray(np.roll(base, 7 * k, axis=1)) for k in range(count)]


class Glmip:
    """The glmip batch pipeline, timing each stage: one `PyramidBatch` (upload + box mips for the whole
    batch), `glmip.saliency` over it (one dispatch per array texture), one `allocate_batch`, one token
    dispatch into a tensor on the torch device, then the embedding and the encoder on the padded batch."""

    def __init__(self, ctx: glmip.Context, embed: LodPatchEmbed, vit: TinyViT, budget: int, patch: int,
                 device: torch.device) -> None:
        self.ctx, self.embed, self.vit, self.budget, self.patch, self.device = ctx, embed, vit, budget, patch, device

    def __call__(self, images: Any) -> tuple[dict[str, float], int]:
        stages = dict.fromkeys(("pyramid", "relevance", "allocate", "tokens", "embed", "vit"), 0.0)
        start = time.perf_counter()
        with self.ctx.pyramids(images, method="box") as batch:
            self.ctx.gl.finish()
            stages["pyramid"] += time.perf_counter() - start
            start = time.perf_counter()
            relevance = batch_relevance_pyramids(glmip.saliency, batch.image_sizes, self.patch, self.ctx, batch=batch)
            stages["relevance"] += time.perf_counter() - start
            start = time.perf_counter()
            layouts = glmip.allocate_batch(relevance, self.budget, self.patch)
            stages["allocate"] += time.perf_counter() - start
            start = time.perf_counter()
            tokens = batch.tokens(layouts, device=self.device)
            sync(self.device)
            stages["tokens"] += time.perf_counter() - start
        with torch.inference_mode():
            start = time.perf_counter()
            embedded = self.embed(TokenBatch.from_sampled(tokens, layouts))
            sync(self.device)
            stages["embed"] += time.perf_counter() - start
            start = time.perf_counter()
            self.vit(embedded.embeddings, embedded.valid)
            sync(self.device)
            stages["vit"] += time.perf_counter() - start
        return stages, int(tokens.shape[0])


class Dense:
    """Every patch of the full-resolution image, conv-embedded, into the same encoder."""

    def __init__(self, embed: LodPatchEmbed, vit: TinyViT, patch: int, device: torch.device) -> None:
        self.conv = nn.Conv2d(3, embed.dim, patch, stride=patch).to(device).eval()
        with torch.no_grad():
            self.conv.weight.copy_(embed.proj.weight.reshape(embed.dim, 3, patch, patch))
            self.conv.bias.copy_(embed.proj.bias)
        self.mean, self.std = embed.mean.to(device), embed.std.to(device)
        self.vit, self.patch, self.dim, self.device = vit, patch, embed.dim, device

    def __call__(self, batch: Any) -> tuple[dict[str, float], int]:
        stages = dict.fromkeys(("upload", "embed", "vit"), 0.0)
        with torch.inference_mode():
            start = time.perf_counter()
            stacked = batch if isinstance(batch, torch.Tensor) else \
                torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            pixels = stacked.to(self.device).float() / 255
            sync(self.device)
            stages["upload"] += time.perf_counter() - start
            start = time.perf_counter()
            x = self.conv((pixels - self.mean) / self.std)
            b, d, gh, gw = x.shape
            ys, xs = torch.meshgrid(torch.arange(gh, device=self.device), torch.arange(gw, device=self.device),
                                    indexing="ij")
            xy = torch.stack([xs.flatten(), ys.flatten()], 1).float() + 0.5
            x = x.flatten(2).transpose(1, 2) + sincos_position(xy, self.dim)
            sync(self.device)
            stages["embed"] += time.perf_counter() - start
            start = time.perf_counter()
            self.vit(x)
            sync(self.device)
            stages["vit"] += time.perf_counter() - start
        return stages, b * gh * gw


def measure_pipeline(pipeline: Any, batch: list[np.ndarray], repeats: int) -> dict[str, Any]:
    """Median and minimum of the pipeline's summed stage times over `repeats` runs after a warm-up, and the
    median of each stage."""
    runs: list[tuple[dict[str, float], int]] = []

    def case() -> Seconds:
        runs.append(pipeline(batch))
        return Seconds(sum(runs[-1][0].values()))

    timing = measure(case, repeats)
    runs = runs[1:]  # the warm-up's
    return {"median_s": timing.median, "min_s": timing.min, "repeats": repeats, "tokens": runs[0][1],
            "stages_median_s": {k: statistics.median(s[k] for s, _ in runs) for k in runs[0][0]}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (square RGB)")
    parser.add_argument("--budget", type=int, default=256, help="glmip tokens per image at most")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--source", choices=("auto", "host", "device"), default="auto",
                        help="images as host arrays, or as one uint8 BxCxHxW tensor already on the torch device "
                             "(auto: device where that is CUDA)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if min(args.size, args.budget, args.patch, args.batch, args.repeats, args.dim, args.depth, args.heads) < 1:
        raise SystemExit("every size and count must be positive")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    embed = LodPatchEmbed(args.patch, 3, args.dim, position="sincos").to(device).eval()
    vit = TinyViT(args.dim, args.depth, args.heads).to(device).eval()
    batch: Any = images(args.size, args.batch)
    source = ("device" if device.type == "cuda" else "host") if args.source == "auto" else args.source
    if source == "device":
        batch = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous().to(device)
    context = glmip.Context(cuda_device=torch.cuda.current_device()) if device.type == "cuda" else glmip.Context()
    with context as ctx:
        info = ctx.info()
        if device.type == "cuda":
            available, why = ctx.interop_available(torch.cuda.current_device())
            path = "cuda_gl" if available else "pinned_readback"
        else:
            path, why = "readback", "tokens land in host memory (CPU torch)"
        ours, dense = Glmip(ctx, embed, vit, args.budget, args.patch, device), Dense(embed, vit, args.patch, device)
        results = {}
        for label, images_ in (("per_image", batch[:1]), (f"batch_{args.batch}", batch)):
            results[label] = {"glmip": measure_pipeline(ours, images_, args.repeats),
                              "dense": measure_pipeline(dense, images_, args.repeats)}
            results[label]["dense_vs_glmip"] = results[label]["dense"]["median_s"] / results[label]["glmip"]["median_s"]
    report = {
        "device": info["renderer"],
        "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": now(),
        "settings": {k: getattr(args, k) for k in ("size", "budget", "patch", "batch", "repeats", "dim", "depth",
                                                   "heads", "source")},
        "tokens_path": path, "tokens_path_why": why, "source": source,
        "notes": ["times are wall clock with a device sync after every stage; warm-up run excluded",
                  "dense_vs_glmip = dense median / glmip median, same run (> 1: glmip faster)",
                  "glmip per batch: pyramid (upload + box mips of every image), saliency, allocate, tokens, "
                  "embed, vit; dense: upload + float conversion, conv patch embed + sin-cos position, vit"],
        "results": results,
    }
    print(f"device: {report['device']}   torch: {report['torch_device']}   tokens via {path}")
    print(markdown_table(["case", "glmip ms (tokens)", "dense ms (tokens)", "dense / glmip"], [
        [label] + [f"{r[k]['median_s'] * 1e3:.1f} ({r[k]['tokens']})" for k in ("glmip", "dense")]
        + [f"{r['dense_vs_glmip']:.2f}"] for label, r in results.items()]))
    for label, r in results.items():
        stages = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in r["glmip"]["stages_median_s"].items())
        print(f"glmip {label} stages (ms): {stages}")
    print(f"wrote {write_report(report, 'end_to_end', args.out)}")


if __name__ == "__main__":
    main()
