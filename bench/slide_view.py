"""Frame times of `glmip view SLIDE` (headless EGL): the fitted view, a zoom to 1:1 on tissue, and pans at 1:1
that cross render-grid lines and GPU tiles, on a generated 100,000 x 80,000 pyramidal TIFF.

Each figure is the wall time of `Viewer.render()` (engine work, UI, draw, glFinish) per frame: the median and
the largest of the frames of that phase. Cold frames fetch file tiles and build GPU tile pyramids; warm ones
reuse the slide's caches. There is no peer to take a ratio against (the viewer is glmip's own front).

    python -m bench.slide_view            # writes bench/results/slide-view-<renderer>.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import glmip.viewer  # noqa: F401 - imports imgui_bundle before glfw
from glmip.slides.synthetic import write_synthetic_slide
from glmip.viewer.window import Viewer

from .harness import write_report

FRAME = (1280, 800)
PAN_STEP = 160  # screen pixels a pan frame moves at 1:1 (a 256-px render-grid line every 1.6 frames)


def summary(times: list[float]) -> dict[str, float]:
    ms = [t * 1e3 for t in times]
    return {"frames": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms)}


def timed(viewer: Viewer, frames: int = 1) -> list[float]:
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        viewer.render()
        times.append(time.perf_counter() - start)
    return times


def run(path: Path, tissue: tuple[int, int, int, int], size: tuple[int, int]) -> dict:
    results: dict[str, dict[str, float]] = {}
    with Viewer(str(path), size=FRAME, window=False, visible=False) as viewer:
        state = viewer.state
        results["fitted_first"] = summary(timed(viewer))
        results["fitted_steady"] = summary(timed(viewer, 7))
        x0, y0, x1, y1 = tissue
        u, v = (x0 + x1) / 2 / size[0], (y0 + y1) / 2 / size[1]
        area = state.area
        cx, cy = area.x0 + area.width / 2, area.y0 + area.height / 2
        zoom_times = []
        while state.scale < 1.0:  # zoom a quarter octave a frame about the tissue's centre, kept at the middle
            sx, sy = state.image_to_screen(u, v)
            state.pan_by(cx - sx, cy - sy)
            state.zoom_at(cx, cy, 1)
            zoom_times += timed(viewer)
        results["zoom_in_cold"] = summary(zoom_times)
        results["one_to_one_steady"] = summary(timed(viewer, 7))
        pan_cold, pan_warm = [], []
        for direction in (-1, 1):  # right across the tissue and beyond (new tiles), then back (cached tiles)
            for _ in range(16):
                state.pan_by(direction * PAN_STEP, 0)
                (pan_cold if direction < 0 else pan_warm).extend(timed(viewer))
        results["pan_1to1_cold_tiles"] = summary(pan_cold)
        results["pan_1to1_cached_tiles"] = summary(pan_warm)
        slide = viewer.scene.slide
        renderer = viewer.context.info()["renderer"]
        memory = {"host_cache_bytes": slide.cache_bytes, "gl_tile_bytes": slide.gl_bytes,
                  "renders": viewer.scene.renders}
    return {"benchmark": "slide-view", "device": renderer, "frame": FRAME, "pan_step_px": PAN_STEP,
            "slide": {"width": size[0], "height": size[1], "tissue_box": tissue}, "phases": results, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/slide-view-*.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        slide = write_synthetic_slide(Path(folder) / "view.tif", tissue_size=(4096, 3072), tissue=1)
        report = run(slide.path, slide.tissue[0], (slide.width, slide.height))
    for name, figures in report["phases"].items():
        print(f"{name:24s} {figures['frames']:3d} frames  median {figures['median_ms']:8.1f} ms  "
              f"max {figures['max_ms']:8.1f} ms")
    print(report["memory"])
    print(f"wrote {write_report(report, 'slide-view', args.out)}")


if __name__ == "__main__":
    main()
