"""Benchmark: what one training step of bench.learn costs, batch assembly included, and how fast scenes are drawn.

The step. bench.learn trains the same ViT on every input for thousands of steps; at a tiny model the
step is all overhead. This times whole AdamW steps at ``--batch`` (64) of bench.learn's code for two
models: ``tiny`` (1 block, dim 8, 1 head: compute about zero, so the time is the step's bookkeeping)
and ``study`` (the CPU study's ViT: 3 blocks, dim 64, 4 heads), on two inputs of 128² code scenes:
``glmip-25`` (variable token counts, at most 25) and ``dense`` (64 patches). Paths:

* ``host``: a `TokenBatch` assembled per step from the cache (`Cache.token_batch`: the rows gathered
  by a Python loop over images, layouts concatenated on the host, then `TokenClassifier` on the packed
  batch) and the loss read back every step -- how bench.learn trained before its caches were padded;
* ``device``: the padded device cache (`Cache.batch`: one `index_select` per tensor with a device index
  tensor, fixed shapes) and `TokenClassifier.forward_padded`, the loss left on the device;
* ``compiled``: ``device`` with the loss's forward under `torch.compile` (``--compile`` in bench.learn).

Each (model, input, path) is warmed up, then ``--repeats`` blocks of steps are timed (wall time of the block
up to a device sync, divided by its steps); the report gives the median block. Batches follow one seeded
order, as bench.learn's do.

Scene drawing: `bench.learn.make_code_scene` at ``--scene-size`` (512²) in this process, one torch thread,
scenes per second per core, and the time 20,000 scenes would take on 15 worker processes (the GPU run's
``--workers 15``) if they scaled linearly -- a projection, labelled as one.

Usage::

    python -m bench.learn_step [--device cpu] [--out bench/results/learn-step-<device>.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import glmip
from bench.harness import environment, markdown_table, sync, write_report
from bench.learn import (
    Cache,
    Fonts,
    Input,
    batch_loss,
    batch_order,
    build_caches,
    draw_scenes,
    make_code_scene,
    make_model,
    make_optimiser,
    packed_logits_of,
    parse_args,
    precision,
    tokenise_chunk,
    train_step,
)

MODELS = {"tiny": {"dim": 8, "depth": 1, "heads": 1}, "study": {"dim": 64, "depth": 3, "heads": 4}}
INPUTS = (Input("glmip-25", "glmip", 25), Input("dense", "dense", None))
PATHS = ("host", "device", "compiled")


def study_args(model: str, batch: int, device: str, compiled: bool = False) -> argparse.Namespace:
    """bench.learn's arguments for `model` at `batch` on `device` (everything else its defaults)."""
    spec = MODELS[model]
    return parse_args(["--batch", str(batch), "--device", device, "--dim", str(spec["dim"]), "--depth",
                       str(spec["depth"]), "--heads", str(spec["heads"]), "--steps", "1000"]
                      + (["--compile"] if compiled else []))


def caches_for(scenes: int, device: str) -> dict[str, Cache]:
    """`scenes` training scenes of the default 128² study, tokenised for `INPUTS` (bench.learn's own code)."""
    args = parse_args(["--device", device, "--train", str(scenes)])
    fonts = Fonts.available()
    with glmip.Context() as ctx:
        parts = [tokenise_chunk(ctx, list(INPUTS), draw_scenes("train", start, min(32, scenes - start), args, fonts))
                 for start in range(0, scenes, 32)]
    return build_caches(parts, list(INPUTS), args.alphabet, torch.device(device))


def host_steps(cache: Cache, args: argparse.Namespace) -> Callable[[int], None]:
    """`steps(n)`: n AdamW steps as bench.learn took them before its caches were padded: the batch order a host
    queue of seeded permutations, a `TokenBatch` assembled per step, the loss read back every step."""
    model = make_model(args)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    order = np.random.default_rng(args.seed)
    queue: list[int] = []

    def steps(count: int) -> None:
        nonlocal queue
        for _ in range(count):
            if len(queue) < args.batch:
                queue += order.permutation(len(cache)).tolist()
            index, queue = queue[:args.batch], queue[args.batch:]
            with precision(args):
                logits = packed_logits_of(model, cache.token_batch(index), args.code_length)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), cache.codes[index].flatten())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            float(loss.detach())
    return steps


def device_steps(cache: Cache, args: argparse.Namespace) -> Callable[[int], None]:
    """`steps(n)`: n AdamW steps as bench.learn's `train` takes them: the padded device cache, a device batch
    order made up front, `batch_loss` (compiled with `args.compile`), the losses kept on the device."""
    model = make_model(args)
    optimiser = make_optimiser(model, args)
    loss_of = batch_loss(model, cache, args)
    order = batch_order(len(cache), 4096, args.batch, args.seed, args.device)
    losses = torch.zeros(len(order), device=args.device)
    taken = 0

    def steps(count: int) -> None:
        nonlocal taken
        for _ in range(count):
            step = taken % len(order)
            losses[step] = train_step(loss_of, optimiser, order[step])
            taken += 1
    return steps


def time_steps(steps: Callable[[int], None], warm: int, timed: int, repeats: int, device: str) -> dict[str, Any]:
    steps(warm)
    sync(device)
    blocks = []
    for _ in range(repeats):
        begin = time.perf_counter()
        steps(timed)
        sync(device)
        blocks.append((time.perf_counter() - begin) / timed * 1e3)
    return {"ms_per_step": statistics.median(blocks), "block_ms_per_step": blocks, "warm_steps": warm,
            "timed_steps": timed}


def scene_rate(size: int, count: int) -> dict[str, Any]:
    """Scenes per second of `make_code_scene` at `size`² on one torch thread in this process."""
    fonts, threads = Fonts.available(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_code_scene(0, size, fonts, "0123456789", 4)
        begin = time.perf_counter()
        for seed in range(count):
            make_code_scene(seed, size, fonts, "0123456789", 4)
        seconds = time.perf_counter() - begin
    finally:
        torch.set_num_threads(threads)
    rate = count / seconds
    return {"size": size, "scenes": count, "ms_per_scene": seconds / count * 1e3, "scenes_per_s_per_core": rate,
            "projected_s_20000_on_15_workers": 20000 / (15 * rate)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    caches = caches_for(args.scenes, args.device)
    rows = []
    for model in args.models:
        warm, timed = (10, 100) if model == "tiny" else (3, 10)
        for item in INPUTS:
            for path in args.paths:
                study = study_args(model, args.batch, args.device, compiled=path == "compiled")
                steps = (host_steps if path == "host" else device_steps)(caches[item.name], study)
                timing = time_steps(steps, warm, timed, args.repeats, args.device)
                rows.append({"model": model, **MODELS[model], "input": item.name, "path": path,
                             "batch": args.batch, **timing})
                print(f"{model:6s} {item.name:9s} {path:9s} {timing['ms_per_step']:8.2f} ms/step")
    device_name = torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else "cpu"
    return {"device": device_name, **environment(numpy=np.__version__), "batch": args.batch,
            "scenes_in_cache": args.scenes, "repeats": args.repeats, "steps": rows,
            "scene_drawing": scene_rate(args.scene_size, args.scene_count)}


def table(report: dict[str, Any]) -> str:
    return markdown_table(["model", "input", "path", "ms / step"],
                          [[r["model"], r["input"], r["path"], f"{r['ms_per_step']:.2f}"] for r in report["steps"]])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--scenes", type=int, default=256, help="training scenes in the caches")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per case (the median is reported)")
    parser.add_argument("--scene-size", type=int, default=512)
    parser.add_argument("--scene-count", type=int, default=40, help="scenes drawn to time the drawing")
    parser.add_argument("--out", default=None, help="JSON (default bench/results/learn-step-<device>.json)")
    args = parser.parse_args(argv)
    if min(args.batch, args.scenes, args.repeats, args.scene_count) < 1 or args.scenes < args.batch:
        parser.error("--batch, --scenes, --repeats and --scene-count must be positive and --scenes >= --batch")
    report = run(args)
    out = write_report(report, "learn-step", args.out)
    print(table(report))
    print(f"scene drawing at {args.scene_size}²: {report['scene_drawing']}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
