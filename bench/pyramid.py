"""Benchmark: time to build a full mip pyramid of a random RGBA8 square image.

What is measured, per image size (default 1024², 2048², 4096²) and method:

* ``glmip-hardware`` / ``glmip-box`` / ``glmip-lanczos``: ``ctx.pyramid(image, method=...)``
  followed by ``ctx.gl.finish()``, i.e. upload of the uint8 image + building every level down
  to 1x1 + waiting for the GL device. The pyramid is closed outside the timed region.
* ``torch-avg_pool2d-<dev>``: numpy uint8 HxWx4 -> float32 NCHW tensor on ``<dev>`` (the uint8
  image is moved to the device first, then converted there), then ``F.avg_pool2d`` by 2 until
  1x1 (kernel ``(min(2, h), min(2, w))`` so odd and 1-pixel sides work). Conversion is timed.
* ``kornia-build_pyramid-<dev>``: the same conversion, then
  ``kornia.geometry.transform.build_pyramid(x, max_level=<number of levels>)`` (5x5 Gaussian
  blur + bilinear downsample per level). kornia's default ``border_type="reflect"`` cannot pad
  the 2x2 level (reflect padding 2 needs a side > 2), so the full chain is built with
  ``border_type="replicate"``; the cost difference is negligible.

``<dev>`` is ``cpu``, plus ``cuda`` when ``torch.cuda.is_available()`` (timed with
``torch.cuda.synchronize()``). Every case gets one untimed warm-up run first (shader compilation,
allocator warm-up), then ``--repeats`` timed runs (fewer when one run is so slow that the repeats
would exceed ``--budget-s``; the count actually used is stored per result). Reported: median and
minimum wall time, megapixels of level 0 per second, and ``ratio_vs_avg_pool2d`` =
median(torch avg_pool2d on the same device family) / median(this method), so > 1 means faster than
avg_pool2d. glmip is compared with CUDA torch when GL runs on a GPU and CUDA is available, and with
CPU torch otherwise (software renderers such as llvmpipe run on the CPU).

Memory-bandwidth bound, where a peak bandwidth is known (``--peak-gbs``, else the nominal datasheet
figure of the CUDA device from ``PEAK_GBS``, e.g. H100 SXM 3350, H200 4800 GB/s; none for llvmpipe):
the least traffic a mip chain of the RGBA8 image needs, every level but the last read once and every
level but level 0 written once (~5/3 of level 0's bytes), over that peak. Each result gets
``bound_fraction`` = bound / median (1 = at the bound). The timed runs also upload level 0 from host
memory, which the bound leaves out, so small fractions at large sizes are expected; the figure is
nominal, not measured.

Usage::

    python -m bench.pyramid [--sizes 1024 2048 4096 8192] [--repeats 5] [--peak-gbs GB/S] [--plot PNG]
                            [--out bench/results/pyramid-<device>.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import glmip
from bench.harness import (
    Case,
    Seconds,
    Timing,
    environment,
    figure,
    gl_family,
    markdown_table,
    measure,
    measure_peer,
    plot_if_possible,
    save_figure,
    torch_device_label,
    version_of,
    with_ratio,
    write_report,
)

GLMIP_METHODS = ("hardware", "box", "lanczos")
MAX_SIZE = 8192
# Nominal peak memory bandwidth in GB/s (NVIDIA datasheets), by a substring of the device name; the
# first match wins, so the more specific names come first.
PEAK_GBS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
            ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0), ("L40S", 864.0),
            ("L4", 300.0), ("RTX 4090", 1008.0))
KORNIA_BORDER = "replicate"


# -- inputs -------------------------------------------------------------------------------
def random_image(size: int, seed: int = 0) -> np.ndarray:
    """A random RGBA8 ``size x size x 4`` image."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 4), dtype=np.uint8)


def level_count(size: int) -> int:
    """Levels of a full mip chain of a ``size``² image, level 0 and 1x1 included."""
    return int(math.floor(math.log2(size))) + 1


# -- torch peers --------------------------------------------------------------------------
def to_nchw(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 HxWxC numpy -> contiguous float32 1xCxHxW tensor on ``device``."""
    x = torch.from_numpy(image).to(device)
    return x.permute(2, 0, 1).unsqueeze(0).float().contiguous()


def avg_pool_pyramid(x: torch.Tensor) -> list[torch.Tensor]:
    """Halve with ``avg_pool2d`` until 1x1; a side of 1 is pooled with kernel 1."""
    levels = [x]
    while x.shape[-2] > 1 or x.shape[-1] > 1:
        kernel = (min(2, x.shape[-2]), min(2, x.shape[-1]))
        x = F.avg_pool2d(x, kernel, stride=kernel, ceil_mode=False)
        levels.append(x)
    return levels


HAS_KORNIA = importlib.util.find_spec("kornia") is not None  # the lent GPU machine's image has no kornia


def kornia_pyramid(x: torch.Tensor) -> list[torch.Tensor]:
    """kornia's Gaussian pyramid with as many levels as the full mip chain."""
    from kornia.geometry.transform import build_pyramid

    return build_pyramid(x, level_count(max(x.shape[-2:])), border_type=KORNIA_BORDER)


def nominal_peak_gbs(name: str) -> float | None:
    """The nominal peak memory bandwidth of a device named `name`, None where `PEAK_GBS` does not know it."""
    for key, gbs in PEAK_GBS:
        if key.lower() in name.lower():
            return gbs
    return None


def chain_traffic_bytes(size: int, bytes_per_texel: int = 4) -> int:
    """Least bytes read + written to build the mip chain of a size² image from level 0: every level but
    the last read once, every level but level 0 written once."""
    levels = [max(1, size >> i) ** 2 * bytes_per_texel for i in range(level_count(size))]
    return sum(levels[:-1]) + sum(levels[1:])


def add_bandwidth_bound(results: list[dict[str, Any]], peak_gbs: float | None) -> None:
    """`bound_s` (traffic / peak) and `bound_fraction` (bound_s / median) on every result; None without a peak."""
    for r in results:
        r["traffic_bytes"] = chain_traffic_bytes(r["size"])
        r["bound_s"] = r["traffic_bytes"] / (peak_gbs * 1e9) if peak_gbs else None
        r["bound_fraction"] = r["bound_s"] / r["median_s"] if peak_gbs else None


def torch_case(image: np.ndarray, device: torch.device,
               build: Callable[[torch.Tensor], list[torch.Tensor]]) -> Case:
    """A timed callable: convert ``image`` on ``device`` and build the pyramid (`measure` syncs the device)."""
    def run() -> None:
        levels = build(to_nchw(image, device))
        assert levels[-1].shape[-2:] == (1, 1), levels[-1].shape

    return run


# -- glmip --------------------------------------------------------------------------------
def glmip_case(ctx: glmip.Context, image: np.ndarray, method: str) -> Case:
    """A timed callable: upload + build the chain + glFinish; the pyramid is released untimed."""
    def run() -> Seconds:
        start = time.perf_counter()
        pyramid = ctx.pyramid(image, method=method)
        ctx.gl.finish()
        elapsed = Seconds(time.perf_counter() - start)
        pyramid.close()
        return elapsed

    return run


# -- results ------------------------------------------------------------------------------
def summarize(size: int, method: str, family: str, timing: Timing) -> dict[str, Any]:
    return {
        "size": size,
        "method": method,
        "family": family,
        "repeats": len(timing.times),
        "median_s": timing.median,
        "min_s": timing.min,
        "warmup_s": timing.warmup,
        "times_s": timing.times,
        "mpix_per_s": size * size / 1e6 / timing.median,
    }


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``ratio_vs_avg_pool2d`` = median of avg_pool2d (same size, same family) / this median."""
    peers = {(r["size"], r["family"]): r["median_s"] for r in results if r["method"].startswith("torch-avg_pool2d")}
    for r in results:
        peer = peers.get((r["size"], r["family"]))
        r["ratio_vs_avg_pool2d"] = peer / r["median_s"] if peer else None


# -- devices ------------------------------------------------------------------------------
def torch_devices() -> list[torch.device]:
    """The CPU, and CUDA where torch has it."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


# -- running ------------------------------------------------------------------------------
def cases(ctx: glmip.Context, image: np.ndarray, family: str) -> list[tuple[str, str, Case]]:
    """(method name, device family, timed callable) for every method; avg_pool2d first."""
    out: list[tuple[str, str, Case]] = []
    for device in torch_devices():
        out.append((f"torch-avg_pool2d-{device.type}", device.type, torch_case(image, device, avg_pool_pyramid)))
        if HAS_KORNIA:  # a peer that is not installed is left out (the report's versions say so), not fatal
            out.append((f"kornia-build_pyramid-{device.type}", device.type, torch_case(image, device, kornia_pyramid)))
    out += [(f"glmip-{m}", family, glmip_case(ctx, image, m)) for m in GLMIP_METHODS]
    return out


def run(sizes: list[int], repeats: int, budget_s: float, peak_gbs: float | None = None) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with glmip.Context() as ctx:
        renderer = str(ctx.info()["renderer"])
        family = gl_family(renderer)
        n_methods = (1 + HAS_KORNIA) * len(torch_devices()) + len(GLMIP_METHODS)
        with tqdm(total=len(sizes) * n_methods, unit="case") as bar:
            for size in sizes:
                image = random_image(size)
                for method, fam, case in cases(ctx, image, family):
                    bar.set_description(f"{size} {method}")
                    device = "cuda" if method.endswith("-cuda") else None
                    if method.startswith("glmip-"):
                        results.append(summarize(size, method, fam, measure(case, repeats, budget_s, device)))
                    else:
                        peer = measure_peer(case, repeats, budget_s, device)
                        results.append({**summarize(size, method, fam, peer.timing), **peer.fields()})
                    bar.update()
    add_ratios(results)
    peak_source = "--peak-gbs" if peak_gbs else None
    if peak_gbs is None and torch.cuda.is_available() and family == "cuda":
        peak_gbs = nominal_peak_gbs(torch.cuda.get_device_name(0))
        peak_source = f"nominal datasheet figure for {torch.cuda.get_device_name(0)}" if peak_gbs else None
    add_bandwidth_bound(results, peak_gbs)
    reduced = sorted({(r["size"], r["method"]) for r in results if r["repeats"] < repeats})
    return {
        "device": renderer,
        "torch_device": torch_device_label(),
        "glmip_compared_with": family,
        **environment(kornia=version_of("kornia")),
        "repeats": repeats,
        "budget_s_per_case": budget_s,
        "reduced_repeats": [f"{s} {m}" for s, m in reduced],
        "peak_gbs": peak_gbs,
        "peak_gbs_source": peak_source,
        "notes": [
            "times are wall clock of convert/upload + full chain to 1x1 + device sync; warm-up run excluded",
            "torch/kornia CPU peers are timed at every torch.set_num_threads setting in median_s_by_threads; "
            "the fastest is kept (torch_threads)",
            "ratio_vs_avg_pool2d = median(torch avg_pool2d, same size, same device family) / median(this)",
            f"kornia build_pyramid uses border_type={KORNIA_BORDER!r}: the default 'reflect' fails at the 2x2 level",
            "bound_s = (bytes read + written for the RGBA8 mip chain) / peak_gbs (nominal); bound_fraction = "
            "bound_s / median_s; the timed runs also include the host-to-device upload of level 0",
        ],
        "results": results,
    }


def format_cell(result: dict[str, Any] | None) -> str:
    return "–" if result is None else with_ratio(f"{result['median_s'] * 1e3:.1f}", result["ratio_vs_avg_pool2d"])


def table_by_size(report: dict[str, Any], column: str = "median ms (× avg_pool2d)",
                   cell_text: Callable[[dict[str, Any] | None], str] = format_cell) -> str:
    """Rows: method; columns: one per size, each cell `cell_text(result)` under "<size>² <column>"."""
    sizes = sorted({r["size"] for r in report["results"]})
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    cell = {(r["size"], r["method"]): r for r in report["results"]}
    return markdown_table(["method"] + [f"{s}² {column}" for s in sizes],
                          [[method] + [cell_text(cell.get((s, method))) for s in sizes] for method in methods])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="at most this many seconds of timed runs per case (repeats are reduced to fit)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/pyramid-<renderer>.json)")
    parser.add_argument("--peak-gbs", type=float, default=None,
                        help="peak memory bandwidth in GB/s for the bound (default: nominal figure of the CUDA "
                             "device when GL runs on it, from PEAK_GBS)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw ms per size and method to this PNG")
    return parser.parse_args(argv)


def plot(report: dict[str, Any], path: Path) -> Path:
    """ms against image size per method (log-log), the bandwidth bound dashed where known."""
    fig, ax = figure(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in report["results"]):
        rows = sorted((r for r in report["results"] if r["method"] == method), key=lambda r: r["size"])
        ax.plot([r["size"] for r in rows], [r["median_s"] * 1e3 for r in rows], marker="o", label=method)
    bound = sorted({(r["size"], r["bound_s"]) for r in report["results"] if r["bound_s"]})
    if bound:
        ax.plot([b[0] for b in bound], [b[1] * 1e3 for b in bound], "k--",
                label=f"bandwidth bound ({report['peak_gbs']:g} GB/s, nominal)")
    ax.set(xscale="log", yscale="log", xlabel="image side (px), RGBA8", ylabel="median ms",
           title=f"mip pyramid build on {report['device']}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeats < 1 or any(not 1 <= s <= MAX_SIZE for s in args.sizes):
        raise SystemExit(f"--repeats must be positive and --sizes within 1..{MAX_SIZE}")
    if args.peak_gbs is not None and args.peak_gbs <= 0:
        raise SystemExit("--peak-gbs must be positive")
    report = run(args.sizes, args.repeats, args.budget_s, args.peak_gbs)
    out = write_report(report, "pyramid", args.out)
    print(f"\ndevice: {report['device']}   torch: {report['torch_device']}   repeats: {report['repeats']}")
    if report["reduced_repeats"]:
        print("fewer repeats (budget): " + ", ".join(report["reduced_repeats"]))
    print(table_by_size(report))
    if report["peak_gbs"]:
        print(f"\nbandwidth bound at {report['peak_gbs']:g} GB/s ({report['peak_gbs_source']}):")
        print(table_by_size(report, "bound / median", lambda r: "–" if r is None else f"{r['bound_fraction']:.2f}"))
    print(f"\nwrote {out}")
    plot_if_possible(plot, report, args.plot)


if __name__ == "__main__":
    main()
