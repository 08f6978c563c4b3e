"""Benchmark: samples per second of point sampling a mip pyramid, glmip vs torch ``grid_sample``.

What is measured, per image size (default 1024², 4096², a random RGBA8 square image) over
``--points`` (default 1,000,000) random points, uv uniform in [0, 1]²:

* ``glmip-trilinear-lod``: ``p.sample(uv, lod, filter="trilinear")`` with per-point lod uniform
  in [0, levels - 1] (textureLod).
* ``glmip-trilinear-grad``: ``p.sample(uv, grad=grad, filter="trilinear")`` (textureGrad; the
  sampler's anisotropy is 1, so the level is log2 of the longer footprint axis).
* ``glmip-anisotropic``: ``p.sample(uv, grad=grad, filter="anisotropic", anisotropy=16)``,
  footprint assembly in the shader: N = min(ceil(Pmax / Pmin - 1e-3), 16) trilinear taps.
* ``glmip-anisotropic_hw``: the same gradients with ``filter="anisotropic_hw"`` (the texture
  unit's own anisotropic filter; vendor-defined, so it has no exact peer).

Every glmip call is timed whole, followed by ``ctx.gl.finish()``: numpy inputs -> GL buffers,
one compute dispatch, (N, C) float32 result read back into numpy. The pyramid
(``method="box"``) is built once per size, untimed.

The gradients give elongated footprints: minor axis uniform in [1, 4] level-0 texels, ratio
major / minor uniform in [1, 16], random orientation, and the major axis randomly d(uv)/dx or
d(uv)/dy. The mean tap count this implies for the anisotropic filter is stored (``mean_taps``).

The peer, ``grid_sample-*-<dev>``, runs on a torch pyramid: level 0 = the image / 255 as a
float32 1x4xHxW tensor, halved with ``F.avg_pool2d`` to 1x1, built once and untimed (on the CPU
the levels are stored channels-last, which makes ``grid_sample``'s gathers ~1.5-2x faster; the
tensors are still NCHW). Trilinear = bilinear ``F.grid_sample(align_corners=False,
padding_mode="border")`` (GL's texel centres and CLAMP_TO_EDGE) on levels floor(lod) and
floor(lod) + 1, blended by frac(lod), lod clamped to [0, last level]. Points are grouped by
their lower level (one stable sort on the uint8 level index, then two ``grid_sample`` calls per
level). Timed: numpy inputs -> device tensors, level from the gradients where needed, grouping,
sampling, blending, scatter back to the input order, and the (N, C) result as numpy (a device
sync on CUDA):

* ``grid_sample-trilinear-lod-<dev>``: the explicit lods above (peer of glmip-trilinear-lod).
* ``grid_sample-trilinear-grad-<dev>``: lod = log2(max(|grad_x * size|, |grad_y * size|)), as GL
  defines textureGrad's level (peer of glmip-trilinear-grad).
* ``grid_sample-anisotropic-<dev>``: the footprint assembly of glmip's shader, in float32:
  len_x = |grad_x * size|, len_y = |grad_y * size|, major = the longer gradient,
  N = min(ceil(Pmax / Pmin - 1e-3), 16), lod = log2(Pmax / N), N taps at
  uv + major * ((k + 0.5) / N - 0.5), each trilinear, averaged. Vectorised without padding: the
  points are grouped by level, their taps laid out with ``repeat_interleave`` (exactly sum(N)
  taps), sampled per level and summed back with ``index_add_`` (peer of both glmip anisotropic
  filters; for anisotropic_hw the ratio compares the cost of the same job, not equal results).

Before timing, the first ``--check-points`` (default 2000) points of each size are sampled by
glmip and by the peer, and the largest difference, in 8-bit LSBs (x 255), is stored in
``agreement`` (glmip keeps 8-bit levels and llvmpipe filters with limited sub-texel precision,
so ~1-2 LSB is expected). textureGrad's level is approximate on llvmpipe (within 1/16 of a level),
so for glmip-trilinear-grad ``outside_lod_band_max_lsb`` also says how far glmip lies outside the
range of the peer's results over lod +- 1/16.

Every case gets one untimed warm-up run (shader compilation, allocator warm-up), then
``--repeats`` timed runs, fewer when one run is so slow that the repeats would exceed
``--budget-s`` (the count used is stored per result). Reported: median and minimum wall time,
Msamples/s (= points / median; a sample is one output point whatever its tap count) and
``ratio_vs_grid_sample`` = median(the matching grid_sample peer) / median(this), so > 1 means
glmip is faster. The peer runs on CUDA when ``torch.cuda.is_available()``, else on the CPU.

Usage::

    python -m bench.sampling [--sizes 1024 4096] [--points 1000000] [--repeats 3]
                             [--out bench/results/sampling-<device>.json]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import glmip
from bench.harness import (
    Case,
    Timing,
    environment,
    markdown_table,
    measure,
    measure_peer,
    torch_device_label,
    with_ratio,
    write_report,
)
from bench.pyramid import avg_pool_pyramid, level_count, random_image, table_by_size, to_nchw

ANISOTROPY = 16
GRAD_LOD_BAND = 1 / 16  # textureGrad's level on llvmpipe lies within this of log2(Pmax) (tests/test_sampling.py)
MINOR_TEXELS = (1.0, 4.0)  # minor footprint axis, level-0 texels
RATIO = (1.0, 16.0)  # major / minor
# glmip case -> its grid_sample peer (the matching filter)
GLMIP_CASES = {
    "glmip-trilinear-lod": "grid_sample-trilinear-lod",
    "glmip-trilinear-grad": "grid_sample-trilinear-grad",
    "glmip-anisotropic": "grid_sample-anisotropic",
    "glmip-anisotropic_hw": "grid_sample-anisotropic",
}
PEER_CASES = ("grid_sample-trilinear-lod", "grid_sample-trilinear-grad", "grid_sample-anisotropic")


# -- inputs -------------------------------------------------------------------------------
def random_points(size: int, n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """uv (n, 2), lod (n,) uniform in [0, levels - 1] and elongated gradients grad (n, 2, 2)."""
    rng = np.random.default_rng(seed)
    uv = rng.random((n, 2), dtype=np.float32)
    lod = rng.uniform(0.0, level_count(size) - 1, n).astype(np.float32)
    minor = rng.uniform(*MINOR_TEXELS, n)
    ratio = rng.uniform(*RATIO, n)
    theta = rng.uniform(0.0, 2 * math.pi, n)
    along = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    across = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    major_axis = along * (minor * ratio)[:, None] / size  # uv units
    minor_axis = across * minor[:, None] / size
    major_is_x = rng.random(n) < 0.5
    grad = np.empty((n, 2, 2), np.float32)
    grad[:, 0] = np.where(major_is_x[:, None], major_axis, minor_axis)
    grad[:, 1] = np.where(major_is_x[:, None], minor_axis, major_axis)
    return {"uv": uv, "lod": lod, "grad": grad}


def tap_counts(grad: np.ndarray, size: int, max_anisotropy: float = ANISOTROPY) -> np.ndarray:
    """N = min(ceil(Pmax / Pmin - 1e-3), max_anisotropy) per point, in float32 as the shader."""
    scale = np.float32(size)
    len_x = np.linalg.norm(grad[:, 0] * scale, axis=1).astype(np.float32)
    len_y = np.linalg.norm(grad[:, 1] * scale, axis=1).astype(np.float32)
    p_max, p_min = np.maximum(len_x, len_y), np.minimum(len_x, len_y)
    return np.minimum(np.ceil(p_max / p_min - np.float32(1e-3)), max_anisotropy).clip(1).astype(np.int64)


def subset(points: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[:n]) for k, v in points.items()}


# -- torch peer ---------------------------------------------------------------------------
def peer_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_levels(image: np.ndarray, device: torch.device) -> list[torch.Tensor]:
    """The avg_pool2d pyramid of image / 255 (float32 1xCxHxW; channels-last storage on the CPU)."""
    levels = avg_pool_pyramid(to_nchw(image, device) / 255.0)
    if device.type == "cpu":
        levels = [level.contiguous(memory_format=torch.channels_last) for level in levels]
    return levels


def _bilinear(level: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """grid_sample of (1, C, h, w) `level` at (n, 2) grid coordinates in [-1, 1] -> (n, C)."""
    out = F.grid_sample(level, grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].t()


def peer_trilinear(levels: list[torch.Tensor], uv: torch.Tensor, lod: torch.Tensor,
                   major: torch.Tensor | None = None, taps: torch.Tensor | None = None) -> torch.Tensor:
    """(n, C) trilinear samples at (n, 2) uv and (n,) lod over float `levels`; with `major` (n, 2) and
    `taps` (n,), the average of taps[i] trilinear samples at uv + major * ((k + 0.5) / taps - 0.5).

    Points are sorted by their lower level so that each level is sampled by one grid_sample call
    (for both of the levels it blends); taps are laid out contiguously per point after the sort."""
    n, channels = uv.shape[0], levels[0].shape[1]
    last = len(levels) - 1
    lod = lod.clamp(0.0, float(last))
    lower = lod.floor().long().clamp_(max=max(last - 1, 0))
    frac = lod - lower
    order = torch.sort(lower.to(torch.uint8), stable=True)[1]  # a small-key sort: ~2.5x faster than argsort
    counts = torch.bincount(lower, minlength=len(levels))
    grid = uv[order] * 2.0 - 1.0
    frac = frac[order]
    if taps is not None:
        taps_sorted = taps[order]
        point_of_tap = torch.repeat_interleave(torch.arange(n, device=uv.device), taps_sorted)
        first_tap = torch.cumsum(taps_sorted, 0) - taps_sorted
        k = torch.arange(point_of_tap.shape[0], device=uv.device) - first_tap[point_of_tap]
        n_of_tap = taps_sorted[point_of_tap].to(uv.dtype)
        t = (k.to(uv.dtype) + 0.5) / n_of_tap - 0.5
        grid = grid[point_of_tap] + (2.0 * major[order])[point_of_tap] * t[:, None]
        frac = frac[point_of_tap]
        counts = torch.zeros_like(counts).index_add_(0, lower, taps)  # taps per lower level
    values = torch.empty((grid.shape[0], channels), dtype=uv.dtype, device=uv.device)
    start = 0
    for d, count in enumerate(counts.tolist()):
        if count == 0:
            continue
        end = start + count
        g = grid[start:end]
        if d < last:
            upper = _bilinear(levels[d + 1], g)
            torch.lerp(_bilinear(levels[d], g), upper, frac[start:end, None], out=values[start:end])
        else:
            values[start:end] = _bilinear(levels[d], g)
        start = end
    if taps is not None:
        summed = torch.zeros((n, channels), dtype=uv.dtype, device=uv.device).index_add_(0, point_of_tap, values)
        values = summed / taps_sorted[:, None].to(uv.dtype)
    out = torch.empty_like(values)
    out[order] = values
    return out


def grad_lengths(grad: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.tensor(size, dtype=grad.dtype, device=grad.device)
    return torch.linalg.vector_norm(grad[:, 0] * scale, dim=1), torch.linalg.vector_norm(grad[:, 1] * scale, dim=1)


def peer_sample(levels: list[torch.Tensor], kind: str, points: dict[str, np.ndarray],
                device: torch.device) -> np.ndarray:
    """The whole user-visible peer call: numpy in, numpy (n, C) out."""
    size = (levels[0].shape[-1], levels[0].shape[-2])  # (w, h)
    with torch.inference_mode():
        uv = torch.from_numpy(points["uv"]).to(device)
        if kind == "grid_sample-trilinear-lod":
            out = peer_trilinear(levels, uv, torch.from_numpy(points["lod"]).to(device))
        else:
            grad = torch.from_numpy(points["grad"]).to(device)
            len_x, len_y = grad_lengths(grad, size)
            p_max = torch.maximum(len_x, len_y)
            if kind == "grid_sample-trilinear-grad":
                out = peer_trilinear(levels, uv, torch.log2(p_max))
            elif kind == "grid_sample-anisotropic":
                p_min = torch.minimum(len_x, len_y)
                major = torch.where((len_x >= len_y)[:, None], grad[:, 0], grad[:, 1])
                taps = torch.ceil(p_max / p_min - 1e-3).clamp(1.0, float(ANISOTROPY))
                lod = torch.log2(torch.clamp(p_max / taps, min=1e-30))
                out = peer_trilinear(levels, uv, lod, major, taps.long())
            else:
                raise ValueError(kind)
        return out.cpu().numpy()  # .cpu() waits for CUDA


def peer_case(levels: list[torch.Tensor], kind: str, points: dict[str, np.ndarray], device: torch.device) -> Case:
    def run() -> None:
        out = peer_sample(levels, kind, points, device)
        assert out.shape == (points["uv"].shape[0], levels[0].shape[1]), out.shape

    return run


# -- glmip --------------------------------------------------------------------------------
def glmip_sample(ctx: glmip.Context, pyramid: Any, method: str, points: dict[str, np.ndarray]) -> np.ndarray:
    uv = points["uv"]
    if method == "glmip-trilinear-lod":
        out = pyramid.sample(uv, points["lod"], filter="trilinear")
    elif method == "glmip-trilinear-grad":
        out = pyramid.sample(uv, grad=points["grad"], filter="trilinear")
    elif method == "glmip-anisotropic":
        out = pyramid.sample(uv, grad=points["grad"], filter="anisotropic", anisotropy=ANISOTROPY)
    elif method == "glmip-anisotropic_hw":
        out = pyramid.sample(uv, grad=points["grad"], filter="anisotropic_hw", anisotropy=ANISOTROPY)
    else:
        raise ValueError(method)
    ctx.gl.finish()
    return out


def glmip_case(ctx: glmip.Context, pyramid: Any, method: str, points: dict[str, np.ndarray]) -> Case:
    def run() -> None:
        out = glmip_sample(ctx, pyramid, method, points)
        assert out.shape == (points["uv"].shape[0], pyramid.channels), out.shape

    return run


# -- agreement ----------------------------------------------------------------------------
def agreement(ctx: glmip.Context, pyramid: Any, levels: list[torch.Tensor], points: dict[str, np.ndarray],
              device: torch.device) -> dict[str, dict[str, float]]:
    """Largest and mean |glmip - peer| in 8-bit LSBs for each glmip case on `points`."""
    out: dict[str, dict[str, float]] = {}
    for method, peer in GLMIP_CASES.items():
        got = glmip_sample(ctx, pyramid, method, points).astype(np.float64)
        expected = peer_sample(levels, peer, points, device).astype(np.float64)
        diff = np.abs(got - expected).max(axis=1) * 255
        out[method] = {"vs": peer, "max_lsb": float(diff.max()), "mean_lsb": float(diff.mean()),
                       "p99_lsb": float(np.percentile(diff, 99)),
                       "expected_to_match": method != "glmip-anisotropic_hw"}
        if method == "glmip-trilinear-grad":
            out[method]["outside_lod_band_max_lsb"] = lod_band_excess(levels, points, got, device)
    return out


def lod_band_excess(levels: list[torch.Tensor], points: dict[str, np.ndarray], got: np.ndarray,
                    device: torch.device) -> float:
    """How far (LSBs) textureGrad results lie outside the range the peer spans over lod +- GRAD_LOD_BAND.

    Trilinear is piecewise linear in lod with kinks at integers, so the range over the band is spanned
    by its two ends and the integer level inside it (if any)."""
    with torch.inference_mode():
        uv = torch.from_numpy(points["uv"]).to(device)
        grad = torch.from_numpy(points["grad"]).to(device)
        lod = torch.log2(torch.maximum(*grad_lengths(grad, (levels[0].shape[-1], levels[0].shape[-2]))))
        nearest_int = torch.round(lod).clamp(lod - GRAD_LOD_BAND, lod + GRAD_LOD_BAND)
        candidates = torch.stack([peer_trilinear(levels, uv, lod + delta) for delta in (-GRAD_LOD_BAND, GRAD_LOD_BAND)]
                                 + [peer_trilinear(levels, uv, nearest_int)]).cpu().numpy().astype(np.float64)
    low, high = candidates.min(axis=0), candidates.max(axis=0)
    excess = np.maximum(low - got, 0.0) + np.maximum(got - high, 0.0)
    return float(excess.max() * 255)


# -- running ------------------------------------------------------------------------------
def summarize(size: int, method: str, n: int, timing: Timing, mean_taps: float | None) -> dict[str, Any]:
    result = {
        "size": size,
        "method": method,
        "points": n,
        "repeats": len(timing.times),
        "median_s": timing.median,
        "min_s": timing.min,
        "warmup_s": timing.warmup,
        "times_s": timing.times,
        "msamples_per_s": n / 1e6 / timing.median,
    }
    if mean_taps is not None:
        result["mean_taps"] = mean_taps
        result["mtaps_per_s"] = n * mean_taps / 1e6 / timing.median
    return result


def add_ratios(results: list[dict[str, Any]], device_type: str) -> None:
    """``ratio_vs_grid_sample`` = median of the matching grid_sample peer (same size) / this median."""
    peers = {(r["size"], r["method"]): r["median_s"] for r in results if r["method"].startswith("grid_sample-")}
    for r in results:
        if r["method"].startswith("grid_sample-"):
            r["peer"] = r["method"]
        else:
            r["peer"] = f"{GLMIP_CASES[r['method']]}-{device_type}"
        peer = peers.get((r["size"], r["peer"]))
        r["ratio_vs_grid_sample"] = peer / r["median_s"] if peer else None


def run(sizes: list[int], n: int, check_points: int, repeats: int, budget_s: float) -> dict[str, Any]:
    device = peer_device()
    results: list[dict[str, Any]] = []
    agreements: dict[str, Any] = {}
    mean_taps: dict[str, float] = {}
    with glmip.Context() as ctx:
        renderer = str(ctx.info()["renderer"])
        with tqdm(total=len(sizes) * (len(GLMIP_CASES) + len(PEER_CASES)), unit="case") as bar:
            for size in sizes:
                bar.set_description(f"{size} setup + agreement")
                image = random_image(size)
                points = random_points(size, n)
                taps = float(tap_counts(points["grad"], size).mean())
                mean_taps[str(size)] = taps
                levels = torch_levels(image, device)
                with ctx.pyramid(image, method="box") as pyramid:
                    agreements[str(size)] = agreement(ctx, pyramid, levels, subset(points, check_points), device)
                    cases: list[tuple[str, Case]] = [(m, glmip_case(ctx, pyramid, m, points)) for m in GLMIP_CASES]
                    cases += [(f"{k}-{device.type}", peer_case(levels, k, points, device)) for k in PEER_CASES]
                    for method, case in cases:
                        bar.set_description(f"{size} {method}")
                        assembly = "anisotropic" in method and not method.endswith("_hw")  # hw: taps unknown
                        if method in GLMIP_CASES:
                            timing = measure(case, repeats, budget_s)
                            results.append(summarize(size, method, n, timing, taps if assembly else None))
                        else:
                            peer = measure_peer(case, repeats, budget_s, device)
                            results.append({**summarize(size, method, n, peer.timing, taps if assembly else None),
                                            **peer.fields()})
                        bar.update()
                del levels
    add_ratios(results, device.type)
    reduced = sorted({(r["size"], r["method"]) for r in results if r["repeats"] < repeats})
    return {
        "device": renderer,
        "torch_device": torch_device_label(),
        "peer_device": device.type,
        **environment(numpy=np.__version__),
        "points": n,
        "check_points": check_points,
        "anisotropy": ANISOTROPY,
        "footprints": {"minor_texels": list(MINOR_TEXELS), "ratio": list(RATIO),
                       "orientation": "uniform", "major": "d(uv)/dx or d(uv)/dy at random"},
        "mean_taps": mean_taps,
        "repeats": repeats,
        "budget_s_per_case": budget_s,
        "reduced_repeats": [f"{s} {m}" for s, m in reduced],
        "agreement_lsb": agreements,
        "notes": [
            "times are wall clock of the whole call: numpy inputs -> device, sampling, (N, C) float32 numpy out;"
            " warm-up run excluded; pyramids built once, untimed",
            "msamples_per_s counts output points (an anisotropic sample averages mean_taps trilinear taps)",
            "ratio_vs_grid_sample = median(matching grid_sample peer, same size) / median(this); > 1: glmip faster",
            "CPU peers are timed at every torch.set_num_threads setting in median_s_by_threads; the fastest is kept"
            " (torch_threads)",
            "glmip-anisotropic_hw is compared with the footprint-assembly peer for cost only; its results are"
            " vendor-defined (agreement expected_to_match = false)",
            "CPU peer levels are stored channels-last (grid_sample gathers measured ~1.5-2x faster than from"
            " NCHW-contiguous levels)",
        ],
        "results": results,
    }


def format_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "–"
    return with_ratio(f"{result['median_s'] * 1e3:.0f} ms, {result['msamples_per_s']:.2f} MS/s",
                      result["ratio_vs_grid_sample"])


def agreement_table(report: dict[str, Any]) -> str:
    sizes = sorted(report["agreement_lsb"], key=int)
    methods = list(GLMIP_CASES)
    header = [f"glmip vs peer ({report['check_points']} points), LSB"] + [f"{s}² max / p99 / mean" for s in sizes]
    rows = []
    for method in methods:
        cells = []
        for s in sizes:
            a = report["agreement_lsb"][s][method]
            cells.append(f"{a['max_lsb']:.2f} / {a['p99_lsb']:.2f} / {a['mean_lsb']:.2f}")
        note = "" if report["agreement_lsb"][sizes[0]][method]["expected_to_match"] else " (not expected to match)"
        rows.append([f"{method}{note}"] + cells)
        if method == "glmip-trilinear-grad":
            cells = [f"{report['agreement_lsb'][s][method]['outside_lod_band_max_lsb']:.2f}" for s in sizes]
            rows.append([f"{method}: max outside the peer's range over lod ± {GRAD_LOD_BAND:g}"] + cells)
    return markdown_table(header, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--check-points", type=int, default=2000,
                        help="points on which glmip and the peer are compared before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=20.0,
                        help="at most this many seconds of timed runs per case (repeats are reduced to fit)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/sampling-<renderer>.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeats < 1 or args.points < 1 or args.check_points < 1 or any(s < 2 for s in args.sizes):
        raise SystemExit("--repeats, --points and --check-points must be positive, --sizes at least 2")
    report = run(args.sizes, args.points, min(args.check_points, args.points), args.repeats, args.budget_s)
    out = write_report(report, "sampling", args.out)
    print(f"\ndevice: {report['device']}   torch peer: {report['peer_device']} ({report['torch_device']})   "
          f"points: {report['points']:,}   repeats: {report['repeats']}")
    print("mean anisotropic taps: " + ", ".join(f"{s}²: {t:.2f}" for s, t in report["mean_taps"].items()))
    if report["reduced_repeats"]:
        print("fewer repeats (budget): " + ", ".join(report["reduced_repeats"]))
    print(table_by_size(report, "median, Msamples/s (× grid_sample)", format_cell))
    print()
    print(agreement_table(report))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
