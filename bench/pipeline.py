"""Benchmark: the batch pipeline on the torch device — `glmip.tokenize` from device tensors and from host
arrays, against a torch peer on the same device and the plain host→device copy of the same bytes.

For each image size (default 256², 1024², 2048²; batch 64, 64, 16; budget 256, patch 16), uniform and gaze
relevance, in one run:
- glmip from a uint8 BxCxHxW tensor already on the device (on CUDA: device to device into the GL array
  texture, tokens back through the context's CUDA registration);
- glmip from host arrays (one BxHxWxC numpy block);
- the torch peer on the device: an `avg_pool2d` pyramid of the batch and one `grid_sample` per level over
  every token of the batch (levels blended trilinearly), on glmip's own layouts (the peer is not charged
  for allocation);
- the host→device copy of the same uint8 bytes (`torch.Tensor.to`, from pinned memory where CUDA).
Each timing ends with a device sync; torch CPU peers run at their best of 1 and 2 threads. Runs where torch
has CUDA (the GPU machine) or on the CPU (a smoke run here). JSON under bench/results/pipeline-<device>.json.

Usage: python -m bench.pipeline [--sizes 256 1024 2048] [--batches 64 64 16] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import glmip
from bench import harness
from bench.batch import torch_levels

ROOT = Path(__file__).resolve().parent.parent
BUDGET, PATCH = 256, 16


def peer_tokens(levels: list[torch.Tensor], layouts: list[glmip.TokenLayout], patch: int) -> torch.Tensor:
    """(ΣN, C, P, P) trilinear tokens of a batch from its torch levels: every token's P×P grid is sampled
    on each level with one `grid_sample` over the padded batch, and the two levels around its LOD blended."""
    device = levels[0].device
    counts = [len(layout) for layout in layouts]
    n = max(counts)
    cells = (torch.arange(patch, dtype=torch.float32, device=device) + 0.5) / patch - 0.5
    grids, lods, valid = [], [], []
    for layout in layouts:
        width, height = layout.image_size
        pad = n - len(layout)
        cx, cy, size, level = (torch.from_numpy(np.pad(np.asarray(getattr(layout, k), np.float32), (0, pad),
                                                       constant_values=1.0)).to(device)
                               for k in ("cx", "cy", "size", "level"))
        x = (cx[:, None, None] + cells[None, None, :] * size[:, None, None]) / width * 2 - 1
        y = (cy[:, None, None] + cells[None, :, None] * size[:, None, None]) / height * 2 - 1
        grids.append(torch.stack(torch.broadcast_tensors(x, y), -1).reshape(n * patch, patch, 2))
        lods.append(level)
        valid.append(torch.arange(n, device=device) < len(layout))
    grid, lod = torch.stack(grids), torch.stack(lods)  # (B, n*P, P, 2), (B, n)
    result = 0
    for index, level in enumerate(levels):
        weight = (1 - (lod - index).abs()).clamp(min=0)  # (B, n)
        if not bool((weight > 0).any()):
            continue
        sampled = F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=False)
        result = result + sampled.reshape(*sampled.shape[:2], n, patch, patch) * weight[:, None, :, None, None]
    tokens = result.permute(0, 2, 1, 3, 4)  # (B, n, C, P, P)
    return tokens[torch.stack(valid)]


def relevance_for(kind: str, size: int, count: int) -> Any:
    if kind == "none":
        return None
    return [glmip.gaze((size, size), (0.3 + 0.4 * (i % 3) / 2, 0.6)) for i in range(count)]


def measure_case(ctx: glmip.Context, device: torch.device, host: np.ndarray, on_device: torch.Tensor,
                 pinned: torch.Tensor, relevance: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The timings of one (size, relevance) case."""
    def glmip_from(images: Any) -> Any:
        return glmip.tokenize(images, relevance, args.budget, PATCH, context=ctx, device=device)

    row: dict[str, Any] = {
        "glmip_device_s": harness.measure(lambda: glmip_from(on_device), args.repeats, device=device).median,
        "glmip_host_s": harness.measure(lambda: glmip_from(host), args.repeats, device=device).median}
    layouts = list(glmip_from(on_device).layouts)

    def peer() -> torch.Tensor:
        return peer_tokens(torch_levels(on_device.float() / 255.0), layouts, PATCH)

    if device.type == "cuda":
        row["peer_s"], row["peer_threads"] = harness.measure(peer, args.repeats, device=device).median, None
    else:
        best = harness.measure_peer(peer, args.repeats)
        row["peer_s"], row["peer_threads"] = best.timing.median, best.threads
    row["copy_s"] = harness.measure(lambda: pinned.to(device, non_blocking=True), args.repeats, device=device).median
    row["tokens"] = sum(len(layout) for layout in layouts)
    row["vs_peer"] = row["peer_s"] / row["glmip_device_s"]
    row["host_vs_copy"] = row["glmip_host_s"] / row["copy_s"]
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    ctx = glmip.Context(cuda_device=torch.cuda.current_device()) if cuda else glmip.Context()
    rows = []
    with ctx, tqdm(total=len(args.sizes) * 2, unit="case", desc="pipeline bench") as bar:
        renderer = ctx.info()["renderer"]
        for size, count in zip(args.sizes, args.batches, strict=True):
            rng = np.random.default_rng(0)
            host = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
            on_device = torch.from_numpy(host).permute(0, 3, 1, 2).contiguous().to(device)
            pinned = torch.from_numpy(host).pin_memory() if cuda else torch.from_numpy(host)
            for kind in ("none", "gaze"):
                row = {"size": size, "images": count, "relevance": kind, "budget": args.budget,
                       **measure_case(ctx, device, host, on_device, pinned, relevance_for(kind, size, count), args)}
                rows.append(row)
                bar.update()
    return {"benchmark": "pipeline", "device": renderer, "torch_device": harness.torch_device_label(),
            "patch": PATCH, "repeats": args.repeats, "environment": harness.environment(), "results": rows}


def table(report: dict[str, Any]) -> str:
    rows = [[f"{r['size']}²", str(r["images"]), r["relevance"], f"{r['glmip_device_s'] * 1e3:.2f}",
             f"{r['glmip_host_s'] * 1e3:.2f}", f"{r['peer_s'] * 1e3:.2f}", f"{r['copy_s'] * 1e3:.2f}",
             f"{r['vs_peer']:.1f}×", f"{r['host_vs_copy']:.2f}×"] for r in report["results"]]
    return harness.markdown_table(["size", "batch", "relevance", "glmip from device ms", "glmip from host ms",
                                   "torch peer ms", "host→device copy ms", "× peer", "host / copy"], rows, left=3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 64, 16])
    parser.add_argument("--budget", type=int, default=BUDGET)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="64² and 128², batches of 4, one repeat")
    parser.add_argument("--out", help="JSON path (default bench/results/pipeline-<device>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.repeats, args.budget = [64, 128], [4, 4], 1, 16
    if len(args.sizes) != len(args.batches):
        raise SystemExit("--sizes and --batches need one batch size per image size")
    report = run(args)
    path = harness.write_report(report, "pipeline", args.out)
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
