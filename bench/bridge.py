"""Bandwidth of the torch bridge's read-back: a GL buffer into a tensor's memory, against memcpy.

For each size (default 4, 16, 64, 256 MiB) a GL buffer is filled once, then timed
(median of --repeats): `glmip.bridge.buffer_to_tensor` (glGetBufferSubData straight into a new
tensor's memory, allocation and first-touch page faults included), the same read into an
existing tensor (`buffer.read_into(writable_view(t))`), and, as the yardstick, `dst.copy_(src)` between two
host tensors of the same size (a plain memcpy). Results as JSON under bench/results/.

Usage: python bench/bridge.py [--sizes-mib 4 16 64 256] [--repeats 7] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import glmip  # noqa: E402
from bench.pyramid import write_report  # noqa: E402
from glmip.bridge import buffer_to_tensor, writable_view  # noqa: E402


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-touch page faults, driver paths
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = []
    with glmip.Context() as ctx:
        renderer = ctx.info()["renderer"]
        for mib in tqdm(args.sizes_mib, desc="sizes", unit="size"):
            count = mib * 2**20 // 4
            buffer = ctx.gl.buffer(np.random.default_rng(0).random(count, dtype=np.float32))
            src, dst = torch.rand(count), torch.empty(count)
            try:
                readback = median_seconds(lambda b=buffer, n=count: buffer_to_tensor(b, (n,)), args.repeats)
                view = writable_view(dst)
                into = median_seconds(lambda b=buffer, v=view: b.read_into(v), args.repeats)
            finally:
                buffer.release()
            memcpy = median_seconds(lambda d=dst, s=src: d.copy_(s), args.repeats)
            gib = mib / 1024
            results.append({"mib": mib, "readback_s": readback, "readback_into_existing_s": into,
                            "memcpy_s": memcpy, "readback_gib_per_s": gib / readback,
                            "readback_into_existing_gib_per_s": gib / into, "memcpy_gib_per_s": gib / memcpy,
                            "readback_vs_memcpy": memcpy / readback, "into_existing_vs_memcpy": memcpy / into})
    report = {"device": renderer, "date": datetime.date.today().isoformat(), "repeats": args.repeats,
              "path": "readback (host; pinned when the target is CUDA)", "results": results}
    print("| MiB | new tensor GiB/s | existing tensor GiB/s | memcpy GiB/s | existing / memcpy |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mib']} | {r['readback_gib_per_s']:.2f} | {r['readback_into_existing_gib_per_s']:.2f} | "
              f"{r['memcpy_gib_per_s']:.2f} | {r['into_existing_vs_memcpy']:.2f} |")
    out = write_report(report, "bridge", args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
