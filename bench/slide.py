"""Benchmark: relevance-budgeted slide tokens (glmip) against dense tiling of every tissue patch (CLAM/TRIDENT).

What is measured, on a generated 100,000 x 80,000 pyramidal tiled deflate TIFF (`glmip.slides.synthetic`:
4 levels at 4x steps, mostly constant background, `--tissue` H&E-like regions of 4096 x 3072 level-0
pixels with nuclei and text), each configuration in its own fresh process (cold caches; peak RSS is that
process's `ru_maxrss`, including the Python, torch and GL runtime it loads):

* ``glmip-B`` (B = 256, 1024, 4096): `ctx.slide(path)`, `slide.tissue()` (Otsu on saturation of the coarsest
  level), `slide.allocate(mask, B)` (patch 16, automatic finest level) and `slide.tokens(layout)` into a
  torch (N, 3, 16, 16) tensor. Fidelity: inside each tissue box the tokens are reconstructed with
  `glmip.reconstruct.reconstruct` (each pixel bilinear in its covering token), rounded to 8 bits and
  compared with the level-0 pixels the file holds (PSNR, peak 255, MSE pooled over the boxes).
* ``dense-L0``: the CLAM/TRIDENT approach: the same Otsu tissue mask, then every 256-px level-0 patch whose
  mask cells are mostly tissue read with `tiffslide.TiffSlide.read_region` and stacked into torch float
  (64, 3, 256, 256) batches in [0, 1]. Its token count is patches x (256 / 16)^2 (what a ViT with 16-px
  patches sees). It runs once per torch thread count a user would pick (`bench.harness.peer_thread_settings`),
  the fastest kept (`torch_threads`, `seconds_by_threads`).

Fidelity is scored on the same pixels for both: those of the dense patches lying wholly inside a tissue box
(dense leaves the rest of the tissue out; the share scored is `scored_fraction_of_tissue`). glmip's PSNR over
every tissue pixel is reported beside it (`all_tissue_psnr_db`). A PSNR is null where nothing was scored
(`scored_pixels` 0) or where the pixels are equal (`lossless` true), never one standing for the other.

Time is wall time of the whole configuration after imports (open to tensor), on llvmpipe and CPU torch
sharing the machine's cores. Results: `bench/results/slide-<device>.json`, with the machine block.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGETS = (256, 1024, 4096)
PATCH = 256  # dense patch side, level-0 pixels


def score(squared: float, count: int) -> dict:
    """PSNR (peak 255) of `count` scored values with summed squared error `squared`; None where nothing was
    scored or nothing differs, which `scored_pixels` and `lossless` tell apart."""
    lossless = count > 0 and squared == 0
    value = None if count == 0 or lossless else 10 * math.log10(255.0**2 * count / squared)
    return {"tissue_psnr_db": value, "scored_pixels": count, "lossless": lossless}


def psnr_text(result: dict) -> str:
    if result["scored_pixels"] == 0:
        return "nothing scored"
    return "lossless" if result["lossless"] else f"{result['tissue_psnr_db']:.2f}"


def dense_corners(path: str, patch: int = PATCH) -> list[tuple[int, int]]:
    """The level-0 corners of the patches dense tiling keeps: those whose thumbnail cells are mostly tissue."""
    import tiffslide

    from glmip.slides import tissue_mask

    slide = tiffslide.TiffSlide(path)
    width, height = slide.dimensions
    low = len(slide.level_dimensions) - 1
    thumb = np.asarray(slide.read_region((0, 0), low, slide.level_dimensions[low]))[..., :3]
    mask = tissue_mask(thumb)
    factor = slide.level_downsamples[low]
    slide.close()
    corners = []
    for y in range(0, height - patch + 1, patch):
        for x in range(0, width - patch + 1, patch):
            cells = mask[int(y / factor):int(math.ceil((y + patch) / factor)),
                         int(x / factor):int(math.ceil((x + patch) / factor))]
            if cells.size and cells.mean() >= 0.5:
                corners.append((x, y))
    return corners


def scored_pixels(box: tuple[int, int, int, int], corners: list[tuple[int, int]], patch: int = PATCH) -> np.ndarray:
    """(h, w) bool over tissue `box`: the pixels of dense patches lying wholly inside it (what both are scored on)."""
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for x, y in corners:
        if x0 <= x and x + patch <= x1 and y0 <= y and y + patch <= y1:
            mask[y - y0:y - y0 + patch, x - x0:x - x0 + patch] = True
    return mask


def run_glmip(path: str, budget: int, tissue_boxes: list) -> dict:
    import glmip
    from glmip.reconstruct import reconstruct

    start = time.perf_counter()
    with glmip.Context() as ctx, ctx.slide(path) as slide:
        mask = slide.tissue()
        layout = slide.allocate(mask, budget)
        tokens = slide.tokens(layout)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        from glmip.slides.synthetic import SyntheticSlide

        synthetic = SyntheticSlide(Path(path), slide.width, slide.height, 4, 512, tuple(map(tuple, tissue_boxes)))
        corners = dense_corners(path)
        squared, count, all_squared, all_count = 0.0, 0, 0.0, 0
        for box in synthetic.tissue:
            x0, y0, x1, y1 = box
            half = layout.size / 2
            inside = ((layout.cx + half > x0) & (layout.cx - half < x1) & (layout.cy + half > y0)
                      & (layout.cy - half < y1))
            sub = glmip.TokenLayout(cx=layout.cx[inside] - x0, cy=layout.cy[inside] - y0, size=layout.size[inside],
                                    level=layout.level[inside], patch=layout.patch, image_size=(x1 - x0, y1 - y0))
            picture = reconstruct(tokens[inside], sub).permute(1, 2, 0).numpy()
            picture = np.floor(picture * 255 + 0.5).clip(0, 255)
            errors = ((picture - synthetic.tissue_pixels(box).astype(np.float64)) ** 2).sum(axis=2)
            keep = scored_pixels(box, corners)
            squared += float(errors[keep].sum())
            count += int(keep.sum()) * picture.shape[2]
            all_squared += float(errors.sum())
            all_count += errors.size * picture.shape[2]
        levels = {int(k): int(v) for k, v in zip(*np.unique(layout.level, return_counts=True), strict=True)}
        return {"method": f"glmip-{budget}", "tokens": len(layout), "seconds": elapsed, "peak_rss_bytes": peak,
                **score(squared, count), "all_tissue_psnr_db": score(all_squared, all_count)["tissue_psnr_db"],
                "scored_fraction_of_tissue": count / all_count if all_count else 0.0, "levels": levels,
                "tiles_built": slide._pyramids.builds, "device": str(ctx.info()["renderer"])}


def run_dense(path: str, tissue_boxes: list, threads: int, patch: int = PATCH, batch: int = 64) -> dict:
    import tiffslide
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    corners = dense_corners(path, patch)
    slide = tiffslide.TiffSlide(path)
    from glmip.slides.synthetic import SyntheticSlide

    t0 = time.perf_counter()
    width, height = slide.dimensions
    synthetic = SyntheticSlide(Path(path), width, height, 4, 512, tuple(map(tuple, tissue_boxes)))
    truths = {box: synthetic.tissue_pixels(box) for box in synthetic.tissue}
    squared, count = 0.0, 0
    not_timed = time.perf_counter() - t0
    for first in range(0, len(corners), batch):
        chunk = corners[first:first + batch]
        arrays = [np.asarray(slide.read_region(c, 0, (patch, patch)))[..., :3] for c in chunk]
        tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
        t0 = time.perf_counter()
        for (x, y), pixels in zip(chunk, tensor, strict=True):  # fidelity (not timed): the patches inside boxes
            for (x0, y0, x1, y1), truth in truths.items():
                if x0 <= x and x + patch <= x1 and y0 <= y and y + patch <= y1:
                    got = np.floor(pixels.permute(1, 2, 0).numpy() * 255 + 0.5)
                    squared += float(((got - truth[y - y0:y - y0 + patch, x - x0:x - x0 + patch]) ** 2).sum())
                    count += got.size
        not_timed += time.perf_counter() - t0
    elapsed = time.perf_counter() - start - not_timed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    slide.close()
    return {"method": "dense-L0", "patches": len(corners), "tokens": len(corners) * (patch // 16) ** 2,
            "seconds": elapsed, "peak_rss_bytes": peak, "torch_threads": threads, **score(squared, count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tissue", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/slide-<device>.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--boxes", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        boxes = json.loads(args.boxes)
        result = (run_dense(args.path, boxes, args.threads) if args.one == "dense"
                  else run_glmip(args.path, int(args.one), boxes))
        print(json.dumps(result))
        return
    from bench.harness import environment, peer_thread_settings, write_report
    from glmip.slides.synthetic import write_synthetic_slide

    def one(config: str, *extra: str) -> dict:
        run = subprocess.run([sys.executable, "-m", "bench.slide", "--one", config, "--path", str(synthetic.path),
                              "--boxes", json.dumps(synthetic.tissue), *extra], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print(json.dumps(result))
        return result

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        synthetic = write_synthetic_slide(Path(folder) / "bench.tif", tissue=args.tissue)
        generated = time.perf_counter() - start
        size = synthetic.path.stat().st_size
        print(f"generated {synthetic.width}x{synthetic.height} in {generated:.1f} s ({size / 2**20:.1f} MiB)")
        dense_runs = [one("dense", "--threads", str(n)) for n in peer_thread_settings()]
        dense = min(dense_runs, key=lambda r: r["seconds"])
        dense["seconds_by_threads"] = {str(r["torch_threads"]): r["seconds"] for r in dense_runs}
        results = [dense] + [one(str(budget)) for budget in BUDGETS]
    device = results[1]["device"]
    for result in results[1:]:
        result["token_ratio_vs_dense"] = dense["tokens"] / result["tokens"]
        result["time_ratio_vs_dense"] = dense["seconds"] / result["seconds"]
    report = {"benchmark": "slide", "device": device, "environment": environment(),
              "slide": {"width": synthetic.width, "height": synthetic.height, "tissue_boxes": synthetic.tissue,
                        "file_bytes": size, "generate_seconds": generated},
              "results": results}
    out = write_report(report, "slide", args.out)
    print("| method | tokens | seconds | peak RSS MiB | tissue PSNR (same pixels) | tokens vs dense | speed vs dense |")
    for r in results:
        ratios = ("", "") if r is dense else (f"{r['token_ratio_vs_dense']:.0f}x fewer",
                                              f"{r['time_ratio_vs_dense']:.2f}x")
        print(f"| {r['method']} | {r['tokens']} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
              f"{psnr_text(r)} | {ratios[0]} | {ratios[1]} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
