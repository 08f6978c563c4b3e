"""Throughput of glmip's data paths on a generated folder of 512² and 1024² JPEG/PNG images (decode included).

    python -m bench.dataset [--images 16] [--budget 256] [--repeats 3]

Images/s, over the whole folder, for: glmip in-process batched (`Tokenizer`), a DataLoader with 1 and 2
workers (`Dataset` + `Collate`, workers started per epoch, so worker start-up and each worker's
Context are inside the time), the offline writer (`write_shards` in-process, and the `glmip tokenize`
command as a subprocess, Python start-up included), Ray with 1 and 2 actors (`ray_write_shards`, the
cluster started once, outside the time), and the torch-only peer: PIL decode + `avg_pool2d` pyramid +
`grid_sample` tokens on the same uniform layouts, in-process (timed at every torch thread count a user would
pick, the fastest kept: `bench.harness.measure_peer`) and with the same DataLoader workers (torch runs each
worker at 1 thread).
Peak RSS per DataLoader worker (ru_maxrss, read in the worker). Results: bench/results/dataset-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import glmip
from bench.harness import environment, markdown_table, measure, measure_peer, write_report
from glmip.data import Collate, Dataset, Tokenizer, prepare_images, write_shards

PATCH = 16


def make_folder(root: Path, count: int) -> list[str]:
    """`count` images, half 512², half 1024², alternating JPEG and PNG: smooth colour fields plus noise."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        side = 512 if index < count // 2 else 1024
        yy, xx = np.mgrid[0:side, 0:side] / side
        base = np.stack([np.sin(6 * xx + index), np.cos(5 * yy), np.sin(4 * (xx + yy))], axis=2) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = root / f"img{index:03d}.{'jpg' if index % 2 else 'png'}"
        Image.fromarray(pixels).save(path, quality=90) if index % 2 else Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MeasuredCollate:
    """A collate_fn that also returns the worker's pid and peak RSS."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> tuple[Any, int, float]:
        return self.collate(items), os.getpid(), peak_rss_mib()


class TorchPeer:
    """The torch-only peer: decode with PIL, build an avg_pool2d pyramid, cut every token of a uniform layout
    with grid_sample (bilinear at the token's level, the level's texel centres as glmip samples them)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def tokens(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        layout = glmip.allocate(np.ones((1, 1), np.float32), self.budget, PATCH, image_size=(width, height))
        level = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        pyramid = [level]
        while min(pyramid[-1].shape[-2:]) > 1:
            pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
        steps = (torch.arange(PATCH, dtype=torch.float32) + 0.5) / PATCH - 0.5  # sample offsets in token sides
        out = torch.empty(len(layout), image.shape[2], PATCH, PATCH)
        levels = np.asarray(layout.level).astype(int)
        for lvl in np.unique(levels):
            rows = np.flatnonzero(levels == lvl)
            cx = torch.from_numpy(np.asarray(layout.cx)[rows]).float()[:, None, None]
            cy = torch.from_numpy(np.asarray(layout.cy)[rows]).float()[:, None, None]
            side = torch.from_numpy(np.asarray(layout.size)[rows]).float()[:, None, None]
            gx = (cx + side * steps[None, None, :]) / width * 2 - 1
            gy = (cy + side * steps[None, :, None]) / height * 2 - 1
            grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # (n, P, P, 2)
            source = pyramid[min(int(lvl), len(pyramid) - 1)].expand(len(rows), -1, -1, -1)
            out[rows] = F.grid_sample(source, grid, mode="bilinear", align_corners=False, padding_mode="border")
        return out

    def __call__(self, items: list[Any]) -> list[torch.Tensor]:
        return [self.tokens(item.image if hasattr(item, "image") else item) for item in items]


def loader_case(dataset: Dataset, collate: Any, workers: int, batch: int, stats: dict[str, Any]) -> Any:
    def run() -> None:
        start = time.perf_counter()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                             collate_fn=MeasuredCollate(collate), multiprocessing_context="fork")
        first = None
        rss: dict[int, float] = {}
        for _, pid, peak in loader:
            first = first or time.perf_counter() - start
            rss[pid] = max(rss.get(pid, 0.0), peak)
        stats["first_batch_s"], stats["peak_rss_mib_per_worker"] = first, sorted(rss.values())
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="glmip-bench-dataset-"))
    (work / "images").mkdir()
    paths = make_folder(work / "images", args.images)
    count = len(paths)
    tokenizer = Tokenizer(args.budget, PATCH)
    renderer = tokenizer.context.info()["renderer"]
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, case: Any, peer: bool = False, **extra: Any) -> None:
        if peer:
            best = measure_peer(case, args.repeats)
            timing, extra = best.timing, {**extra, **best.fields()}
        else:
            timing = measure(case, args.repeats)
        results[name] = {"images_per_s": count / timing.median, "median_s": timing.median, "times_s": timing.times,
                         "warmup_s": timing.warmup, **extra}
        print(f"{name:<44} {count / timing.median:7.2f} img/s  ({timing.median:.2f} s) {extra or ''}", flush=True)

    decode_only = measure(lambda: prepare_images(paths), args.repeats)
    results["decode only (PIL, one process)"] = {"images_per_s": count / decode_only.median,
                                                 "median_s": decode_only.median, "times_s": decode_only.times}
    print(f"decode only: {count / decode_only.median:.2f} img/s", flush=True)

    def in_process() -> None:
        for start in range(0, count, args.batch):
            tokenizer(paths[start:start + args.batch])
    record("glmip in-process batched", in_process, peak_rss_mib=peak_rss_mib())
    peer = TorchPeer(args.budget)

    def peer_in_process() -> None:
        for start in range(0, count, args.batch):
            peer(prepare_images(paths[start:start + args.batch]))
    record("torch peer in-process", peer_in_process, peer=True)
    check = tokenizer(paths[:1]).tokens
    peer_gap = float((check - peer.tokens(prepare_images(paths[:1])[0])).abs().max() * 255)

    dataset = Dataset(paths)
    for workers in (1, 2):
        for name, collate in (("glmip", Collate(Tokenizer(args.budget, PATCH))), ("torch peer", peer)):
            stats: dict[str, Any] = {}
            record(f"{name} DataLoader, {workers} worker(s)", loader_case(dataset, collate, workers, args.batch, stats),
                   stats=stats)

    shard_dir = work / "shards"

    def offline(workers: int) -> Any:
        def run() -> None:
            for path in shard_dir.glob("*"):
                path.unlink()
            write_shards(paths, shard_dir, Tokenizer(args.budget, PATCH), workers=workers, batch_size=args.batch,
                         progress=False)
        return run
    for workers in (0, 2):
        record(f"offline write_shards, {workers} worker(s)", offline(workers))

    def cli() -> None:
        out = work / "cli"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        subprocess.run([sys.executable, "-m", "glmip.cli", "tokenize", str(work / "images"), "-o", str(out),
                        "--budget", str(args.budget), "--workers", "2", "--batch-size", str(args.batch), "-q"],
                       check=True, env={**os.environ, "PYTHONPATH": str(Path(glmip.__file__).parents[1])},
                       stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import glmip.cli, glmip.data.shards"], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(glmip.__file__).parents[1])})
    record("offline CLI (glmip tokenize --workers 2)", cli, python_import_s=time.perf_counter() - start)

    if not args.no_ray:
        try:
            import ray

            from glmip.data.ray import ray_write_shards
        except ImportError:
            print("no Ray: the ray extra is not installed")
        else:
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            started = time.perf_counter() - start
            try:
                for actors in (1, 2):
                    def run(actors: int = actors) -> None:
                        out = work / f"ray{actors}"
                        subprocess.run(["rm", "-rf", str(out)], check=True)
                        ray_write_shards(paths, out, Tokenizer(args.budget, PATCH), concurrency=actors,
                                         batch_size=args.batch)
                    record(f"Ray, {actors} actor(s)", run, ray_init_s=started)
            finally:
                ray.shutdown()

    report = {"benchmark": "dataset", "device": renderer, "environment": environment(ray=_version("ray")),
              "images": count, "sizes": "half 512², half 1024²; JPEG and PNG alternating", "budget": args.budget,
              "patch": PATCH, "batch": args.batch, "repeats": args.repeats,
              "peer_max_abs_diff_lsb": peer_gap, "results": results}
    print(f"wrote {write_report(report, 'dataset', args.out)}")
    rows = [[name, f"{r['images_per_s']:.2f}", f"{r['median_s']:.2f}"] for name, r in results.items()]
    print(markdown_table(["path", "images/s", "s per folder"], rows))


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None


if __name__ == "__main__":
    main()
