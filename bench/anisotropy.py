"""Benchmark (quality, not speed): how each filter follows a long footprint, as the sample std on stripes.

    python -m bench.anisotropy [--points 2000]

A 256² image of vertical black/white stripes 4 texels wide, seen through footprints 1 texel across the
stripes and r = 1, 2, 4, 8, 16 texels along them (d(u)/dx = 1 texel, d(v)/dy = r texels), at random points.
A filter that follows the footprint keeps the stripes (std near bilinear's at level 0); one that takes its
level from the long axis blurs them to grey (std 0). Filters: trilinear (textureGrad), glmip's shader
`anisotropic` (footprint assembly) and the texture unit's own `anisotropic_hw` (vendor-defined).
Results: bench/results/anisotropy-<device>.json (with the machine block).
"""

from __future__ import annotations

import argparse

import numpy as np

import glmip
from bench.harness import environment, markdown_table, write_report

SIZE, PERIOD = 256, 4
RATIOS = (1, 2, 4, 8, 16)
FILTERS = ("trilinear", "anisotropic", "anisotropic_hw")


def stripes(size: int = SIZE, period: int = PERIOD) -> np.ndarray:
    """Vertical black/white stripes `period` texels wide, (size, size, 1) uint8."""
    row = ((np.arange(size) // (period // 2)) % 2 * 255).astype(np.uint8)
    return np.repeat(row[None, :, None], size, axis=0)


def footprints(n: int, ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points in the image's middle with a footprint 1 texel across the stripes and `ratio` along them."""
    uv = rng.uniform(0.2, 0.8, (n, 2)).astype(np.float32)
    grad = np.zeros((n, 2, 2), np.float32)
    grad[:, 0, 0] = 1.0 / SIZE
    grad[:, 1, 1] = ratio / SIZE
    return uv, grad


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.points < 2:
        raise SystemExit("--points must be at least 2")
    rng = np.random.default_rng(2)
    with glmip.Context() as ctx, ctx.pyramid(stripes(), method="box") as pyramid:
        uv, _ = footprints(args.points, 1, rng)
        bilinear = float(pyramid.sample(uv, filter="bilinear").std())
        stds: dict[str, dict[str, float]] = {name: {} for name in FILTERS}
        for ratio in RATIOS:
            uv, grad = footprints(args.points, ratio, rng)
            for name in FILTERS:
                stds[name][str(ratio)] = float(pyramid.sample(uv, grad=grad, filter=name, anisotropy=16).std())
        renderer = str(ctx.info()["renderer"])
    report = {"benchmark": "anisotropy", "device": renderer, "environment": environment(), "points": args.points,
              "image": f"{SIZE}² stripes {PERIOD} texels wide", "bilinear_level0_std": bilinear, "std": stds}
    print(f"bilinear at level 0: {bilinear:.3f}")
    print(markdown_table(["footprint ratio r", *map(str, RATIOS)],
                         [[name, *(f"{stds[name][str(r)]:.3f}" for r in RATIOS)] for name in FILTERS]))
    print(f"wrote {write_report(report, 'anisotropy', args.out)}")


if __name__ == "__main__":
    main()
