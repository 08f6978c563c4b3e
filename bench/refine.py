"""Benchmark: coarse-to-fine refinement, pass by pass: what each pass samples and what each step costs.

For each case (B views of the 600x400 photograph glmip ships, the image and its mirror alternately, one array
texture; patch 16), pass 0 samples `glmip.refine.cover_layout` at level 3 (128-px tokens, 20 per image) and
each later pass refines to the next budget (default 64, then 128 tokens per image). Per pass it times, on the
state the pass starts from:
- `score`: `glmip.nn.class_attention` of `glmip.models.TokenClassifier` (dim 192, depth 4, 3 heads: the
  benches' ViT, random weights) on the last pass's tokens (its whole forward, under `torch.no_grad`);
- `refine`: `glmip.refine_batch` (numpy) for the batch;
- `sample new`: `glmip.refine.sample_refined`: only the new tokens from the open `PyramidBatch`, merged
  with the kept ones into the refined `TokenBatch`;
- `sample all`: `batch.tokens` of every token of the refined layouts + `TokenBatch.from_sampled` (the same
  result, every token sampled again);
- `rebuild + sample all`: `ctx.pyramids(images)` again, then `sample all` (what a loop without a kept batch
  handle pays).
Pass 0's `sample` is the coarse cover's tokens. Finally the model's forward on the last pass's tokens and, for
scale, on the uniform cover at the finest level the last pass reached (every token at that level).
Each cell is "median ms (fastest ms)" of `--repeats` runs after a warm-up; the machine is shared. Torch runs at
`--threads` intra-op threads (default 1: under heavy load on a shared 2-core machine, 2 threads made every small
op tens of times slower); the report records the setting.

Run from the repository root: `python -m bench.refine` (`--quick` for a smoke run). JSON in
bench/results/refine-<device>.json.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch

import glmip
import glmip.nn
from bench import harness
from glmip.models import TokenClassifier
from glmip.refine import cover_layout, refine_batch, sample_refined
from glmip.token_batch import TokenBatch

PATCH = 16
COARSE_LEVEL = 3


def cell(timing: harness.Timing) -> dict[str, float]:
    return {"median_ms": timing.median * 1e3, "min_ms": timing.min * 1e3}


def time_pass(ctx: glmip.Context, batch: Any, images: list[np.ndarray], model: torch.nn.Module, state: TokenBatch,
              budget: int, repeats: int) -> tuple[dict[str, Any], TokenBatch]:
    """One refinement pass from `state`, each step timed; (its report entry, the refined TokenBatch)."""
    score = harness.measure(lambda: glmip.nn.class_attention(model, state), repeats)
    scores = [s.numpy() for s in score.result]
    refined = harness.measure(lambda: refine_batch(list(state.layouts), scores, budget), repeats)
    steps = refined.result
    new = harness.measure(lambda: sample_refined(batch, state, steps), repeats)
    layouts = [r.layout for r in steps]
    every = harness.measure(lambda: TokenBatch.from_sampled(batch.tokens(layouts), layouts), repeats)

    def rebuild() -> TokenBatch:
        with ctx.pyramids(images) as again:
            return TokenBatch.from_sampled(again.tokens(layouts), layouts)

    rebuilt = harness.measure(rebuild, repeats)
    assert torch.equal(new.result.tokens, every.result.tokens)  # the same tokens, whichever way sampled
    assert torch.equal(new.result.tokens, rebuilt.result.tokens)
    refined_batch = new.result
    entry = {"budget": budget, "tokens_per_image": list(refined_batch.lengths),
             "sampled": sum(len(r.new) for r in steps),
             "levels": sorted({int(v) for v in refined_batch.levels.tolist()}),
             "score": cell(score), "refine": cell(refined), "sample_new": cell(new), "sample_all": cell(every),
             "rebuild_and_sample_all": cell(rebuilt)}
    return entry, refined_batch


def run_case(ctx: glmip.Context, count: int, budgets: list[int], repeats: int) -> dict[str, Any]:
    image = glmip.image.as_image_array(str(glmip.DEFAULT_IMAGE))
    images = [image if b % 2 == 0 else np.ascontiguousarray(image[:, ::-1]) for b in range(count)]
    torch.manual_seed(0)
    model = TokenClassifier(patch=PATCH, channels=3, dim=192, depth=4, heads=3, classes=10).eval()

    def forward(tokens: TokenBatch) -> torch.Tensor:
        return model(list(torch.split(tokens.tokens, list(tokens.lengths))), list(tokens.layouts))[0]

    passes: list[dict[str, Any]] = []
    with ctx.pyramids(images) as batch, torch.no_grad():
        layouts = [cover_layout(size, PATCH, COARSE_LEVEL) for size in batch.image_sizes]
        coarse = harness.measure(lambda: TokenBatch.from_sampled(batch.tokens(layouts), layouts), repeats)
        build = harness.measure(lambda: ctx.pyramids(images).close(), repeats)
        current = coarse.result
        passes.append({"pass": 0, "tokens_per_image": list(current.lengths), "sampled": sum(current.lengths),
                       "sample": cell(coarse), "build_pyramids": cell(build)})
        for index, budget in enumerate(budgets, start=1):
            entry, current = time_pass(ctx, batch, images, model, current, budget, repeats)
            passes.append({"pass": index, **entry})
        finest = int(current.levels.min())
        dense_layouts = [cover_layout(size, PATCH, finest) for size in batch.image_sizes]
        dense = TokenBatch.from_sampled(batch.tokens(dense_layouts), dense_layouts)
        final_forward = harness.measure(lambda: forward(current), repeats)
        dense_forward = harness.measure(lambda: forward(dense), repeats)
    return {"images": count, "image_size": list(images[0].shape[1::-1]), "patch": PATCH, "passes": passes,
            "final": {"tokens_per_image": list(current.lengths), "forward": cell(final_forward)},
            "uniform_at_finest": {"level": finest, "tokens_per_image": list(dense.lengths),
                                  "forward": cell(dense_forward)}}


def fmt(entry: dict[str, float] | None) -> str:
    return "-" if entry is None else f"{entry['median_ms']:.1f} ({entry['min_ms']:.1f})"


def table(report: dict[str, Any]) -> str:
    lines = ["| B | pass | tokens / image | sampled | score | refine | sample new | sample all | rebuild + all |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case in report["cases"]:
        for entry in case["passes"]:
            sample = entry.get("sample_new", entry.get("sample"))
            lines.append(f"| {case['images']} | {entry['pass']} | {entry['tokens_per_image'][0]} | {entry['sampled']} "
                         f"| {fmt(entry.get('score'))} | {fmt(entry.get('refine'))} | {fmt(sample)} | "
                         f"{fmt(entry.get('sample_all'))} | {fmt(entry.get('rebuild_and_sample_all'))} |")
    lines.append("")
    lines.append("| B | final tokens / image | forward | uniform at level | its tokens / image | its forward |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for case in report["cases"]:
        dense = case["uniform_at_finest"]
        lines.append(f"| {case['images']} | {case['final']['tokens_per_image'][0]} | {fmt(case['final']['forward'])} "
                     f"| {dense['level']} | {dense['tokens_per_image'][0]} | {fmt(dense['forward'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budgets", type=lambda t: [int(v) for v in t.split(",")], default=[64, 128])
    parser.add_argument("--batches", type=lambda t: [int(v) for v in t.split(",")], default=[1, 8])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded in the report)")
    parser.add_argument("--quick", action="store_true", help="B = 2, 2 repeats (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/refine-<device>.json)")
    args = parser.parse_args(argv)
    batches = [2] if args.quick else args.batches
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    with glmip.Context() as ctx:
        report: dict[str, Any] = {"benchmark": "refine", "device": ctx.info()["renderer"], "repeats": repeats,
                                  "budgets": args.budgets, "coarse_level": COARSE_LEVEL,
                                  "environment": harness.environment(), "load_average_before": os.getloadavg(),
                                  "cases": []}
        for count in batches:
            report["cases"].append(run_case(ctx, count, args.budgets, repeats))
    report["load_average_after"] = os.getloadavg()  # the machine is shared: how busy it was
    path = harness.write_report(report, "refine", args.out)
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
