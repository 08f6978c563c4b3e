"""Benchmark: token allocation per image, the heap greedy one split at a time against `allocate_batch`.

What is measured. Gaze relevance maps (`glmip.gaze`, radius 0.12, gaze points drawn with seed 0)
of S x S images, S in --sizes, budget --budget (256), patch 16. Two allocators:

* ``greedy``: `glmip.reference.allocate_greedy(..., contrast=False, ties="insertion")`, glmip's
  allocator before `allocate_batch` (a Python heap, one split at a time), image after image.
* ``batch``: `glmip.allocate_batch`, the same quadtree as a few vectorised passes per batch.

Per size and batch size B (1, 8, 32): ``split`` = from relevance pyramids already built (the
allocation alone), ``map`` = from the relevance maps (the numpy reference relevance pyramid built
too, as `allocate` without a context does). Figures are ms per image: median over --repeats runs
(after one warm-up) of the batch's wall time / B. The ratio is greedy / batch in the same run.
CPU numpy on a 2-core machine shared with others: expect noise of tens of percent.

Usage::

    python bench/allocate.py [--sizes 512 1024 2048] [--batches 1 8 32] [--repeats 5]
                             [--out bench/results/allocate-llvmpipe.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import glmip
from bench.harness import measure
from glmip import reference
from glmip.relevance import relevance_pyramid

PATCH = 16
RADIUS = 0.12


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of `fn` over `repeats` runs after one warm-up (bench.harness.measure)."""
    return measure(fn, repeats).median * 1e3


def run(sizes: list[int], batches: list[int], budget: int, repeats: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    cases = [(s, b) for s in sizes for b in batches]
    for size, batch in tqdm(cases, desc="allocate", unit="case"):
        maps = [glmip.gaze((size, size), tuple(rng.uniform(0.1, 0.9, 2)), RADIUS) for _ in range(batch)]
        pyramids = [relevance_pyramid(m, PATCH) for m in maps]
        old = [reference.allocate_greedy(p, budget, PATCH, contrast=False, ties="insertion") for p in pyramids]
        new = glmip.allocate_batch(pyramids, budget, PATCH)
        row: dict[str, Any] = {"size": size, "batch": batch, "budget": budget,
                               "tokens_greedy": float(np.mean([len(x) for x in old])),
                               "tokens_batch": float(np.mean([len(x) for x in new])),
                               "identical_layouts": all(
                                   len(a) == len(b) and bool((a.cx == b.cx).all() and (a.cy == b.cy).all()
                                                             and (a.level == b.level).all())
                                   for a, b in zip(old, new, strict=True))}
        for inputs, label in ((pyramids, "split"), (maps, "map")):
            def greedy(inputs=inputs) -> None:
                for x in inputs:
                    p = x if isinstance(x, glmip.RelevancePyramid) else relevance_pyramid(x, PATCH)
                    reference.allocate_greedy(p, budget, PATCH, contrast=False, ties="insertion")

            def batched(inputs=inputs) -> None:
                glmip.allocate_batch(inputs, budget, PATCH)

            row[f"{label}_greedy_ms"] = median_ms(greedy, repeats) / batch
            row[f"{label}_batch_ms"] = median_ms(batched, repeats) / batch
            row[f"{label}_ratio"] = row[f"{label}_greedy_ms"] / row[f"{label}_batch_ms"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "allocate-llvmpipe.json"))
    args = parser.parse_args()
    rows = run(args.sizes, args.batches, args.budget, args.repeats)
    report = {"device": "cpu (numpy; no GL in allocation)", "date": datetime.datetime.now(datetime.UTC).isoformat(),
              "host": platform.node(), "versions": {"python": platform.python_version(), "numpy": np.__version__},
              "config": vars(args), "patch": PATCH, "radius": RADIUS, "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| size | batch | split greedy ms | split batch ms | ratio | map greedy ms | map batch ms | ratio | same |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} | {r['split_greedy_ms']:.2f} | {r['split_batch_ms']:.2f} | "
              f"{r['split_ratio']:.1f} | {r['map_greedy_ms']:.2f} | {r['map_batch_ms']:.2f} | {r['map_ratio']:.1f} | "
              f"{r['identical_layouts']} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
