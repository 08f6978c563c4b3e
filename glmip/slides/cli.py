"""`glmip slide info | tokens | render SLIDE`: the slide commands, thin over `glmip.Slide`.

`add_parser(subparsers)` registers them on the `glmip` command line; each handler returns an exit code.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ..context import Context
from ..options import parse_budget, parse_pair, parse_size, writable_output
from ..pictures import LEVEL_PALETTE, save_png, to_display_uint8
from .regions import region_ids

__all__ = ["add_parser"]


def _relevance(args: argparse.Namespace, slide: Any) -> np.ndarray:
    if args.gaze:
        return slide.gaze(parse_pair(args.gaze, "--gaze"))
    if args.saliency:
        return slide.saliency()
    return slide.tissue()


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 in level-0 pixels, got {text!r}")
    return values  # type: ignore[return-value]


def cmd_info(args: argparse.Namespace) -> int:
    with Context(device=args.device) as ctx, ctx.slide(args.slide, tile=args.tile) as slide:
        tissue = slide.tissue()
        report = {"file": str(args.slide), "width": slide.width, "height": slide.height,
                  "channels": slide.channels, "dtype": slide.dtype.name, "mip_levels": slide.levels,
                  "stored_levels": [{"width": lv.width, "height": lv.height, "mip": lv.mip}
                                    for lv in slide.stored_levels],
                  "tissue_fraction": float(tissue.mean()), "tile": slide.tile}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.slide}: {slide.width}x{slide.height}x{slide.channels} {slide.dtype}, {slide.levels} mip levels")
    for index, lv in enumerate(slide.stored_levels):
        print(f"  stored level {index}: {lv.width}x{lv.height} (mip {lv.mip}, downsample {2 ** lv.mip})")
    print(f"tissue (Otsu on saturation, coarsest level): {100 * report['tissue_fraction']:.2f} % of the slide")
    return 0


def _rgb_thumbnail(slide: Any) -> np.ndarray:
    """The coarsest stored level as (h, w, 3) uint8 for drawing on: grey repeated, alpha dropped, 16-bit and
    float pixels as `to_display_uint8` shows them (float clipped to [0, 1], NaN black)."""
    pixels = slide.thumbnail()
    if pixels.dtype == np.float32:
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
    shown = to_display_uint8(pixels)
    return np.ascontiguousarray(shown[..., :3] if shown.shape[2] >= 3 else shown[..., :1].repeat(3, axis=2))


def cmd_tokens(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw

    from ..token_batch import TokenBatch

    output = writable_output(args.output, "-o")
    saved = writable_output(args.save_tokens, "--save-tokens") if args.save_tokens else None
    if args.region < 1:
        raise ValueError(f"--region must be a positive int (level-0 pixels a side), got {args.region}")
    with Context(device=args.device) as ctx, ctx.slide(args.slide, tile=args.tile) as slide:
        relevance = _relevance(args, slide)
        layout = slide.allocate(relevance, args.budget, args.patch, min_level=args.min_level)
        tokens = slide.tokens(layout, progress="tokens")
        regions = region_ids(layout, args.region)
        if saved is not None:
            TokenBatch.from_parts([tokens], [layout]).with_extra(region=regions).save(saved)
        thumbnail = _rgb_thumbnail(slide)
        scale = thumbnail.shape[1] / slide.width
        canvas = Image.fromarray(thumbnail)
        draw = ImageDraw.Draw(canvas)
        for (x0, y0, x1, y1), level in zip(layout.boxes(), layout.level, strict=True):
            colour = tuple(int(c) for c in LEVEL_PALETTE[min(int(level), len(LEVEL_PALETTE) - 1)])
            draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=colour)
        out = save_png(np.asarray(canvas), output)
    counts = ", ".join(f"level {lvl}: {n}" for lvl, n in enumerate(np.bincount(layout.level)) if n)
    print(f"{len(layout)} tokens (budget {args.budget}) in {len(np.unique(regions))} regions of {args.region} px: "
          f"{counts}; wrote {out}" + (f" and {args.save_tokens}" if args.save_tokens else ""))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    output = writable_output(args.output, "-o")
    with Context(device=args.device) as ctx, ctx.slide(args.slide, tile=args.tile) as slide:
        x0, y0, x1, y1 = args.region or (0, 0, slide.width, slide.height)
        if not (0 <= x0 < x1 <= slide.width and 0 <= y0 < y1 <= slide.height):
            raise ValueError(f"--region {x0:g},{y0:g},{x1:g},{y1:g} is not a box inside the slide's level 0 "
                             f"(0,0,{slide.width},{slide.height})")
        region = (x0 / slide.width, y0 / slide.height, x1 / slide.width, y1 / slide.height)
        image = slide.render(size=tuple(args.size), region=region, progress="render")
        out = save_png(image[..., :3] if image.shape[2] >= 3 else image[..., :1], output)
    print(f"rendered level-0 box {(x0, y0, x1, y1)} at {args.size[0]}x{args.size[1]}; wrote {out}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `glmip slide info|tokens|render SLIDE` on the `glmip` parser's subparsers."""
    slide = subparsers.add_parser("slide", help="whole-slide images: info, budgeted tokens, renders of regions")
    commands = slide.add_subparsers(dest="slide_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("slide", help="a pyramidal tiled TIFF / OME-TIFF / SVS")
    common.add_argument("--tile", type=int, default=2048, help="GPU tile interior in pixels (multiple of 64)")

    info = commands.add_parser("info", parents=[common], help="levels, size and tissue fraction")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=cmd_info)

    tokens = commands.add_parser("tokens", parents=[common], help="relevance-budgeted tokens over the slide")
    tokens.add_argument("--budget", type=parse_budget, default=1024, help="most tokens to use (default 1024)")
    tokens.add_argument("--patch", type=int, default=16, help="samples per token side (default 16)")
    tokens.add_argument("--min-level", type=int, default=None, help="finest token level (default: automatic)")
    tokens.add_argument("--region", type=int, default=4096, help="HIPT region side in level-0 pixels")
    source = tokens.add_mutually_exclusive_group()
    source.add_argument("--gaze", help="gaze point u,v instead of the tissue mask")
    source.add_argument("--saliency", action="store_true", help="saliency instead of the tissue mask")
    tokens.add_argument("--save-tokens", help="save tokens and layout as a glmip.TokenBatch file (TokenBatch.load), "
                        "region ids in its extra['region']")
    tokens.add_argument("-o", "--output", default="glmip-slide-layout.png", help="layout over the thumbnail")
    tokens.set_defaults(run=cmd_tokens)

    render = commands.add_parser("render", parents=[common], help="render a region of the slide")
    render.add_argument("--region", type=_box, help="X0,Y0,X1,Y1 in level-0 pixels (default: the whole slide)")
    render.add_argument("--size", type=parse_size, default=(1024, 1024), help="output WIDTHxHEIGHT")
    render.add_argument("-o", "--output", default="glmip-slide.png")
    render.set_defaults(run=cmd_render)
    return slide
