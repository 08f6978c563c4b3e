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

Usage::

    python bench/pyramid.py [--sizes 1024 2048 4096] [--repeats 5] [--out bench/results/pyramid-<device>.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import glmip  # noqa: E402

GLMIP_METHODS = ("hardware", "box", "lanczos")
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "lavapipe")
KORNIA_BORDER = "replicate"

Timed = Callable[[], "float | None"]  # a float return is the case timing itself


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


def kornia_pyramid(x: torch.Tensor) -> list[torch.Tensor]:
    """kornia's Gaussian pyramid with as many levels as the full mip chain."""
    from kornia.geometry.transform import build_pyramid

    return build_pyramid(x, level_count(max(x.shape[-2:])), border_type=KORNIA_BORDER)


def torch_case(image: np.ndarray, device: torch.device,
               build: Callable[[torch.Tensor], list[torch.Tensor]]) -> Timed:
    """A timed callable: convert ``image`` on ``device`` and build the pyramid, synchronously."""
    def run() -> None:
        levels = build(to_nchw(image, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert levels[-1].shape[-2:] == (1, 1), levels[-1].shape

    return run


# -- glmip --------------------------------------------------------------------------------
def glmip_case(ctx: glmip.Context, image: np.ndarray, method: str) -> Timed:
    """A timed callable: upload + build the chain + glFinish; the pyramid is released untimed."""
    def run() -> float:
        start = time.perf_counter()
        pyramid = ctx.pyramid(image, method=method)
        ctx.gl.finish()
        elapsed = time.perf_counter() - start
        pyramid.close()
        return elapsed

    return run


# -- timing -------------------------------------------------------------------------------
def time_once(case: Timed) -> float:
    """Seconds of one run; a case returning a float times itself (to exclude its cleanup)."""
    start = time.perf_counter()
    result = case()
    elapsed = time.perf_counter() - start
    return float(result) if isinstance(result, float) else elapsed


def measure(case: Timed, repeats: int, budget_s: float) -> tuple[list[float], float]:
    """Warm up once, then time up to ``repeats`` runs, fewer if they would exceed ``budget_s``."""
    warmup = time_once(case)
    n = max(1, min(repeats, int(budget_s // max(warmup, 1e-9))))
    return [time_once(case) for _ in range(n)], warmup


def summarize(size: int, method: str, family: str, times: list[float], warmup: float) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "size": size,
        "method": method,
        "family": family,
        "repeats": len(times),
        "median_s": median,
        "min_s": min(times),
        "warmup_s": warmup,
        "times_s": times,
        "mpix_per_s": size * size / 1e6 / median,
    }


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``ratio_vs_avg_pool2d`` = median of avg_pool2d (same size, same family) / this median."""
    peers = {(r["size"], r["family"]): r["median_s"] for r in results if r["method"].startswith("torch-avg_pool2d")}
    for r in results:
        peer = peers.get((r["size"], r["family"]))
        r["ratio_vs_avg_pool2d"] = peer / r["median_s"] if peer else None


# -- devices ------------------------------------------------------------------------------
def torch_devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def torch_device_label() -> str:
    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


def gl_family(renderer: str) -> str:
    """Which torch device glmip is compared with: "cuda" for a real GPU when CUDA exists, else "cpu"."""
    software = any(name in renderer.lower() for name in SOFTWARE_RENDERERS)
    return "cuda" if torch.cuda.is_available() and not software else "cpu"


def device_slug(renderer: str) -> str:
    """A file-name-friendly short name of the renderer, e.g. "llvmpipe" or "nvidia-h200"."""
    words = re.sub(r"\(.*?\)|/.*", "", renderer).strip().lower()
    return re.sub(r"[^a-z0-9]+", "-", words).strip("-") or platform.node()


def write_report(report: dict[str, Any], name: str, out: str | Path | None = None) -> Path:
    """Write `report` as JSON to `out`, default bench/results/<name>-<device slug>.json; returns the path."""
    default = Path(__file__).resolve().parent / "results" / f"{name}-{device_slug(report['device'])}.json"
    path = Path(out) if out else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# -- running ------------------------------------------------------------------------------
def cases(ctx: glmip.Context, image: np.ndarray, family: str) -> list[tuple[str, str, Timed]]:
    """(method name, device family, timed callable) for every method; avg_pool2d first."""
    out: list[tuple[str, str, Timed]] = []
    for device in torch_devices():
        out.append((f"torch-avg_pool2d-{device.type}", device.type, torch_case(image, device, avg_pool_pyramid)))
        out.append((f"kornia-build_pyramid-{device.type}", device.type, torch_case(image, device, kornia_pyramid)))
    out += [(f"glmip-{m}", family, glmip_case(ctx, image, m)) for m in GLMIP_METHODS]
    return out


def run(sizes: list[int], repeats: int, budget_s: float) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with glmip.Context() as ctx:
        renderer = str(ctx.info()["renderer"])
        family = gl_family(renderer)
        n_methods = 2 * len(torch_devices()) + len(GLMIP_METHODS)
        with tqdm(total=len(sizes) * n_methods, unit="case") as bar:
            for size in sizes:
                image = random_image(size)
                for method, fam, case in cases(ctx, image, family):
                    bar.set_description(f"{size} {method}")
                    times, warmup = measure(case, repeats, budget_s)
                    results.append(summarize(size, method, fam, times, warmup))
                    bar.update()
    add_ratios(results)
    reduced = sorted({(r["size"], r["method"]) for r in results if r["repeats"] < repeats})
    return {
        "device": renderer,
        "torch_device": torch_device_label(),
        "glmip_compared_with": family,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "kornia": _version("kornia"), "glmip": glmip.__version__},
        "repeats": repeats,
        "budget_s_per_case": budget_s,
        "reduced_repeats": [f"{s} {m}" for s, m in reduced],
        "notes": [
            "times are wall clock of convert/upload + full chain to 1x1 + device sync; warm-up run excluded",
            "ratio_vs_avg_pool2d = median(torch avg_pool2d, same size, same device family) / median(this)",
            f"kornia build_pyramid uses border_type={KORNIA_BORDER!r}: the default 'reflect' fails at the 2x2 level",
        ],
        "results": results,
    }


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - optional information only
        return None


def format_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "–"
    text = f"{result['median_s'] * 1e3:.1f}"
    ratio = result["ratio_vs_avg_pool2d"]
    return f"{text} ({ratio:.2f}×)" if ratio is not None else text


def markdown_table(report: dict[str, Any], column: str = "median ms (× avg_pool2d)",
                   cell_text: Callable[[dict[str, Any] | None], str] = format_cell) -> str:
    """Rows: method; columns: one per size, each cell `cell_text(result)` under "<size>² <column>"."""
    sizes = sorted({r["size"] for r in report["results"]})
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    cell = {(r["size"], r["method"]): r for r in report["results"]}
    lines = [
        "| method | " + " | ".join(f"{s}² {column}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(cell_text(cell.get((s, method))) for s in sizes) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="at most this many seconds of timed runs per case (repeats are reduced to fit)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/pyramid-<renderer>.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeats < 1 or any(s < 1 for s in args.sizes):
        raise SystemExit("--repeats and --sizes must be positive")
    report = run(args.sizes, args.repeats, args.budget_s)
    out = write_report(report, "pyramid", args.out)
    print(f"\ndevice: {report['device']}   torch: {report['torch_device']}   repeats: {report['repeats']}")
    if report["reduced_repeats"]:
        print("fewer repeats (budget): " + ", ".join(report["reduced_repeats"]))
    print(markdown_table(report))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
