"""Drift of each pyramid method: every level against the exact area mean of level 0, in LSBs.

For an 8-bit image, level i of a perfect box pyramid is the mean of the level-0 texels each
texel covers (`glmip.reference.area_mean_level`), rounded once. A method that builds each
level from the rounded level above (glGenerateMipmap) accumulates rounding error level by
level; glmip's "box" computes in float and rounds once. "lanczos" is a different filter, so
its distance from the box mean is shown for scale, not as drift.

Usage: python -m bench.drift [--size 512] [--out bench/results/drift-<device>.json]
"""

from __future__ import annotations

import argparse
import datetime

import numpy as np

import glmip
from bench.harness import write_report
from glmip import reference
from glmip.image import as_image_array


def measure(ctx: glmip.Context, image: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Per method, the max and mean |level - exact area mean| of every level, in LSBs."""
    exact = [reference.area_mean_level(image, i) for i in range(len(glmip.level_sizes(image.shape[1], image.shape[0])))]
    out: dict[str, dict[str, list[float]]] = {}
    for method in ("hardware", "box", "lanczos"):
        with ctx.pyramid(image, method=method) as pyramid:
            diffs = [np.abs(pyramid.level(i).astype(np.int32) - exact[i].astype(np.int32))
                     for i in range(pyramid.levels)]
        out[method] = {"max_lsb": [float(d.max()) for d in diffs],
                       "mean_lsb": [round(float(d.mean()), 3) for d in diffs]}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = {
        f"random {args.size}x{args.size} RGBA8": rng.integers(0, 256, (args.size, args.size, 4), dtype=np.uint8),
        "coffee.png 600x400 RGB8": as_image_array(glmip.DEFAULT_IMAGE),
    }
    with glmip.Context() as ctx:
        renderer = ctx.info()["renderer"]
        report = {"device": renderer, "date": datetime.date.today().isoformat(),
                  "images": {name: measure(ctx, image) for name, image in images.items()}}
    for name, methods in report["images"].items():
        print(f"\n{name}: max |level - exact area mean| in LSB, levels 0..")
        for method, figures in methods.items():
            print(f"  {method:<9} " + " ".join(f"{v:3.0f}" for v in figures["max_lsb"]))
    out = write_report(report, "drift", args.out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
