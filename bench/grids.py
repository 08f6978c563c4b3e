"""Benchmark: the per-level patch grids of a batch (`PyramidBatch.grids`) against torch's `avg_pool2d` pyramid +
`unfold`, the same levels in the same run.

For each case (B uint8 RGB images of S², levels 0..3, patch 4: the 56/28/14/7 grids at 224²) it times:
- glmip `grids`: `batch.grids(levels, 4)` on an already built batch (build once, sample many), one dispatch per
  array texture and one read-back, (B, N_l, C, 4, 4) float32 tensors;
- glmip `build + grids`: `ctx.pyramids(images)` (one upload, glGenerateMipmap) then `grids`, from the images;
- glmip `level images`: `batch.grids(levels, as_images=True)`, (B, C, H_l, W_l);
- torch `pool + unfold`: from the same uint8 (B, C, S, S) tensor, float conversion, `avg_pool2d(2)` per level,
  `unfold(4, stride=4)` per level, reshaped to (B, N_l, C, 4, 4) contiguous;
- torch `unfold`: the unfolds alone on levels already pooled (the peer of glmip `grids`);
- torch `pool`: the float pyramid alone (the peer of `level images`).
Torch runs at its faster (by median) of 1 and 2 threads (the setting is recorded). Each cell of the table is
"median ms (fastest ms)": the machine is shared, so the fastest run is the better estimate of the cost itself.
The report also holds the largest difference between glmip's and torch's level-3 tokens, for the timed
"hardware" pyramid (glGenerateMipmap: each level rounded to uint8 from the rounded level above) and for "box"
(each level the exact mean of level 0, rounded once: within half an 8-bit step of torch's float mean).

Run from the repository root: `python -m bench.grids` (`--quick` for a smoke run). JSON in
bench/results/grids-<device>.json.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import glmip
from bench import harness

LEVELS = [0, 1, 2, 3]
PATCH = 4


def torch_levels(stack: torch.Tensor, levels: list[int]) -> list[torch.Tensor]:
    """The float levels `levels` of a uint8 (B, C, S, S) batch by repeated 2x2 `avg_pool2d`."""
    current = stack.float().div_(255.0)
    found = []
    for level in range(levels[-1] + 1):
        if level:
            current = F.avg_pool2d(current, 2)
        if level in levels:
            found.append(current)
    return found


def torch_unfold(levels: list[torch.Tensor], patch: int) -> list[torch.Tensor]:
    """Each level as (B, N, C, patch, patch) cells, row-major, contiguous (what `grids` returns)."""
    cells = []
    for level in levels:
        batch, channels = level.shape[:2]
        unfolded = F.unfold(level, patch, stride=patch)  # (B, C·P·P, N)
        cells.append(unfolded.transpose(1, 2).reshape(batch, -1, channels, patch, patch).contiguous())
    return cells


def timed(case: Any, repeats: int, torch_threads: bool = False) -> dict[str, Any]:
    """Median and fastest seconds of `case`; with `torch_threads`, at its faster (by median) of 1 and 2 torch
    threads, recorded as "threads"."""
    if not torch_threads:
        timing = harness.measure(case, repeats)
        return {"median_s": timing.median, "min_s": timing.min}
    saved = torch.get_num_threads()
    found = []
    try:
        for threads in sorted({1, min(2, os.cpu_count() or 1)}):
            torch.set_num_threads(threads)
            timing = harness.measure(case, repeats)
            found.append({"median_s": timing.median, "min_s": timing.min, "threads": threads})
    finally:
        torch.set_num_threads(saved)
    return min(found, key=lambda t: t["median_s"])


def run_case(ctx: glmip.Context, size: int, count: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(size + count)
    images = rng.integers(0, 256, (count, size, size, 3), np.uint8)
    stack = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    row: dict[str, Any] = {"size": size, "images": count, "levels": LEVELS, "patch": PATCH}
    with ctx.pyramids(images) as batch:
        row["glmip_grids"] = timed(lambda: batch.grids(LEVELS, PATCH), repeats)
        row["glmip_images"] = timed(lambda: batch.grids(LEVELS, as_images=True), repeats)
        ours = batch.grids(LEVELS, PATCH)

    def build_and_grids() -> list[Any]:
        with ctx.pyramids(images) as built:
            return built.grids(LEVELS, PATCH)

    row["glmip_build_grids"] = timed(build_and_grids, repeats)
    pooled = torch_levels(stack, LEVELS)
    row["torch_pool_unfold"] = timed(lambda: torch_unfold(torch_levels(stack, LEVELS), PATCH), repeats, True)
    row["torch_unfold"] = timed(lambda: torch_unfold(pooled, PATCH), repeats, True)
    row["torch_pool"] = timed(lambda: torch_levels(stack, LEVELS), repeats, True)
    theirs = torch_unfold(pooled, PATCH)
    row["max_difference_level3"] = float((ours[-1].tokens - theirs[-1]).abs().max())
    with ctx.pyramids(images, method="box") as box:
        row["max_difference_level3_box"] = float((box.grids(LEVELS, PATCH)[-1].tokens - theirs[-1]).abs().max())
    row["tokens"] = [int(g.tokens.shape[1]) for g in ours]
    return row


def table(report: dict[str, Any]) -> str:
    def cell(t: dict[str, Any]) -> str:
        threads = f", {t['threads']}t" if "threads" in t else ""
        return f"{1e3 * t['median_s']:.1f} ({1e3 * t['min_s']:.1f}{threads})"

    rows = [[f"{r['images']}×{r['size']}²", "/".join(str(int(round(n ** 0.5))) for n in r["tokens"]),
             cell(r["glmip_grids"]), cell(r["torch_unfold"]), cell(r["glmip_build_grids"]),
             cell(r["torch_pool_unfold"]), cell(r["glmip_images"]), cell(r["torch_pool"])] for r in report["cases"]]
    return harness.markdown_table(
        ["batch", "grids", "glmip grids", "torch unfold", "glmip build + grids", "torch pool + unfold",
         "glmip level images", "torch pool"], rows, left=2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small case, 2 repeats (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/grids-<device>.json)")
    args = parser.parse_args(argv)
    cases = [(224, 2)] if args.quick else [(224, 1), (224, 16), (224, 64), (512, 8)]
    repeats = 2 if args.quick else args.repeats
    with glmip.Context() as ctx:
        report: dict[str, Any] = {"benchmark": "grids", "device": ctx.info()["renderer"], "repeats": repeats,
                                  "environment": harness.environment(), "load_average_before": os.getloadavg(),
                                  "cases": []}
        for size, count in cases:
            report["cases"].append(run_case(ctx, size, count, repeats))
            print(table(report).splitlines()[-1], flush=True)
    report["load_average_after"] = os.getloadavg()  # the machine is shared: how busy it was
    path = harness.write_report(report, "grids", args.out)
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
