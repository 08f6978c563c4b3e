"""Benchmark: what a batch costs through `glmip.tokenize` — GL calls, blocking reads, images per second —
against an earlier glmip (a git commit, run from its own tree in the same run) and a torch-only peer.

Four parts, one run, one machine:
- **GL calls and blocking reads per batch** (with Debian's `apitrace`, where installed): a child process
  tokenizes B same-size images (B = 1, 16, 64, 256) and a batch of 4 distinct sizes, traced once with
  one call and once with two; the difference is one call's cost. Blocking reads are the calls that
  wait for the GPU to hand data to the host (`glMapBufferRange`, `glGetTextureImage`, ...).
- **Throughput against the earlier glmip**: 64² images at budget 16 (B = 256) and 256² at budget 64
  (B = 64), uniform and gaze relevance; the same child script times `glmip.tokenize` from this tree
  and from the `--baseline` commit's tree (checked out with `git worktree` into a temporary folder).
- **Against the torch peer at 1024², budget 256** (gaze): an `avg_pool2d` pyramid of the batch,
  glmip's allocator on the numpy relevance pyramid (no GL) and trilinear `grid_sample` tokens on
  the same layouts, timed at every thread count a user would pick (`harness.measure_peer`: 1, 2, the
  default, every core) with the fastest kept (each recorded); and the share of glmip's time spent in
  allocation.
- **A training loop's feed**: PNG files tokenized batch by batch with a `Tokenizer`, against the same
  batches through `glmip.data.TokenStream` (decode of the next batch overlapping this one's tokenizing).

Run from the repository root: `python -m bench.batch` (`--quick` for a smoke run). JSON in
bench/results/batch-<device>.json, plot in docs/batch-throughput.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
BASELINE = "8772f6e"  # the last commit whose every stage looped over images
# Calls that make the host wait for the GPU's data.
BLOCKING = {"glMapBufferRange", "glMapBuffer", "glMapNamedBufferRange", "glGetBufferSubData",
            "glGetNamedBufferSubData", "glGetTextureImage", "glGetTexImage", "glGetTextureSubImage", "glReadPixels",
            "glFinish", "glClientWaitSync"}

# The child: builds seeded images, runs `glmip.tokenize` `calls` times (or times it), prints JSON. It uses
# only the API both trees share, so one script times both.
CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import glmip
spec = json.loads(sys.argv[2])
rng = np.random.default_rng(0)
sizes = [tuple(s) for s in spec["sizes"]]
images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
def relevance():
    if spec["relevance"] == "gaze":
        return [glmip.gaze((w, h), (0.3 + 0.4 * (i % 3) / 2, 0.6)) for i, (w, h) in enumerate(sizes)]
    return None
ctx = glmip.Context()
if spec["mode"] == "trace":
    for _ in range(spec["calls"]):
        glmip.tokenize(images, relevance(), spec["budget"], spec["patch"], context=ctx)
    print(json.dumps({}))
else:
    maps = relevance()
    glmip.tokenize(images, maps, spec["budget"], spec["patch"], context=ctx)
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        glmip.tokenize(images, maps, spec["budget"], spec["patch"], context=ctx)
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": float(np.median(times)), "times": times, "glmip": glmip.__file__}))
ctx.close()
"""


def child(tree: Path, spec: dict[str, Any], tracer: list[str] | None = None) -> dict[str, Any]:
    command = [*(tracer or []), sys.executable, "-c", CHILD, str(tree), json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tree, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the benchmark child failed in {tree}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- GL calls -----------------------------------------------------------------------------
def traced_calls(tree: Path, spec: dict[str, Any], folder: Path) -> Counter:
    """GL/EGL calls by name of the child run with `spec` under apitrace."""
    trace = folder / f"{spec['calls']}.trace"
    trace.unlink(missing_ok=True)
    child(tree, spec, ["apitrace", "trace", "--api", "egl", "-o", str(trace)])
    dump = subprocess.run(["apitrace", "dump", str(trace)], capture_output=True, text=True, check=True).stdout
    names = Counter()
    for line in dump.splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2 and parts[0].isdigit() and parts[1][:2] in ("gl", "eg"):
            names[parts[1].split("(", 1)[0]] += 1
    return names


def calls_per_batch(tree: Path, sizes: list[tuple[int, int]], relevance: str, budget: int, patch: int
                    ) -> dict[str, Any]:
    """One tokenize call's GL calls and blocking reads: a two-call trace minus a one-call trace."""
    with tempfile.TemporaryDirectory() as folder:
        spec = {"mode": "trace", "sizes": sizes, "relevance": relevance, "budget": budget, "patch": patch}
        once = traced_calls(tree, {**spec, "calls": 1}, Path(folder))
        twice = traced_calls(tree, {**spec, "calls": 2}, Path(folder))
    diff = {name: twice[name] - once[name] for name in twice | once if twice[name] != once[name]}
    return {"gl_calls": sum(diff.values()), "blocking_reads": sum(v for k, v in diff.items() if k in BLOCKING),
            "by_name": dict(sorted(diff.items(), key=lambda kv: -kv[1]))}


# -- the torch peer ------------------------------------------------------------------------
def torch_levels(batch: torch.Tensor) -> list[torch.Tensor]:
    """(B, C, H, W) float levels of a batch, 2x2 average pooling down to 1x1."""
    levels = [batch]
    level = batch
    while max(level.shape[-2:]) > 1:
        level = F.avg_pool2d(level, 2) if min(level.shape[-2:]) > 1 else \
            F.adaptive_avg_pool2d(level, (max(1, level.shape[-2] // 2), max(1, level.shape[-1] // 2)))
        levels.append(level)
    return levels


def peer_tokens(levels: list[torch.Tensor], layout: glmip.TokenLayout, patch: int) -> torch.Tensor:
    """(N, C, P, P) trilinear samples at each token's patch grid and level, as tokens.comp takes them."""
    width, height = layout.image_size
    cells = (torch.arange(patch, dtype=torch.float32) + 0.5) / patch - 0.5
    cx, cy = torch.from_numpy(layout.cx).float(), torch.from_numpy(layout.cy).float()
    size = torch.from_numpy(layout.size).float()
    x = (cx[:, None, None] + cells[None, None, :] * size[:, None, None]) / width
    y = (cy[:, None, None] + cells[None, :, None] * size[:, None, None]) / height
    uv = torch.stack(torch.broadcast_tensors(x, y), -1).reshape(-1, 2)
    lod = torch.from_numpy(layout.level).float().repeat_interleave(patch * patch)
    values = peer_trilinear(levels, uv, lod)
    return values.reshape(len(layout), patch, patch, -1).permute(0, 3, 1, 2)


def peer(images: torch.Tensor, maps: list[np.ndarray], budget: int, patch: int) -> int:
    """The torch-only pipeline on a (B, C, H, W) uint8 batch: one batched pyramid, allocation per image on
    the numpy relevance pyramid, grid_sample tokens per image."""
    levels = torch_levels(images.float() / 255.0)
    size = (images.shape[-1], images.shape[-2])
    layouts = glmip.allocate_batch(maps, budget, patch, image_sizes=[size] * len(maps))
    return sum(peer_tokens([level[b:b + 1] for level in levels], layout, patch).shape[0]
               for b, layout in enumerate(layouts))


# -- the run -------------------------------------------------------------------------------
def gaze_maps(size: int, count: int) -> list[np.ndarray]:
    return [glmip.gaze((size, size), (0.3 + 0.4 * (i % 3) / 2, 0.6)) for i in range(count)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    current = ROOT
    baseline_tree = Path(tempfile.mkdtemp(prefix="glmip-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(baseline_tree), args.baseline], cwd=ROOT,
                   check=True, capture_output=True)
    report: dict[str, Any] = {"benchmark": "batch", "baseline": args.baseline, "repeats": args.repeats}
    try:
        with glmip.Context() as ctx:
            report["device"] = ctx.info()["renderer"]
        tracer = shutil.which("apitrace")
        counts = []
        trace_cases = [([(64, 64)] * b, "none") for b in args.trace_batches] + \
                      [([(64, 64)] * b, "gaze") for b in args.trace_batches[:2]] + \
                      [([(64 + 8 * (i % 4), 64) for i in range(16)], "none")]
        throughput_cases = [(64, 16, 256, "none"), (64, 16, 256, "gaze"), (256, 64, 64, "none"),
                            (256, 64, 64, "gaze")]
        if args.quick:
            throughput_cases = [(64, 16, 32, "none"), (256, 64, 8, "gaze")]
        steps = (len(trace_cases) * 2 if tracer else 0) + 2 * len(throughput_cases) + 5
        with tqdm(total=steps, unit="case", desc="batch bench") as bar:
            if tracer:
                for sizes, relevance in trace_cases:
                    row = {"images": len(sizes), "distinct_sizes": len(set(sizes)), "relevance": relevance}
                    for name, tree in (("glmip", current), ("baseline", baseline_tree)):
                        row[name] = calls_per_batch(tree, sizes, relevance, 16, 16)
                        bar.update()
                    counts.append(row)
            report["gl_calls"] = counts if tracer else "apitrace is not installed (apt-get install apitrace)"
            rows = []
            for size, budget, count, relevance in throughput_cases:
                spec = {"mode": "time", "sizes": [(size, size)] * count, "relevance": relevance, "budget": budget,
                        "patch": 16, "repeats": args.repeats}
                now = child(current, spec)
                bar.update()
                before = child(baseline_tree, spec)
                bar.update()
                rows.append({"size": size, "budget": budget, "images": count, "relevance": relevance,
                             "glmip_s": now["median_s"], "baseline_s": before["median_s"],
                             "glmip_images_per_s": count / now["median_s"],
                             "baseline_images_per_s": count / before["median_s"],
                             "speedup": before["median_s"] / now["median_s"]})
            report["throughput"] = rows
            report["peer"] = peer_run(args, bar)
            report["stream"] = stream_run(args, bar)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline_tree)], cwd=ROOT, capture_output=True)
    return report


def peer_run(args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    size, budget, count = (256, 64, 4) if args.quick else (1024, 256, args.peer_batch)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
    maps = gaze_maps(size, count)
    stack = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    with glmip.Context() as ctx:
        timing = harness.measure(lambda: glmip.tokenize(stack, maps, budget, 16, context=ctx), args.repeats)
        bar.update()
        start = time.perf_counter()
        for _ in range(args.repeats):
            glmip.allocate_batch(maps, budget, 16, image_sizes=[(size, size)] * count, context=ctx)
        allocation = (time.perf_counter() - start) / args.repeats
    bar.update()
    best = harness.measure_peer(lambda: peer(stack, maps, budget, 16), args.repeats)
    bar.update()
    peer_s = best.timing.median
    return {"size": size, "budget": budget, "images": count, "relevance": "gaze", "glmip_s": timing.median,
            "glmip_images_per_s": count / timing.median, "allocation_s": allocation,
            "allocation_share": allocation / timing.median, "peer_s": peer_s, "peer_threads": best.threads,
            "peer_median_s_by_threads": {str(k): v for k, v in best.median_s_by_threads.items()},
            "peer_images_per_s": count / peer_s, "vs_peer": peer_s / timing.median}


def stream_run(args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    """A training loop's feed from image files: `TokenStream` (decode of batch k+1 on a worker thread while
    batch k is tokenized) against calling the same `Tokenizer` on each batch in turn, same files, same run."""
    from PIL import Image

    from glmip.data import Tokenizer, TokenStream

    batches, per_batch, size = (3, 4, 256) if args.quick else (8, 16, 512)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for index in range(batches * per_batch):
            path = Path(folder) / f"{index:03d}.png"
            ramp = np.linspace(0, 255, size, dtype=np.float64)
            pixels = (ramp[None, :, None] + rng.normal(0, 24, (size, size, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path)
            files.append(str(path))
        source = [files[i:i + per_batch] for i in range(0, len(files), per_batch)]
        tokenizer = Tokenizer(budget=64, patch=16)
        tokenizer(source[0])  # compile the programs once, outside both timings
        loop = harness.measure(lambda: [tokenizer(batch) for batch in source], args.repeats)
        bar.update()
        stream = harness.measure(lambda: list(TokenStream(source, tokenizer)), args.repeats)
        bar.update()
        tokenizer.close()
    images = batches * per_batch
    return {"size": size, "batches": batches, "images_per_batch": per_batch, "budget": 64, "format": "png",
            "loop_s": loop.median, "stream_s": stream.median, "loop_images_per_s": images / loop.median,
            "stream_images_per_s": images / stream.median, "speedup": loop.median / stream.median}


def table(report: dict[str, Any]) -> str:
    lines = []
    if isinstance(report.get("gl_calls"), list):
        rows = [[str(r["images"]), str(r["distinct_sizes"]), r["relevance"],
                 f"{r['glmip']['gl_calls']} / {r['glmip']['blocking_reads']}",
                 f"{r['baseline']['gl_calls']} / {r['baseline']['blocking_reads']}"] for r in report["gl_calls"]]
        lines.append(harness.markdown_table(["images", "sizes", "relevance", "GL calls / blocking reads",
                                             f"at {report['baseline']}"], rows, left=3))
    rows = [[f"{r['size']}²", str(r["budget"]), str(r["images"]), r["relevance"], f"{r['glmip_images_per_s']:.0f}",
             f"{r['baseline_images_per_s']:.0f}", f"{r['speedup']:.1f}×"] for r in report["throughput"]]
    lines.append(harness.markdown_table(["size", "budget", "batch", "relevance", "images/s", f"at {report['baseline']}",
                                         "speed-up"], rows, left=4))
    p = report["peer"]
    lines.append(harness.markdown_table(
        ["size", "budget", "batch", "glmip images/s", f"torch peer images/s ({p['peer_threads']} thread(s))",
         "× peer", "allocation"],
        [[f"{p['size']}²", str(p["budget"]), str(p["images"]), f"{p['glmip_images_per_s']:.1f}",
          f"{p['peer_images_per_s']:.1f}", f"{p['vs_peer']:.2f}×", f"{100 * p['allocation_share']:.0f}%"]], left=3))
    if "stream" in report:
        st = report["stream"]
        lines.append(harness.markdown_table(
            ["files", "batches", "images/s, Tokenizer per batch", "images/s, TokenStream", "speed-up"],
            [[f"{st['batches'] * st['images_per_batch']} PNG of {st['size']}²", str(st["batches"]),
              f"{st['loop_images_per_s']:.1f}", f"{st['stream_images_per_s']:.1f}", f"{st['speedup']:.2f}×"]],
            left=2))
    return "\n\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    fig, axes = harness.figure(1, 2, figsize=(11, 4))
    rows = report["throughput"]
    labels = [f"{r['size']}² b{r['budget']}\n{r['relevance']}" for r in rows]
    x = np.arange(len(rows))
    axes[0].bar(x - 0.2, [r["baseline_images_per_s"] for r in rows], 0.4, label=f"glmip {report['baseline']}")
    axes[0].bar(x + 0.2, [r["glmip_images_per_s"] for r in rows], 0.4, label="glmip (batch path)")
    axes[0].set_xticks(x, labels)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"images / s ({report['device']})")
    axes[0].legend()
    axes[0].set_title("tokenize throughput")
    if isinstance(report.get("gl_calls"), list):
        same = [r for r in report["gl_calls"] if r["distinct_sizes"] == 1 and r["relevance"] == "none"]
        axes[1].plot([r["images"] for r in same], [r["baseline"]["gl_calls"] for r in same], "o-",
                     label=f"glmip {report['baseline']}")
        axes[1].plot([r["images"] for r in same], [r["glmip"]["gl_calls"] for r in same], "o-", label="batch path")
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("images per batch (64², uniform relevance)")
        axes[1].set_ylabel("GL calls per tokenize call")
        axes[1].legend()
        axes[1].set_title("GL calls per batch (apitrace)")
    return harness.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="the git commit to compare with (default %(default)s)")
    parser.add_argument("--trace-batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--peer-batch", type=int, default=8, help="images of 1024² in the peer comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small cases, batches 1 and 4 traced, one repeat")
    parser.add_argument("--out", help="JSON path (default bench/results/batch-<device>.json)")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "batch-throughput.png"))
    args = parser.parse_args(argv)
    if args.quick:
        args.trace_batches, args.repeats = [1, 4], 1
    report = run(args)
    path = harness.write_report(report, "batch", args.out)
    harness.plot_if_possible(plot, report, Path(args.plot) if args.plot else None)
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
