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
  patches sees); fidelity is computed the same way (patches are level-0 pixels: lossless where they cover).

Time is wall time of the whole configuration after imports (open to tensor), on llvmpipe and CPU torch
sharing the machine's cores. Results: `bench/results/slide-llvmpipe.json`.
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

RESULTS = Path(__file__).resolve().parent / "results" / "slide-llvmpipe.json"
BUDGETS = (256, 1024, 4096)


def psnr(mse: float) -> float | None:
    return None if mse == 0 else 10 * math.log10(255.0**2 / mse)


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
        squared, count = 0.0, 0
        for box in synthetic.tissue:
            x0, y0, x1, y1 = box
            half = layout.size / 2
            inside = ((layout.cx + half > x0) & (layout.cx - half < x1) & (layout.cy + half > y0)
                      & (layout.cy - half < y1))
            sub = glmip.TokenLayout(cx=layout.cx[inside] - x0, cy=layout.cy[inside] - y0, size=layout.size[inside],
                                    level=layout.level[inside], patch=layout.patch, image_size=(x1 - x0, y1 - y0))
            picture = reconstruct(tokens[inside], sub).permute(1, 2, 0).numpy()
            picture = np.floor(picture * 255 + 0.5).clip(0, 255)
            truth = synthetic.tissue_pixels(box).astype(np.float64)
            squared += float(((picture - truth) ** 2).sum())
            count += truth.size
        levels = {int(k): int(v) for k, v in zip(*np.unique(layout.level, return_counts=True), strict=True)}
        return {"method": f"glmip-{budget}", "tokens": len(layout), "seconds": elapsed, "peak_rss_bytes": peak,
                "tissue_psnr_db": psnr(squared / count), "levels": levels, "tiles_built": slide._pyramids.builds}


def run_dense(path: str, tissue_boxes: list, patch: int = 256, batch: int = 64) -> dict:
    import tiffslide
    import torch

    from glmip.slides import tissue_mask

    start = time.perf_counter()
    slide = tiffslide.TiffSlide(path)
    width, height = slide.dimensions
    low = len(slide.level_dimensions) - 1
    thumb = np.asarray(slide.read_region((0, 0), low, slide.level_dimensions[low]))[..., :3]
    mask = tissue_mask(thumb)
    factor = slide.level_downsamples[low]
    corners = []
    for y in range(0, height - patch + 1, patch):
        for x in range(0, width - patch + 1, patch):
            cells = mask[int(y / factor):int(math.ceil((y + patch) / factor)),
                         int(x / factor):int(math.ceil((x + patch) / factor))]
            if cells.size and cells.mean() >= 0.5:
                corners.append((x, y))
    squared, count, covered = 0.0, 0, 0
    from glmip.slides.synthetic import SyntheticSlide

    t0 = time.perf_counter()
    synthetic = SyntheticSlide(Path(path), width, height, 4, 512, tuple(map(tuple, tissue_boxes)))
    truths = {box: synthetic.tissue_pixels(box) for box in synthetic.tissue}
    scoring = time.perf_counter() - t0
    for first in range(0, len(corners), batch):
        chunk = corners[first:first + batch]
        arrays = [np.asarray(slide.read_region(c, 0, (patch, patch)))[..., :3] for c in chunk]
        tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
        t0 = time.perf_counter()
        for (x, y), pixels in zip(chunk, tensor, strict=True):  # fidelity (not timed): patches against truth
            for (x0, y0, x1, y1), truth in truths.items():
                if x0 <= x and x + patch <= x1 and y0 <= y and y + patch <= y1:
                    got = np.floor(pixels.permute(1, 2, 0).numpy() * 255 + 0.5)
                    squared += float(((got - truth[y - y0:y - y0 + patch, x - x0:x - x0 + patch]) ** 2).sum())
                    count += got.size
                    covered += 1
        scoring += time.perf_counter() - t0
    elapsed = time.perf_counter() - start - scoring
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    slide.close()
    return {"method": "dense-L0", "patches": len(corners), "tokens": len(corners) * (patch // 16) ** 2,
            "seconds": elapsed, "peak_rss_bytes": peak,
            "tissue_psnr_db": psnr(squared / count) if count else None, "patches_in_boxes": covered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tissue", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--boxes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        boxes = json.loads(args.boxes)
        result = run_dense(args.path, boxes) if args.one == "dense" else run_glmip(args.path, int(args.one), boxes)
        print(json.dumps(result))
        return
    from glmip.slides.synthetic import write_synthetic_slide

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        synthetic = write_synthetic_slide(Path(folder) / "bench.tif", tissue=args.tissue)
        generated = time.perf_counter() - start
        size = synthetic.path.stat().st_size
        print(f"generated {synthetic.width}x{synthetic.height} in {generated:.1f} s ({size / 2**20:.1f} MiB)")
        results = []
        for config in ["dense", *map(str, BUDGETS)]:
            run = subprocess.run([sys.executable, __file__, "--one", config, "--path", str(synthetic.path),
                                  "--boxes", json.dumps(synthetic.tissue)], capture_output=True, text=True, check=True)
            result = json.loads(run.stdout.strip().splitlines()[-1])
            results.append(result)
            print(json.dumps(result))
    dense = results[0]
    for result in results[1:]:
        result["token_ratio_vs_dense"] = dense["tokens"] / result["tokens"]
        result["time_ratio_vs_dense"] = dense["seconds"] / result["seconds"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"slide": {"width": synthetic.width, "height": synthetic.height,
                                             "tissue_boxes": synthetic.tissue, "file_bytes": size,
                                             "generate_seconds": generated},
                                   "results": results}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
