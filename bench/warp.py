"""Benchmark: perspective warps per second, glmip's fragment path vs its compute path vs kornia vs grid_sample,
plus the quality of each against the supersampled reference, in one run.

Speed, per (input size -> output size, batch): a random RGBA8 square image, one warp per batch item with a
different homography (the image tilted by 40°..80° as `glmip.warp.tilt_homography` sets it up, so every
output is minified and perspective). Methods:

* ``glmip-fragment-<filter>``: ``glmip.warp(pyramid, H, size, filter=...)`` for the whole batch (one draw
  per item into one framebuffer, read into a (B, 4, h, w) float32 tensor).
* ``glmip-compute-<filter>``: the same warp through the compute path: uv and analytic gradients per output
  pixel (``glmip.warp.warp_coordinates``, numpy), ``Pyramid.sample(uv, grad=...)``, reshaped to (B, 4, h, w)
  (sample() wraps "clamp": it has no zero border, so sources outside the image differ; same cost).
* ``kornia-bilinear``: ``kornia.geometry.transform.warp_perspective`` with ``glmip.warp.kornia_matrix(H)``.
* ``grid_sample-bilinear``: the grid built in torch from H at every output pixel centre, ``F.grid_sample``.

The torch peers sample level 0 only (no mip chain): that is the point of the comparison (quality below).
The glmip pyramid (``method="box"``) and the float32 source tensor are built once, untimed; for a batch the
torch source is the one image expanded to B (no copy). Every case: one warm-up, then ``--repeats`` timed runs
(fewer if they would exceed ``--budget-s``); reported median, warps/s = batch / median and
``ratio_vs_grid_sample`` = median(grid_sample, same size and batch) / median(this). The torch peers are timed
at every thread count a user would pick (``bench.harness.measure_peer``), the fastest kept and recorded
(``torch_threads``, ``median_s_by_threads``).

Quality: the 512² test pattern (zone plate, 1-px lines, 3.1-px stripes) through the test cases of
tests/test_warp.py, PSNR and ``glmip.reference.aliasing_energy`` against
``glmip.reference.warp_supersampled`` (16x16 samples a pixel for the tilts, else 8x8), border "zero".

``--figure PATH`` also writes the README picture: the 80° tilt by grid_sample, kornia, glmip anisotropic
and the reference, side by side.

Usage::

    python bench/warp.py [--repeats 5] [--budget-s 20] [--figure docs/warp-comparison.png]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import glmip
from bench.harness import measure, measure_peer, torch_device_label, write_report
from bench.pyramid import random_image
from glmip import reference
from glmip.warp import kornia_matrix, tilt_homography, warp, warp_coordinates

SPEED_CASES = ((1024, 512, 1), (1024, 512, 32), (4096, 1024, 1), (4096, 1024, 32))
METHODS = ("glmip-fragment-anisotropic", "glmip-fragment-trilinear", "glmip-compute-anisotropic",
           "glmip-compute-trilinear", "kornia-bilinear", "grid_sample-bilinear")
QUALITY_SIZE = 512


# -- inputs -------------------------------------------------------------------------------
def pattern(size: int) -> np.ndarray:
    """RGB8 pattern that aliases under minification: zone plate (rising to 0.5 cycles/px at radius size/2),
    1-px lines every 16 px, 3.1-px oblique stripes (tests/test_warp.py uses it too)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2
    zone = 0.5 + 0.5 * np.cos(math.pi * ((x - c) ** 2 + (y - c) ** 2) / size)
    lines = ((np.floor(x) % 16 == 0) | (np.floor(y) % 16 == 0)).astype(np.float64)
    stripes = 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * (x * 0.8 + y * 0.6) / 3.1))
    return np.round(np.stack([zone, lines, stripes], -1) * 255).astype(np.uint8)


def affine(size_in: int, size_out: int, scale: float, angle: float = 0.0, shear: float = 0.0) -> np.ndarray:
    """Output -> input: about the centres, scale then shear then rotate by `angle` degrees."""
    a = math.radians(angle)
    t_in = np.array([[1, 0, size_in / 2], [0, 1, size_in / 2], [0, 0, 1.0]])
    t_out = np.array([[1, 0, -size_out / 2], [0, 1, -size_out / 2], [0, 0, 1.0]])
    rotation = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return t_in @ rotation @ np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1.0]]) @ np.diag([scale, scale, 1.0]) @ t_out


def quality_cases(size: int = QUALITY_SIZE) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    return {
        "identity": (np.eye(3), (size, size)),
        "minify2": (np.diag([2.0, 2.0, 1.0]), (size // 2, size // 2)),
        "minify8": (np.diag([8.0, 8.0, 1.0]), (size // 8, size // 8)),
        "tilt60": (tilt_homography((size, size), (192, 128), 60), (192, 128)),
        "tilt80": (tilt_homography((size, size), (192, 128), 80), (192, 128)),
        "rotation_shear": (affine(size, 160, 3.0, 30, 0.4), (160, 160)),
    }


def batch_matrices(size_in: int, size_out: int, batch: int) -> np.ndarray:
    tilts = np.linspace(40.0, 80.0, batch) if batch > 1 else [60.0]
    return np.stack([tilt_homography((size_in, size_in), (size_out, size_out), t) for t in tilts])


# -- the four ways to warp ----------------------------------------------------------------
def torch_grid(matrices: torch.Tensor, size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """grid_sample's grid (B, h, w, 2) for glmip's H (output -> input pixels, centres at i + 0.5)."""
    width, height = size
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    q = torch.einsum("bij,nj->bni", matrices, points)
    source = q[..., :2] / q[..., 2:3]
    scale = torch.tensor(image_size, dtype=torch.float32)
    grid = torch.where(q[..., 2:3] > 0, source / scale * 2 - 1, torch.full_like(source, 3.0))
    return grid.reshape(-1, height, width, 2)


def peer_warp(kind: str, source: torch.Tensor, matrices: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    batch = matrices.shape[0]
    expanded = source.expand(batch, -1, -1, -1)
    if kind == "kornia-bilinear":
        from kornia.geometry.transform import warp_perspective

        m = torch.from_numpy(kornia_matrix(matrices)).float()
        return warp_perspective(expanded, m, (size[1], size[0]), align_corners=True, padding_mode="zeros")
    grid = torch_grid(torch.from_numpy(matrices).float(), size, (source.shape[-1], source.shape[-2]))
    return F.grid_sample(expanded, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def compute_warp(pyramid: Any, matrices: np.ndarray, size: tuple[int, int], filter: str) -> torch.Tensor:
    """The warp through the compute path: analytic uv and gradients per pixel, one sample() per matrix."""
    width, height = size
    out = torch.empty((matrices.shape[0], pyramid.channels, height, width))
    for b, matrix in enumerate(matrices):
        uv, grad, valid = warp_coordinates(matrix, size, (pyramid.width, pyramid.height))
        values = pyramid.sample(uv.reshape(-1, 2), grad=grad.reshape(-1, 2, 2), filter=filter, out="torch")
        values = values.reshape(height, width, -1) * torch.from_numpy(np.array(valid))[..., None]
        out[b] = values.permute(2, 0, 1)
    return out


def speed_case(method: str, pyramid: Any, source: torch.Tensor, matrices: np.ndarray, size: tuple[int, int]
               ) -> Callable[[], None]:
    """The timed callable of one method over one batch of matrices."""
    family, _, name = method.rpartition("-")
    if family == "glmip-fragment":
        return lambda: warp(pyramid, matrices, size, filter=name, border="zero")
    if family == "glmip-compute":
        return lambda: compute_warp(pyramid, matrices, size, name)
    return lambda: peer_warp(method, source, matrices, size)


def run_speed(ctx: glmip.Context, repeats: int, budget_s: float) -> list[dict[str, Any]]:
    results = []
    images: dict[int, tuple[Any, torch.Tensor]] = {}
    progress = tqdm(total=len(SPEED_CASES) * len(METHODS), desc="warps", unit="case")
    try:
        for size_in, size_out, batch in SPEED_CASES:
            if size_in not in images:
                image = random_image(size_in)
                source = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).contiguous()
                images[size_in] = (ctx.pyramid(image, method="box"), source)
            pyramid, source = images[size_in]
            matrices = batch_matrices(size_in, size_out, batch)
            for method in METHODS:
                case = speed_case(method, pyramid, source, matrices, (size_out, size_out))
                peer = None if method.startswith("glmip-") else measure_peer(case, repeats, budget_s)
                timing = measure(case, repeats, budget_s) if peer is None else peer.timing
                times, warmup = timing.times, timing.warmup
                median = statistics.median(times)
                results.append({"size_in": size_in, "size_out": size_out, "batch": batch, "method": method,
                                "repeats": len(times), "median_s": median, "min_s": min(times), "warmup_s": warmup,
                                "times_s": times, "warps_per_s": batch / median,
                                **({} if peer is None else peer.fields())})
                progress.update()
    finally:
        progress.close()
        for pyramid, _ in images.values():
            pyramid.close()
    peers = {(r["size_in"], r["batch"]): r["median_s"] for r in results if r["method"] == "grid_sample-bilinear"}
    for r in results:
        r["ratio_vs_grid_sample"] = peers[(r["size_in"], r["batch"])] / r["median_s"]
    return results


def quality_outputs(ctx: glmip.Context, image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]
                    ) -> dict[str, np.ndarray]:
    """Every method's (h, w, C) float64 output of one warp, border zero."""
    source = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    outputs = {}
    with ctx.pyramid(image, method="box") as pyramid:
        for f in ("anisotropic", "trilinear", "anisotropic_hw"):
            outputs[f"glmip-{f}"] = warp(pyramid, matrix, size, filter=f, border="zero")[0]
    for kind in ("kornia-bilinear", "grid_sample-bilinear"):
        outputs[kind] = peer_warp(kind, source, matrix[None], size)[0]
    return {k: v.permute(1, 2, 0).numpy().astype(np.float64) for k, v in outputs.items()}


def run_quality(ctx: glmip.Context) -> list[dict[str, Any]]:
    image = pattern(QUALITY_SIZE)
    rows = []
    for name, (matrix, size) in tqdm(quality_cases().items(), desc="quality", unit="case"):
        ideal = reference.warp_supersampled(image, matrix, size, samples=16 if name.startswith("tilt") else 8,
                                            border="zero")
        for method, output in quality_outputs(ctx, image, matrix, size).items():
            rows.append({"case": name, "method": method, "psnr_db": reference.psnr(output, ideal),
                         "aliasing": reference.aliasing_energy(output, ideal)})
    return rows


# -- the picture ----------------------------------------------------------------------------
def figure(ctx: glmip.Context, path: Path) -> Path:
    """The 80° tilt of the 1024² test pattern (zoomed 3x into the plane), labelled panels:
    grid_sample | kornia over glmip anisotropic | reference."""
    from PIL import Image, ImageDraw

    from glmip.pictures import save_png

    image, size = pattern(1024), (384, 256)
    matrix = tilt_homography((1024, 1024), size, 80, zoom=3.0)  # the plane's middle fills the view
    outputs = quality_outputs(ctx, image, matrix, size)
    ideal = reference.warp_supersampled(image, matrix, size, samples=16, border="zero")
    panels = [("torch grid_sample (bilinear)", outputs["grid_sample-bilinear"]),
              ("kornia warp_perspective", outputs["kornia-bilinear"]),
              ("glmip anisotropic (fragment)", outputs["glmip-anisotropic"]),
              ("reference (16x16 supersampled)", ideal)]
    tiles = []
    for label, values in panels:
        tile = Image.fromarray(np.clip(np.round(values * 255), 0, 255).astype(np.uint8))
        canvas = Image.new("RGB", (size[0], size[1] + 22), (24, 24, 24))
        canvas.paste(tile, (0, 22))
        ImageDraw.Draw(canvas).text((6, 5), label, fill=(235, 235, 235))
        tiles.append(np.asarray(canvas))
    top, bottom = np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)
    return save_png(np.concatenate([top, bottom], axis=0), path)


# -- report -------------------------------------------------------------------------------
def speed_table(results: list[dict[str, Any]]) -> str:
    columns = [(s_in, s_out, b) for s_in, s_out, b in SPEED_CASES]
    cell = {(r["size_in"], r["batch"], r["method"]): r for r in results}
    lines = ["| method | " + " | ".join(f"{i}² → {o}², batch {b}" for i, o, b in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for method in METHODS:
        row = []
        for s_in, _, b in columns:
            r = cell[(s_in, b, method)]
            row.append(f"{r['warps_per_s']:.2f}/s ({r['ratio_vs_grid_sample']:.2f}×)")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def quality_table(rows: list[dict[str, Any]]) -> str:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["case"], r["method"]): r for r in rows}
    lines = ["| case | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for case in cases:
        row = [f"{cell[(case, m)]['psnr_db']:.1f} ({cell[(case, m)]['aliasing'] * 1e3:.3g})" for m in methods]
        lines.append(f"| {case} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=20.0,
                        help="at most this many seconds of timed runs per case (repeats are reduced to fit)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/warp-<renderer>.json)")
    parser.add_argument("--figure", type=Path, default=None, help="also write the README comparison picture here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be positive")
    with glmip.Context() as ctx:
        quality = run_quality(ctx)
        speed = run_speed(ctx, args.repeats, args.budget_s)
        if args.figure:
            print(f"wrote {figure(ctx, args.figure)}")
        device = ctx.gl.info["GL_RENDERER"]
    report = {
        "benchmark": "warp",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch_device": torch_device_label(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "repeats": args.repeats,
        "quality": quality,
        "results": speed,
    }
    out = write_report(report, "warp", args.out)
    print(f"\ndevice: {device}   torch: {report['torch_device']}")
    print("PSNR dB against the supersampled reference (aliasing energy x 1e3):")
    print(quality_table(quality))
    print("\nwarps per second (× grid_sample):")
    print(speed_table(speed))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
