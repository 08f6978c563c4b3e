"""Benchmark: images per second through the batch API against the per-image path and a torch-only peer.

For 512² and 1024² images (budget 256, gaze and saliency relevance), in one run on one machine:
- `glmip.tokenize` at batch 1, 8 and 32 (one context, pyramids built and sampled per batch);
- the per-image path: `ctx.pyramid` + `glmip.allocate` + `Pyramid.tokens`, one image at a time;
- the torch-only peer: an `avg_pool2d` pyramid, its own allocation (glmip's allocator on the numpy
  relevance pyramid, no GL) and trilinear `grid_sample` tokens on the same layouts (two levels, blended).
Each row also gives the share of the time spent in allocation (`glmip.allocate_batch` on the same
relevance maps, timed alone).

Run from the repository root: `python -m bench.batch` (`--quick` for a smoke run). JSON in
bench/results/batch-<device>.json, plot in docs/batch-throughput.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import glmip
from bench import harness
from bench.sampling import peer_trilinear

ROOT = Path(__file__).resolve().parent.parent
BUDGET, PATCH = 256, 16


def images(size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded smooth-plus-noise RGB images (uint8), so saliency has structure to find."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(count):
        fx, fy = rng.uniform(2, 12, 2)
        base = 0.5 + 0.25 * np.sin(2 * np.pi * (fx * x + rng.random())) * np.cos(2 * np.pi * (fy * y))
        noise = rng.normal(0, 0.08, (size, size, 3))
        out.append(np.clip((base[..., None] + noise) * 255, 0, 255).astype(np.uint8))
    return out


def relevance_for(kind: str, size: int, count: int) -> Any:
    if kind == "gaze":
        rng = np.random.default_rng(1)
        return [glmip.gaze((size, size), tuple(rng.uniform(0.2, 0.8, 2))) for _ in range(count)]
    return glmip.saliency


def per_image(ctx: glmip.Context, batch: list[np.ndarray], relevance: Any) -> int:
    total = 0
    for index, image in enumerate(batch):
        with ctx.pyramid(image) as pyramid:
            source = relevance[index] if isinstance(relevance, list) else relevance(pyramid)
            layout = glmip.allocate(source, BUDGET, PATCH, image_size=(pyramid.width, pyramid.height), context=ctx)
            total += pyramid.tokens(layout).shape[0]
    return total


def torch_levels(image: np.ndarray) -> list[torch.Tensor]:
    level = torch.from_numpy(image).permute(2, 0, 1)[None].float().contiguous() / 255.0
    levels = [level]
    while max(level.shape[-2:]) > 1:
        level = F.avg_pool2d(level, 2, ceil_mode=False) if min(level.shape[-2:]) > 1 else \
            F.adaptive_avg_pool2d(level, (max(1, level.shape[-2] // 2), max(1, level.shape[-1] // 2)))
        levels.append(level)
    return levels


def peer_tokens(levels: list[torch.Tensor], layout: glmip.TokenLayout) -> torch.Tensor:
    """(N, C, P, P) trilinear samples at each token's patch grid and level, as tokens.comp takes them."""
    width, height = layout.image_size
    cells = (torch.arange(PATCH, dtype=torch.float32) + 0.5) / PATCH - 0.5
    cx, cy = torch.from_numpy(layout.cx).float(), torch.from_numpy(layout.cy).float()
    size = torch.from_numpy(layout.size).float()
    x = (cx[:, None, None] + cells[None, None, :] * size[:, None, None]) / width
    y = (cy[:, None, None] + cells[None, :, None] * size[:, None, None]) / height
    uv = torch.stack(torch.broadcast_tensors(x, y), -1).reshape(-1, 2)
    lod = torch.from_numpy(layout.level).float().repeat_interleave(PATCH * PATCH)
    values = peer_trilinear(levels, uv, lod)
    return values.reshape(len(layout), PATCH, PATCH, -1).permute(0, 3, 1, 2)


def peer(batch: list[np.ndarray], relevance: Any) -> int:
    total = 0
    for index, image in enumerate(batch):
        levels = torch_levels(image)
        if isinstance(relevance, list):
            source = relevance[index]
        else:  # the peer's saliency: centre-surround contrast of avg-pooled levels 2 and 4, no GL
            grey = levels[0].mean(1, keepdim=True)
            centre = F.interpolate(F.avg_pool2d(grey, 4), size=grey.shape[-2:], mode="bilinear")
            surround = F.interpolate(F.avg_pool2d(grey, 16), size=grey.shape[-2:], mode="bilinear")
            source = (centre - surround).abs()[0, 0].numpy()
        layout = glmip.allocate(source, BUDGET, PATCH, image_size=(image.shape[1], image.shape[0]))
        total += peer_tokens(levels, layout).shape[0]
    return total


def allocation_seconds(ctx: glmip.Context, batch: list[np.ndarray], relevance: Any) -> float:
    """Allocation alone, on the relevance maps the run used (saliency maps computed first, untimed)."""
    if isinstance(relevance, list):
        maps = relevance
    else:
        maps = []
        for image in batch:
            with ctx.pyramid(image) as pyramid:
                maps.append(relevance(pyramid))
    sizes = [(image.shape[1], image.shape[0]) for image in batch]
    start = time.perf_counter()
    glmip.allocate_batch(maps, BUDGET, PATCH, image_sizes=sizes, context=ctx)
    return time.perf_counter() - start


def run(sizes: list[int], batches: list[int], repeats: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with glmip.Context() as ctx:
        renderer = ctx.info()["renderer"]
        cases = [(s, kind) for s in sizes for kind in ("gaze", "saliency")]
        with tqdm(total=len(cases) * (len(batches) + 2), unit="case", desc="batch bench") as bar:
            for size, kind in cases:
                count = max(batches)
                pool = images(size, count)
                relevance_all = relevance_for(kind, size, count)

                def pick(n: int, pool: list[np.ndarray] = pool, every: Any = relevance_all
                         ) -> tuple[list[np.ndarray], Any]:
                    return pool[:n], every[:n] if isinstance(every, list) else every

                rows: dict[str, dict[str, Any]] = {}
                for n in batches:
                    batch, rel = pick(n)
                    timing = harness.measure(lambda b=batch, r=rel: glmip.tokenize(b, r, BUDGET, PATCH, context=ctx),
                                             repeats)
                    alloc = allocation_seconds(ctx, batch, rel)
                    rows[f"tokenize batch {n}"] = {"images": n, "median_s": timing.median,
                                                   "allocation_s": alloc}
                    bar.update()
                batch, rel = pick(min(8, count))
                timing = harness.measure(lambda b=batch, r=rel: per_image(ctx, b, r), repeats)
                rows["per image"] = {"images": len(batch), "median_s": timing.median,
                                     "allocation_s": allocation_seconds(ctx, batch, rel)}
                bar.update()
                timing = harness.measure(lambda b=batch, r=rel: peer(b, r), repeats)
                rows["torch peer"] = {"images": len(batch), "median_s": timing.median}
                bar.update()
                peer_rate = rows["torch peer"]["images"] / rows["torch peer"]["median_s"]
                for method, row in rows.items():
                    rate = row["images"] / row["median_s"]
                    results.append({"size": size, "relevance": kind, "method": method, "images": row["images"],
                                    "median_s": row["median_s"], "images_per_s": rate,
                                    "vs_torch_peer": rate / peer_rate,
                                    "allocation_share": (row["allocation_s"] / row["median_s"]
                                                         if "allocation_s" in row else None)})
    return {"benchmark": "batch", "device": renderer, "budget": BUDGET, "patch": PATCH, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "environment": harness.environment(), "results": results}


def table(report: dict[str, Any]) -> str:
    rows = []
    for r in report["results"]:
        share = "" if r["allocation_share"] is None else f"{100 * r['allocation_share']:.0f}%"
        rows.append([f"{r['size']}²", r["relevance"], r["method"], f"{r['images_per_s']:.1f}",
                     f"{r['vs_torch_peer']:.2f}×", share])
    return harness.markdown_table(["size", "relevance", "method", "images/s", "× torch peer", "allocation"],
                                  rows, left=3)


def plot(report: dict[str, Any], path: Path) -> Path:
    fig, axes = harness.figure(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("gaze", "saliency"), strict=True):
        rows = [r for r in report["results"] if r["relevance"] == kind]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        sizes = sorted({r["size"] for r in rows})
        width = 0.8 / len(sizes)
        for i, size in enumerate(sizes):
            values = [next(r["images_per_s"] for r in rows if r["method"] == m and r["size"] == size)
                      for m in methods]
            ax.bar(np.arange(len(methods)) + i * width, values, width, label=f"{size}²")
        ax.set_xticks(np.arange(len(methods)) + width * (len(sizes) - 1) / 2, methods, rotation=30, ha="right")
        ax.set_title(f"{kind} relevance, budget {report['budget']}")
        ax.set_yscale("log")
        ax.legend()
    axes[0].set_ylabel(f"images / s ({report['device']})")
    return harness.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128² and 256², batches 1 and 4, one repeat")
    parser.add_argument("--out", help="JSON path (default bench/results/batch-<device>.json)")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "batch-throughput.png"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.repeats = [128, 256], [1, 4], 1
    report = run(args.sizes, args.batches, args.repeats)
    path = harness.write_report(report, "batch", args.out)
    harness.plot_if_possible(plot, report, Path(args.plot) if args.plot else None)
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
