"""Benchmark: how many images one tokens dispatch should bind, per renderer.

    python -m bench.dispatch [--images 8] [--size 256] [--repeats 7]

`--images` random RGB images of `--size`², 256 tokens of 16² each (a uniform 16 x 16 grid), sampled by
`glmip.sampling.tokens_batch` with 1, 2, 4 and all images bound per dispatch (median wall time of
`--repeats` runs after a warm-up; pyramids and layouts built once, untimed). On llvmpipe the shader's
texture switch runs every case in every SIMD lane, so binding more images costs more; a GPU runs only the
taken case. Results: bench/results/dispatch-<device>.json (with the machine block).
"""

from __future__ import annotations

import argparse

import numpy as np

import glmip
from bench.harness import environment, markdown_table, measure, write_report
from glmip.sampling import BATCH_TEXTURES, images_per_dispatch_for, tokens_batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.images <= BATCH_TEXTURES or args.size < 16 or args.repeats < 1:
        raise SystemExit(f"--images must be 1..{BATCH_TEXTURES}, --size at least 16, --repeats positive")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    results = []
    with glmip.Context() as ctx:
        pyramids = [ctx.pyramid(image, method="box") for image in images]
        layout = glmip.TokenLayout.grid((args.size, args.size), 16, max(0, int(np.log2(args.size / 256))))
        layouts = [layout] * args.images
        for per_dispatch in sorted({1, 2, 4, args.images} & set(range(1, args.images + 1))):
            timing = measure(lambda n=per_dispatch: tokens_batch(pyramids, layouts, images_per_dispatch=n),
                             args.repeats)
            results.append({"images_per_dispatch": per_dispatch, "median_s": timing.median, "min_s": timing.min,
                            "times_s": timing.times, "warmup_s": timing.warmup})
            print(f"{per_dispatch} image(s) a dispatch: {timing.median * 1e3:.0f} ms", flush=True)
        default = images_per_dispatch_for(ctx)
        renderer = str(ctx.info()["renderer"])
        for pyramid in pyramids:
            pyramid.close()
    report = {"benchmark": "dispatch", "device": renderer, "environment": environment(), "images": args.images,
              "size": args.size, "tokens_per_image": len(layout), "patch": 16, "repeats": args.repeats,
              "default_images_per_dispatch": default, "results": results}
    print(markdown_table(["images a dispatch", "median ms"],
                         [[str(r["images_per_dispatch"]), f"{r['median_s'] * 1e3:.0f}"] for r in results]))
    print(f"wrote {write_report(report, 'dispatch', args.out)}")


if __name__ == "__main__":
    main()
