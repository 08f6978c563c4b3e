"""Benchmark: where the tokens go — PSNR of the picture the tokens carry, by allocation criterion, at a budget.

What is measured. Every image becomes a glmip pyramid (``method="box"``, ``srgb=False``: 8-bit values
filtered as stored, as ``bench.tokens``), a token layout per criterion and budget (patch 16, at most
``budget`` tokens, covering the image with no gaps or overlaps), its tokens ``pyramid.tokens(layout)``
and the image they carry, ``glmip.reconstruct.reconstruct(tokens, layout)``, rounded to 8 bits. PSNR
(dB, peak 255) over the whole image and over the gaze region (the disc of radius sigma = 0.12 x the
larger side around the gaze point). Criteria:

* ``uniform``: one grid of square tokens, the smallest side s >= 16 px whose grid fits the budget, sampled
  at the fractional level log2(s / 16) (``bench.tokens.uniform_side``): the plain downsampling.
* ``gaze``: ``glmip.allocate(gaze, budget)``, today's rule on the gaze map.
* ``saliency``: ``glmip.allocate(glmip.saliency(pyramid), budget)``.
* ``detail``: ``glmip.allocate(uniform, budget, detail=glmip.detail.detail_pyramid(pyramid, 16))``: split
  by the detail a coarser token would lose, no relevance.
* ``detail+gaze``: the same with the gaze map as relevance (detail weighted by the gaze).
* ``detail+(1+gaze)/2``: the same with relevance 0.5 + 0.5 x gaze: half the weight on the whole image, half on
  the gaze (a relevance map a caller can pass; the rule is the same).
* ``content`` (yardstick, not a glmip criterion): ``bench.tokens``' content quadtree, which splits the cell
  whose own token's reconstruction has the largest squared error against level 0 — measured on the
  reconstruction itself, so the greedy's best case for whole-image error.

Images (none downloaded): ``bench.tokens``' generated text scenes (``--scenes``, 1024x768; gaze at the
text panel's centre), its ``coffee`` (the bundled image, gaze (0.45, 0.35)), and photographs shipped in
installed packages: matplotlib's ``sample_data/grace_hopper.jpg`` and, where the viewer extra's
``imgui_bundle`` is installed, its demo photographs ``golden_gate.jpg``, ``house.jpg``, ``tennis.jpg``
(gaze at the image centre: a fixed rule, not a point picked per photograph).

Usage::

    python -m bench.detail [--scenes 12] [--budgets 64 256] [--out bench/results/detail-<device>.json]
                           [--doc docs/allocation.md]

The tables go to stdout and between the markers of ``--doc`` (the rest of that page is prose).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

import glmip
from bench.harness import environment, markdown_table, measure, torch_device_label, write_report
from bench.tokens import (
    COFFEE_GAZE,
    PATCH,
    ContentErrors,
    content_quadtree,
    font,
    grid_layout,
    make_scene,
    mse,
    psnr,
    to_uint8,
    uniform_side,
)
from glmip.detail import detail_pyramid
from glmip.image import as_image_array
from glmip.reconstruct import reconstruct

ROOT = Path(__file__).resolve().parent.parent
RADIUS = 0.12
CRITERIA = ("uniform", "gaze", "saliency", "detail", "detail+gaze", "detail+(1+gaze)/2", "content")
PYRAMID_METHOD = "box"
TIMING_REPEATS = 5  # timed runs of each image's detail and relevance pyramid (after one warm-up), median kept
BEGIN, END = "<!-- bench.detail tables: begin -->", "<!-- bench.detail tables: end -->"


@dataclass
class Picture:
    name: str
    kind: str  # "scene" or "photo"
    image: np.ndarray  # (H, W, 3) uint8
    gaze: tuple[float, float]  # uv


def package_photographs() -> list[tuple[str, Path]]:
    """Photographs that installed packages ship (never downloaded): (name, path) of those present."""
    found = []
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if path.exists():
            found.append(("grace_hopper", path))
    spec = importlib.util.find_spec("imgui_bundle")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "demos_assets" / "images"
        for name in ("golden_gate", "house", "tennis"):
            if (folder / f"{name}.jpg").exists():
                found.append((name, folder / f"{name}.jpg"))
    return found


def pictures(scenes: int, width: int, height: int) -> list[Picture]:
    out = []
    for seed in range(scenes):
        scene = make_scene(seed, width, height)
        x0, y0, x1, y1 = scene.box
        out.append(Picture(scene.name, "scene", scene.image, ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height)))
    coffee = as_image_array(glmip.DEFAULT_IMAGE)[..., :3]
    out.append(Picture("coffee", "photo", np.ascontiguousarray(coffee), COFFEE_GAZE))
    for name, path in package_photographs():
        out.append(Picture(name, "photo", np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))),
                           (0.5, 0.5)))
    return out


def gaze_disc(size: tuple[int, int], point: tuple[float, float]) -> np.ndarray:
    width, height = size
    radius = RADIUS * max(width, height)
    y, x = np.mgrid[:height, :width] + 0.5
    return (x - point[0] * width) ** 2 + (y - point[1] * height) ** 2 <= radius**2


def layouts(pyramid: glmip.Pyramid, picture: Picture, budget: int, detail: Any, saliency: np.ndarray,
            errors: ContentErrors) -> dict[str, Any]:
    width, height = pyramid.width, pyramid.height
    size = (width, height)
    gaze = glmip.gaze(size, picture.gaze, RADIUS)
    uniform = np.ones((1, 1), np.float32)
    return {
        "uniform": grid_layout(width, height, uniform_side(width, height, budget, integer=False)),
        "gaze": glmip.allocate(gaze, budget, PATCH, image_size=size),
        "saliency": glmip.allocate(saliency, budget, PATCH, image_size=size),
        "detail": glmip.allocate(uniform, budget, PATCH, image_size=size, detail=detail),
        "detail+gaze": glmip.allocate(gaze, budget, PATCH, image_size=size, detail=detail),
        "detail+(1+gaze)/2": glmip.allocate(0.5 + 0.5 * gaze, budget, PATCH, image_size=size, detail=detail),
        "content": content_quadtree(errors, budget),
    }


def evaluate(ctx: glmip.Context, picture: Picture, budgets: list[int], bar: tqdm,
             keep: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of every criterion at every budget on one image; the budget-`keep` layouts and reconstructions."""
    rows = []
    kept: dict[str, Any] = {}
    height, width = picture.image.shape[:2]
    region = gaze_disc((width, height), picture.gaze)
    with ctx.pyramid(picture.image, method=PYRAMID_METHOD) as pyramid:
        timed = measure(lambda: detail_pyramid(pyramid, PATCH), TIMING_REPEATS)
        detail = timed.result
        gaze = glmip.gaze((width, height), picture.gaze, RADIUS)
        relevance_timed = measure(lambda: glmip.relevance_pyramid(gaze, PATCH, (width, height), context=ctx),
                                  TIMING_REPEATS)
        cost = {"detail_pyramid_ms": statistics.median(timed.times) * 1e3,
                "relevance_pyramid_ms": statistics.median(relevance_timed.times) * 1e3}
        saliency = glmip.saliency(pyramid)
        errors = ContentErrors(pyramid, picture.image)
        for budget in budgets:
            for criterion, layout in layouts(pyramid, picture, budget, detail, saliency, errors).items():
                bar.set_description(f"{picture.name} {criterion} {budget}")
                assert len(layout) <= budget and layout.coverage().min() == 1 and layout.coverage().max() == 1
                picture_8bit = to_uint8(reconstruct(pyramid.tokens(layout), layout))
                if budget == keep:
                    kept[criterion] = (layout, picture_8bit)
                whole, inside = mse(picture_8bit, picture.image), mse(picture_8bit, picture.image, region)
                rows.append({"image": picture.name, "kind": picture.kind, "size": [width, height],
                             "gaze": list(picture.gaze), "criterion": criterion, "budget": budget,
                             "tokens": len(layout), "mse_whole": whole, "mse_region": inside,
                             "psnr_whole": psnr(whole), "psnr_region": psnr(inside),
                             "psnr_whole_cap": lossless_cap(width * height),
                             "psnr_region_cap": lossless_cap(int(region.sum())), **cost})
                bar.update()
    return rows, kept


def layout_picture(picture: Picture, kept: dict[str, Any], budget: int, path: Path) -> None:
    """One column per criterion at half size: its layout over the image (level colours, the gaze region
    outlined in white), its reconstruction below."""
    from PIL import ImageDraw

    columns = [c for c in CRITERIA if c in kept]
    height, width = picture.image.shape[:2]
    half = (width // 2, height // 2)
    label = 20
    sheet = Image.new("RGB", (half[0] * len(columns), label + 2 * half[1]), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    radius = RADIUS * max(width, height) / 2
    cx, cy = picture.gaze[0] * half[0], picture.gaze[1] * half[1]
    for i, criterion in enumerate(columns):
        layout, reconstruction = kept[criterion]
        x = i * half[0]
        draw.text((x + 4, 3), f"{criterion}: {len(layout)}", font=font(13), fill=(0, 0, 0))
        sheet.paste(Image.fromarray(layout.draw(picture.image)).resize(half, Image.Resampling.BOX), (x, label))
        sheet.paste(Image.fromarray(reconstruction).resize(half, Image.Resampling.BOX), (x, label + half[1]))
        draw.ellipse([x + cx - radius, label + cy - radius, x + cx + radius, label + cy + radius],
                     outline=(255, 255, 255), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def _value(rows: list[dict[str, Any]], image: str, criterion: str, budget: int, key: str) -> float:
    """PSNR of one row; a lossless one counts as the PSNR of a single pixel one step off over the measured
    pixels (`lossless_cap`), the least a lossy reconstruction of that area can miss it by."""
    (row,) = [r for r in rows if r["image"] == image and r["criterion"] == criterion and r["budget"] == budget]
    return row[f"{key}_cap"] if row[key] is None else float(row[key])


def _shown(rows: list[dict[str, Any]], image: str, criterion: str, budget: int, key: str) -> str:
    (row,) = [r for r in rows if r["image"] == image and r["criterion"] == criterion and r["budget"] == budget]
    return "lossless" if row[key] is None else f"{row[key]:.2f}"


def lossless_cap(pixels: int, channels: int = 3) -> float:
    """dB of a reconstruction of `pixels` x `channels` values off by one step in one value: above any lossy one."""
    return psnr(1.0 / (pixels * channels)) or 0.0


def summarise(rows: list[dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    """Per budget: per criterion the mean PSNR over images and the mean and worst gain over uniform (whole
    image) and over gaze (region); and the issue's goals, checked as stated."""
    images = list(dict.fromkeys(r["image"] for r in rows))
    out: dict[str, Any] = {}
    for budget in budgets:
        block: dict[str, Any] = {"criteria": {}}
        for criterion in CRITERIA:
            whole = [_value(rows, i, criterion, budget, "psnr_whole") for i in images]
            region = [_value(rows, i, criterion, budget, "psnr_region") for i in images]
            over_uniform = [w - _value(rows, i, "uniform", budget, "psnr_whole") for w, i in zip(whole, images,
                                                                                                    strict=True)]
            over_gaze = [r - _value(rows, i, "gaze", budget, "psnr_region") for r, i in zip(region, images,
                                                                                              strict=True)]
            block["criteria"][criterion] = {
                "psnr_whole_mean": statistics.fmean(whole), "psnr_region_mean": statistics.fmean(region),
                "whole_over_uniform_mean": statistics.fmean(over_uniform), "whole_over_uniform_min": min(over_uniform),
                "region_over_gaze_median": statistics.median(over_gaze), "region_over_gaze_min": min(over_gaze),
                "images": len(images), "images_at_or_above_uniform": sum(d >= 0 for d in over_uniform),
                "images_within_half_db_of_gaze": sum(d >= -0.5 for d in over_gaze)}
        c = block["criteria"]
        block["goals"] = {
            "detail >= uniform on every image (whole)": c["detail"]["whole_over_uniform_min"] >= 0,
            "detail >= uniform + 2 dB on average (whole)": c["detail"]["whole_over_uniform_mean"] >= 2,
            "detail+gaze region within 0.5 dB of gaze on every image":
                c["detail+gaze"]["region_over_gaze_min"] >= -0.5,
            "detail+gaze >= uniform on every image (whole)": c["detail+gaze"]["whole_over_uniform_min"] >= 0,
        }
        out[str(budget)] = block
    return out


def tables(report: dict[str, Any]) -> str:
    rows, budgets = report["quality"], report["budgets"]
    images = list(dict.fromkeys(r["image"] for r in rows))
    out = []
    for budget in budgets:
        out.append(f"**{budget} tokens**, PSNR dB whole image / gaze region (16-px patches, box pyramid; means and "
                   "differences count a lossless result as one value one step off):\n")
        table = []
        for image in images:
            cells = []
            for criterion in CRITERIA:
                cells.append(f"{_shown(rows, image, criterion, budget, 'psnr_whole')} / "
                             f"{_shown(rows, image, criterion, budget, 'psnr_region')}")
            table.append([image] + cells)
        s = report["summary"][str(budget)]["criteria"]
        table.append(["**mean**"] + [f"{s[c]['psnr_whole_mean']:.2f} / {s[c]['psnr_region_mean']:.2f}"
                                     for c in CRITERIA])
        table.append(["whole − uniform: mean (worst)"] + [
            f"{s[c]['whole_over_uniform_mean']:+.2f} ({s[c]['whole_over_uniform_min']:+.2f})" for c in CRITERIA])
        table.append(["whole ≥ uniform: images"] + [f"{s[c]['images_at_or_above_uniform']} of {s[c]['images']}"
                                                   for c in CRITERIA])
        table.append(["region − gaze: median (worst)"] + [
            f"{s[c]['region_over_gaze_median']:+.2f} ({s[c]['region_over_gaze_min']:+.2f})" for c in CRITERIA])
        table.append(["region within 0.5 dB of gaze: images"] + [
            f"{s[c]['images_within_half_db_of_gaze']} of {s[c]['images']}" for c in CRITERIA])
        out.append(markdown_table(["image"] + list(CRITERIA), table))
        goals = report["summary"][str(budget)]["goals"]
        out.append("\nGoals at " + str(budget) + " tokens: " + "; ".join(
            f"{name}: {'met' if met else 'NOT met'}" for name, met in goals.items()) + ".\n")
    sizes: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row["criterion"] == CRITERIA[0] and row["budget"] == budgets[0]:
            sizes.setdefault(tuple(row["size"]), []).append(row)
    out.append(f"Cost on the GPU ({report['device']}), median over the images of each size of each image's median "
               f"of {TIMING_REPEATS} runs, ms (the gaze's relevance pyramid, built on the GPU from a full-size map, "
               "for scale):\n")
    out.append(markdown_table(["image size", "images", "detail pyramid", "relevance pyramid (gaze)"], [
        [f"{w}x{h}", str(len(group)), f"{statistics.median(r['detail_pyramid_ms'] for r in group):.1f}",
         f"{statistics.median(r['relevance_pyramid_ms'] for r in group):.1f}"] for (w, h), group in sizes.items()]))
    return "\n".join(out)


def write_doc(path: Path, text: str) -> None:
    """Put `text` between the bench markers of `path` (appending the markers if the page has none)."""
    page = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in page and END in page:
        page = page[:page.index(BEGIN)] + block + page[page.index(END) + len(END):]
    else:
        page = page + ("\n" if page else "") + block + "\n"
    path.write_text(page)


def run(args: argparse.Namespace) -> dict[str, Any]:
    width, height = args.size
    budgets = sorted(set(args.budgets))
    images = pictures(args.scenes, width, height)
    rows: list[dict[str, Any]] = []
    shown = next((p for p in images if p.name == args.picture_image), None)
    with glmip.Context() as ctx:
        renderer = str(ctx.info()["renderer"])
        with tqdm(total=len(images) * len(budgets) * len(CRITERIA), unit="layout") as bar:
            for picture in images:
                keep = args.picture_budget if picture is shown and args.picture else None
                picture_rows, kept = evaluate(ctx, picture, budgets, bar, keep)
                rows += picture_rows
                if kept:
                    layout_picture(picture, kept, args.picture_budget, Path(args.picture))
    report: dict[str, Any] = {
        "device": renderer, "torch_device": torch_device_label(), **environment(numpy=np.__version__),
        "config": {"scenes": args.scenes, "size": [width, height], "patch": PATCH, "pyramid": PYRAMID_METHOD,
                   "srgb": False, "gaze_radius": RADIUS},
        "budgets": budgets,
        "images": [{"name": p.name, "kind": p.kind, "size": [p.image.shape[1], p.image.shape[0]],
                    "gaze": list(p.gaze)} for p in images],
        "criteria": {
            "uniform": "one grid, smallest side s >= 16 with ceil(W/s)*ceil(H/s) <= budget, level log2(s/16)",
            "gaze": "glmip.allocate(glmip.gaze(size, point, 0.12), budget)",
            "saliency": "glmip.allocate(glmip.saliency(pyramid), budget)",
            "detail": "glmip.allocate(ones, budget, detail=glmip.detail.detail_pyramid(pyramid, 16))",
            "detail+gaze": "glmip.allocate(gaze, budget, detail=glmip.detail.detail_pyramid(pyramid, 16))",
            "detail+(1+gaze)/2": "glmip.allocate(0.5 + 0.5 * gaze, budget, detail=glmip.detail.detail_pyramid(...))",
            "content": "bench.tokens.content_quadtree: split the cell whose own token reconstructs worst (yardstick)",
        },
        "notes": ["PSNR on 8-bit rounded reconstructions, peak 255; region = disc of radius 0.12 x the larger side "
                  "around the gaze point; scenes: gaze at the text panel's centre; photographs: at the centre "
                  "(coffee: (0.45, 0.35), as bench.tokens)",
                  "detail_pyramid_ms / relevance_pyramid_ms: median of 5 runs after one warm-up, per image, "
                  "wall clock including the read-back; llvmpipe shares 2 cores: expect tens of percent noise"],
        "quality": rows,
    }
    report["summary"] = summarise(rows, budgets)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=12, help="bench.tokens' generated text scenes (seeds 0..n-1)")
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 768], metavar=("W", "H"))
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/detail-<device>.json)")
    parser.add_argument("--picture", default=str(ROOT / "docs" / "allocation-layouts.png"),
                        help="PNG of every criterion's layout and reconstruction on --picture-image ('' to skip)")
    parser.add_argument("--picture-image", default="grace_hopper", help="which image the picture shows")
    parser.add_argument("--picture-budget", type=int, default=64)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "allocation.md"),
                        help="markdown page whose bench block gets the tables ('' to skip)")
    args = parser.parse_args(argv)
    if args.scenes < 0 or min(args.budgets) < 1 or min(args.size) < 128:
        parser.error("--scenes must be >= 0, --budgets positive, --size at least 128")
    if args.picture and args.picture_budget not in args.budgets:
        parser.error(f"--picture-budget {args.picture_budget} is not among --budgets")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    report = run(args)
    report["runtime_s"] = time.perf_counter() - start
    out = write_report(report, "detail", args.out)
    text = tables(report)
    print(f"\ndevice: {report['device']}   runtime {report['runtime_s']:.0f} s\n")
    print(text)
    if args.doc:
        write_doc(Path(args.doc), text)
    print(f"\nwrote {out}" + "".join(f", {p}" for p in (args.doc, args.picture) if p))


if __name__ == "__main__":
    main()
