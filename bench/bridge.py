"""Bandwidth of the torch bridge's read-back: a GL buffer into a tensor's memory, against memcpy.

For each size (default 4, 16, 64, 256 MiB) a GL buffer is filled once, then timed
(median of --repeats): `glmip.bridge.buffer_to_tensor` (glGetBufferSubData straight into a new
tensor's memory, allocation and first-touch page faults included), the same read into an
existing tensor (`buffer.read_into(writable_view(t))`), and, as the yardstick, `dst.copy_(src)` between two
host tensors of the same size (a plain memcpy). Results as JSON under bench/results/.

Into CUDA, where torch has CUDA (same sizes, `torch.cuda.synchronize()` inside every timing):
pinned read-back into a new CUDA tensor and into an existing one (`prefer="readback"`); where
the CUDA-GL interop path is available (NVIDIA GL on the same GPU, cuda-python), interop into a
new tensor registering the buffer per call (`buffer_to_tensor(prefer="interop")`) and into an
existing tensor through a buffer registered once (`GLBufferResource.copy_to`), with a device
`copy_` between two CUDA tensors as the yardstick; `interop_vs_readback` = pinned read-back into
an existing tensor / interop registered once, same run. Without interop those rows are left out
and the report says why. The interop rows ran once, on an H100
(bench/results/bridge-h100.json).

Usage: python -m bench.bridge [--sizes-mib 4 16 64 256] [--repeats 7] [--plot PNG] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import glmip
from bench.harness import figure, markdown_table, measure, plot_if_possible, save_figure, write_report
from glmip.bridge import BridgePath, buffer_to_tensor, writable_view


def cuda_rows(ctx: glmip.Context, sizes_mib: list[int], repeats: int) -> tuple[list[dict], dict]:
    """GL buffer -> CUDA tensor, read-back against interop (where available); (rows, interop status)."""
    if not torch.cuda.is_available():
        return [], {"available": False, "why": "torch sees no CUDA device"}
    from glmip.gl.interop import GLBufferResource

    index = torch.cuda.current_device()
    available, why = ctx.interop_available(index)
    rows = []
    for mib in tqdm(sizes_mib, desc="cuda sizes", unit="size"):
        count = mib * 2**20 // 4
        buffer = ctx.gl.buffer(np.random.default_rng(0).random(count, dtype=np.float32))
        out, src = torch.empty(count, device="cuda"), torch.rand(count, device="cuda")
        gib = mib / 1024
        row = {"mib": mib}
        try:
            cases = {
                "pinned_readback_new": lambda b=buffer, n=count: buffer_to_tensor(b, (n,), device="cuda",
                                                                                 prefer="readback"),
                "pinned_readback_into_existing": lambda b=buffer, n=count, o=out: buffer_to_tensor(
                    b, (n,), out=o, prefer="readback"),
                "cuda_copy": lambda o=out, s=src: o.copy_(s),
            }
            resource = GLBufferResource(buffer, flags="read_only", device=index) if available else None
            if resource is not None:
                cases["interop_new"] = lambda b=buffer, n=count: buffer_to_tensor(b, (n,), device="cuda",
                                                                                 prefer="interop")
                cases["interop_registered_into_existing"] = lambda r=resource, o=out: r.copy_to(o)
            try:
                for name, case in cases.items():
                    row[f"{name}_s"] = measure(case, repeats, device="cuda").median  # synced: async copies count
                    row[f"{name}_gib_per_s"] = gib / row[f"{name}_s"]
                if available:
                    check = buffer_to_tensor(buffer, (count,), device="cuda", prefer="interop")
                    assert check.path is BridgePath.CUDA_GL
                    row["interop_equals_readback"] = bool(torch.equal(
                        check.tensor, buffer_to_tensor(buffer, (count,), device="cuda", prefer="readback").tensor))
                    row["interop_vs_readback"] = (row["pinned_readback_into_existing_s"]
                                                  / row["interop_registered_into_existing_s"])
            finally:
                if resource is not None:
                    resource.close()
        finally:
            buffer.release()
        rows.append(row)
    return rows, {"available": available, "why": why, "cuda_device": torch.cuda.get_device_name(index)}


def plot(report: dict, path: Path) -> Path:
    """GiB/s against MiB for every measured path."""
    fig, ax = figure(figsize=(7, 4.5))
    for rows in (report["results"], report["cuda_results"]):
        for key in (rows[0] if rows else {}):
            if key.endswith("_gib_per_s"):
                ax.plot([r["mib"] for r in rows], [r[key] for r in rows], marker="o", label=key.removesuffix(
                    "_gib_per_s"))
    ax.set(xscale="log", yscale="log", xlabel="MiB", ylabel="GiB/s", title=f"GL -> torch on {report['device']}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", type=Path, default=None, help="also draw GiB/s per size and path to this PNG")
    args = parser.parse_args(argv)
    results = []
    with glmip.Context() as ctx:
        renderer = ctx.info()["renderer"]
        for mib in tqdm(args.sizes_mib, desc="sizes", unit="size"):
            count = mib * 2**20 // 4
            buffer = ctx.gl.buffer(np.random.default_rng(0).random(count, dtype=np.float32))
            src, dst = torch.rand(count), torch.empty(count)
            try:
                readback = measure(lambda b=buffer, n=count: buffer_to_tensor(b, (n,)), args.repeats).median
                view = writable_view(dst)
                into = measure(lambda b=buffer, v=view: b.read_into(v), args.repeats).median
            finally:
                buffer.release()
            memcpy = measure(lambda d=dst, s=src: d.copy_(s), args.repeats).median
            gib = mib / 1024
            results.append({"mib": mib, "readback_s": readback, "readback_into_existing_s": into,
                            "memcpy_s": memcpy, "readback_gib_per_s": gib / readback,
                            "readback_into_existing_gib_per_s": gib / into, "memcpy_gib_per_s": gib / memcpy,
                            "readback_vs_memcpy": memcpy / readback, "into_existing_vs_memcpy": memcpy / into})
        cuda_results, interop_status = cuda_rows(ctx, args.sizes_mib, args.repeats)
    report = {"device": renderer, "date": datetime.date.today().isoformat(), "repeats": args.repeats,
              "path": "readback (host; pinned when the target is CUDA)", "results": results,
              "interop": interop_status, "cuda_results": cuda_results}
    print(markdown_table(["MiB", "new tensor GiB/s", "existing tensor GiB/s", "memcpy GiB/s", "existing / memcpy"],
                         [[str(r["mib"])] + [f"{r[k]:.2f}" for k in ("readback_gib_per_s",
                                                                  "readback_into_existing_gib_per_s",
                                                                  "memcpy_gib_per_s", "into_existing_vs_memcpy")]
                          for r in results], left=0))
    if cuda_results:
        keys = [k.removesuffix("_gib_per_s") for k in cuda_results[0] if k.endswith("_gib_per_s")]
        print("\nGL buffer -> CUDA tensor, GiB/s:")
        print(markdown_table(["MiB", *keys, "interop / readback"],
                             [[str(r["mib"])] + [f"{r[k + '_gib_per_s']:.2f}" for k in keys]
                              + [f"{r['interop_vs_readback']:.2f}" if "interop_vs_readback" in r else "–"]
                              for r in cuda_results], left=0))
    if not interop_status["available"]:
        print(f"\ninterop rows skipped: {interop_status['why']}")
    out = write_report(report, "bridge", args.out)
    print(f"wrote {out}")
    plot_if_possible(plot, report, args.plot)


if __name__ == "__main__":
    main()
