"""The `glmip` command line: info, build, render, tokens, warp, view. Thin: every step is a library call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import DEFAULT_IMAGE, Context, PyramidMethod, __version__
from .allocate import ClassBudgets, allocate
from .data.cli import add_parser as add_data_parser
from .detail import detail_pyramid
from .errors import GlmipError
from .gl.formats import unorm_scale
from .image import as_image_array
from .maps import as_relevance
from .options import parse_budget, parse_pair, parse_range, parse_size, writable_output
from .pictures import contact_sheet, heat_colours, level_colours, level_legend, overlay, save_png
from .relevance import gaze, saliency
from .slides.cli import add_parser as add_slide_parser

__all__ = ["main"]


def _print_info(info: dict, stream: Any = None) -> None:
    stream = sys.stdout if stream is None else stream  # looked up now: stdout may have been replaced
    print(f"renderer        {info['renderer']} ({info['vendor']})", file=stream)
    print(f"OpenGL          {info['gl_version']}", file=stream)
    print(f"EGL device      {info['egl_device']} of {max(1, len(info['egl_devices']))}", file=stream)
    for device in info["egl_devices"]:
        mark = "*" if device.get("chosen") else " "
        name = device.get("renderer") or device.get("vendor") or device.get("drm_file") or \
            (info["renderer"] if device.get("chosen") else "unnamed")
        print(f"  {mark} {device.get('index')}: {name}; uuid {device.get('uuid') or 'not exposed'}; "
              f"CUDA device {device.get('cuda_device') if device.get('cuda_device') is not None else 'none'}",
              file=stream)
    if info.get("gl_cuda_devices") is not None:
        print(f"CUDA devices    {info['gl_cuda_devices']} run this context", file=stream)
    print(f"max texture     {info['max_texture_size']} px", file=stream)
    print(f"max anisotropy  {info['max_anisotropy']:g}x", file=stream)
    print(f"compute shaders {'yes' if info['compute_shaders'] else 'no'}", file=stream)
    for name, path in info["interop"].items():
        mark = "yes" if path["available"] else "no "
        print(f"interop {name:<16} {mark}  ({path['why']})", file=stream)


def progress(total: int, what: str) -> Any:
    """A tqdm bar on stderr over `total` steps, shown only when the work takes over a second."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, file=sys.stderr, delay=1.0, leave=False, unit="step")


def cmd_info(args: argparse.Namespace) -> int:
    with Context(device=args.device) as ctx:
        info = ctx.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    image = args.image or DEFAULT_IMAGE
    output = writable_output(args.output, "-o")
    with Context(device=args.device) as ctx:
        if args.verbose:
            _print_info(ctx.info())
            print()
        start = time.perf_counter()
        with ctx.pyramid(image, method=args.method, srgb=args.srgb) as pyramid:
            ctx.gl.finish()
            elapsed = time.perf_counter() - start
            with progress(pyramid.levels, "reading levels") as bar:
                levels = []
                for i in range(pyramid.levels):
                    levels.append(pyramid.level(i))
                    bar.update()
            level0_bytes = levels[0].nbytes
            print(f"{Path(image).name}: {pyramid.width}x{pyramid.height}x{pyramid.channels} {pyramid.dtype}, "
                  f"method {pyramid.method.value}{' (sRGB)' if pyramid.srgb else ''}: {pyramid.levels} levels "
                  f"in {elapsed * 1e3:.1f} ms (upload + build), {pyramid.nbytes} bytes = "
                  f"{pyramid.nbytes / level0_bytes:.3f} x level 0")
        out = save_png(contact_sheet(levels), output)
    print(f"wrote {out}")
    return 0


def load_relevance(path: str) -> np.ndarray:
    """A relevance map from a .npy file or a grayscale image (scaled to [0, 1])."""
    if path.endswith(".npy"):
        return as_relevance(np.load(path))
    pixels = as_image_array(path)[..., 0]
    scale = unorm_scale(pixels.dtype.name) or 1.0
    return as_relevance(pixels.astype(np.float32) / scale)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def relevance_from_args(args: argparse.Namespace, pyramid: Any) -> np.ndarray:
    """The relevance a command was given: --relevance FILE, --saliency, --query TEXT (with
    --clip-model DIR), else a --gaze point (default the centre)."""
    given = [name for name in ("relevance", "gaze", "query") if getattr(args, name, None)]
    given += ["saliency"] if getattr(args, "saliency", False) else []
    if len(given) > 1:
        raise ValueError(f"pass one relevance source, got {', '.join('--' + g for g in given)}")
    if args.relevance:
        return load_relevance(args.relevance)
    if getattr(args, "saliency", False):
        return saliency(pyramid)
    if getattr(args, "query", None):
        if not args.clip_model:
            raise ValueError("--query needs --clip-model DIR, a CLIP model saved locally by transformers")
        from .query import query_relevance

        return query_relevance(pyramid, args.query, args.clip_model)
    point = parse_pair(args.gaze, "--gaze") if args.gaze else (0.5, 0.5)
    return gaze((pyramid.width, pyramid.height), point, radius=args.radius)


def add_relevance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relevance", help="relevance map: .npy or a grayscale image, any resolution")
    parser.add_argument("--gaze", help="gaze point X,Y as fractions of width and height (default 0.5,0.5)")
    parser.add_argument("--radius", type=float, default=0.12, help="gaze falloff, a fraction of the larger side")
    parser.add_argument("--saliency", action="store_true", help="relevance from the built-in saliency (no weights)")
    parser.add_argument("--query", help="relevance of image regions to this text (needs --clip-model)")
    parser.add_argument("--clip-model", help="local directory of a transformers CLIP model (never downloaded)")


def cmd_tokens(args: argparse.Namespace) -> int:
    image = args.image or DEFAULT_IMAGE
    output = writable_output(args.output, "-o")
    saved = writable_output(args.save_tokens, "--save-tokens") if args.save_tokens else None
    with Context(device=args.device) as ctx, ctx.pyramid(image, method="box") as pyramid, \
            progress(4 if saved else 3, "tokens") as bar:
        bar.update()
        sources = [args.relevance, args.gaze, args.query, args.saliency]
        uniform = args.detail and not any(sources)
        relevance = np.ones((1, 1), np.float32) if uniform else relevance_from_args(args, pyramid)
        detail = detail_pyramid(pyramid, args.patch) if args.detail else None
        classes = None
        if args.relevant or args.background:
            classes = ClassBudgets(relevant=parse_range(args.relevant or "0-" + str(args.budget), "--relevant"),
                                   background=parse_range(args.background or "0-" + str(args.budget), "--background"),
                                   threshold=args.threshold)
        size = (pyramid.width, pyramid.height)
        layout = allocate(relevance, budget=args.budget, patch=args.patch, image_size=size, classes=classes,
                          context=ctx, detail=detail)
        bar.update()
        if saved is not None:
            from .token_batch import TokenBatch  # torch, only when asked for

            TokenBatch.from_parts([pyramid.tokens(layout)], [layout]).save(saved)
            bar.update()
        picture = layout.draw(pyramid.level(0))
        bar.update()
    out = save_png(picture, output)
    counts = ", ".join(f"level {lvl}: {n}" for lvl, n in enumerate(np.bincount(layout.level)) if n)
    split = "" if layout.relevant is None else \
        f" ({int(layout.relevant.sum())} relevant, {int((~layout.relevant).sum())} background)"
    rule = "" if not args.detail else \
        f", split by detail with {'uniform relevance' if uniform else 'the given relevance'}"
    print(f"{len(layout)} tokens of {args.patch}x{args.patch} samples (budget {args.budget}){rule}{split}: {counts}; "
          f"wrote {out}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    image = args.image or DEFAULT_IMAGE
    output = writable_output(args.output, "-o")
    with Context(device=args.device) as ctx, ctx.pyramid(image, method=args.method, srgb=args.srgb) as pyramid:
        size = args.size or (pyramid.width, pyramid.height)
        relevance = relevance_from_args(args, pyramid)
        max_level = pyramid.default_max_level if args.max_level is None else args.max_level
        composite, used = pyramid.render(relevance=relevance, max_level=max_level, gamma=args.gamma, size=size,
                                         return_lod=True)
        if args.mode == "lod":
            picture = composite
        elif args.mode == "levels":
            legend = level_legend(pyramid.levels, 16, size[0])
            picture = np.concatenate([level_colours(used), legend], axis=0)
        else:
            picture = overlay(pyramid.level(0), heat_colours(resize_map(relevance, size)))
        out = save_png(picture, output)
    print(f"{args.mode}: {size[0]}x{size[1]}, levels {float(used.min()):.2f}..{float(used.max()):.2f} "
          f"(max level {max_level}), wrote {out}")
    return 0


def cmd_warp(args: argparse.Namespace) -> int:
    from .reference import encode
    from .warp import tilt_homography

    matrix = None
    if args.matrix is not None:
        try:
            matrix = np.array([float(v) for v in args.matrix.split(",")]).reshape(3, 3)
        except ValueError:
            raise ValueError(f"--matrix must be nine numbers a,b,c,d,e,f,g,h,i (row-major), "
                             f"got {args.matrix!r}") from None
    output = writable_output(args.output, "-o")
    with Context(device=args.device) as ctx, ctx.pyramid(args.image or DEFAULT_IMAGE, method=args.method,
                                                         srgb=args.srgb) as pyramid:
        size = args.size or (pyramid.width, pyramid.height)
        if matrix is None:
            matrix = tilt_homography((pyramid.width, pyramid.height), size, args.tilt, zoom=args.zoom)
        border = args.border or ("zero" if args.tilt is not None else "clamp")
        result = pyramid.warp(matrix, size, filter=args.filter, anisotropy=args.anisotropy, lod_bias=args.lod_bias,
                              border=border)
        picture = encode(result[0].permute(1, 2, 0).numpy().astype(np.float64), "uint8", pyramid.srgb)
    out = save_png(picture, output)
    print(f"warp ({args.filter}, border {border}): {size[0]}x{size[1]}, wrote {out}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from . import viewer

    size = parse_size(args.size)
    state = viewer.view_state(
        mode=args.mode, gaze=parse_pair(args.gaze, "--gaze") if args.gaze else None, method=args.method,
        zoom=args.zoom, tilt=args.tilt, compare_filter=args.filter, anisotropy=args.anisotropy,
        lod_bias=args.lod_bias, budget=args.budget, patch=args.patch, gamma=args.gamma, show_panel=not args.no_ui)
    print(viewer.run(args.image, size=size, screenshot=args.screenshot, headless=args.headless, device=args.device,
                     srgb=args.srgb, clip_model=args.clip_model, state=state))
    return 0


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    p.add_argument("--screenshot", metavar="OUT.png", help="render one frame to this PNG and exit")
    p.add_argument("--mode", default="foveated",
                   help="original | foveated | levels | heat | tokens | level:K (default foveated)")
    p.add_argument("--gaze", help="gaze point X,Y as fractions of width and height (default 0.5,0.5); pins it")
    p.add_argument("--size", default="1280x800", help="window / screenshot WIDTHxHEIGHT in pixels")
    p.add_argument("--method", choices=[m.value for m in PyramidMethod], default="hardware", help="pyramid filter")
    p.add_argument("--srgb", action="store_true", help="filter 8-bit RGB(A) in linear light")
    p.add_argument("--zoom", type=float, default=1.0, help="zoom relative to fitting the image (default 1)")
    p.add_argument("--tilt", type=float, default=0.0, help="degrees; > 0 compares trilinear with --filter")
    p.add_argument("--filter", default="anisotropic", choices=["anisotropic", "anisotropic_hw", "trilinear", "nearest"],
                   help="the compared filter on the tilted plane")
    p.add_argument("--anisotropy", type=int, default=16, help="1..16 (default 16)")
    p.add_argument("--lod-bias", type=float, default=0.0)
    p.add_argument("--budget", type=int, default=256, help="token budget")
    p.add_argument("--patch", type=int, default=16, help="samples per token side")
    p.add_argument("--gamma", type=float, default=1.0, help="relevance curve exponent")
    p.add_argument("--no-ui", action="store_true", help="hide the side panel (toggle with u)")
    p.add_argument("--clip-model", metavar="PATH", help="CLIP model for text-query relevance")
    p.add_argument("--headless", action="store_true", help="render through EGL even where a display exists")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glmip", description="GPU mipmap pyramids with OpenGL, for vision models.")
    parser.add_argument("--version", action="version", version=f"glmip {__version__}")
    # --device goes before or after the subcommand; the subcommand's copy keeps a value given before it.
    parser.add_argument("--device", type=int, default=None, help="EGL device index (default: the first NVIDIA "
                        "device, else EGL's first; see glmip info)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", type=int, default=argparse.SUPPRESS, help="EGL device index")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", parents=[device], help="report the GL device's capabilities and interop paths")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(run=cmd_info)

    build = commands.add_parser(
        "build", parents=[device], help="build an image's pyramid and write its levels as a PNG contact sheet")
    build.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    build.add_argument("--method", choices=[m.value for m in PyramidMethod], default="hardware")
    build.add_argument("--srgb", action="store_true", help="filter 8-bit RGB(A) in linear light")
    build.add_argument("-o", "--output", default="glmip-levels.png", help="contact sheet PNG path")
    build.add_argument("-v", "--verbose", action="store_true", help="print the device's capability report first")
    build.add_argument("-q", "--quiet", action="store_true", help="(the default; kept for old scripts)")
    build.set_defaults(run=cmd_build)

    rend = commands.add_parser(
        "render", parents=[device], help="the image at relevance-driven levels of detail, as a PNG")
    rend.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    add_relevance_arguments(rend)
    rend.add_argument("--mode", choices=["lod", "levels", "heat"], default="lod",
                      help="lod: the composited image; levels: false colour of the level per pixel; "
                           "heat: the relevance over the image")
    rend.add_argument("--max-level", type=float, default=None, help="level of relevance 0 (default min(5, last))")
    rend.add_argument("--gamma", type=float, default=1.0, help="relevance curve exponent")
    rend.add_argument("--method", choices=[m.value for m in PyramidMethod], default="box")
    rend.add_argument("--srgb", action="store_true", help="filter 8-bit RGB(A) in linear light")
    rend.add_argument("--size", type=parse_size, help="output WIDTHxHEIGHT (a 16-bit PNG for 16-bit and float "
                      "images: float values clipped to 0..1)")
    rend.add_argument("-o", "--output", default="glmip-render.png")
    rend.set_defaults(run=cmd_render)

    tokens = commands.add_parser(
        "tokens", parents=[device], help="split an image into a token budget by relevance; draw the layout")
    tokens.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    add_relevance_arguments(tokens)
    tokens.add_argument("--budget", type=parse_budget, default=256, help="most tokens to use")
    tokens.add_argument("--patch", type=int, default=16, help="samples per token side")
    tokens.add_argument("--relevant", help="token range MIN-MAX for relevant regions, e.g. 64-400")
    tokens.add_argument("--background", help="token range MIN-MAX for the rest, e.g. 16-64")
    tokens.add_argument("--threshold", type=float, default=0.5, help="relevance that makes a token relevant")
    tokens.add_argument("--detail", action="store_true",
                        help="split where relevance x the detail a coarser token would lose is largest, measured on "
                             "the image's own pyramid (without a relevance source: uniform relevance, a content-only "
                             "quadtree)")
    tokens.add_argument("--save-tokens", help="also save the tokens and layout as a torch .pt file")
    tokens.add_argument("-o", "--output", default="glmip-layout.png")
    tokens.set_defaults(run=cmd_tokens)

    warp = commands.add_parser("warp", parents=[device], help="the image through a homography or a tilt, "
                               "rasterized with per-pixel LOD (anti-aliased), as a PNG")
    warp.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    geometry = warp.add_mutually_exclusive_group(required=True)
    geometry.add_argument("--tilt", type=float, help="tilt DEG: the image as a plane seen obliquely (the viewer's)")
    geometry.add_argument("--matrix", help="a,b,c,d,e,f,g,h,i: the 3x3 homography, row-major, mapping output pixel "
                                           "positions to input ones (origin top-left corner, centres at i + 0.5)")
    warp.add_argument("--zoom", type=float, default=1.0, help="with --tilt: zoom into the plane")
    warp.add_argument("--size", type=parse_size,
                      help="output WIDTHxHEIGHT (default the image's)")
    warp.add_argument("--filter", choices=["anisotropic", "anisotropic_hw", "trilinear", "bilinear", "nearest"],
                      default="anisotropic")
    warp.add_argument("--anisotropy", type=float, default=16.0)
    warp.add_argument("--lod-bias", type=float, default=0.0)
    warp.add_argument("--border", choices=["clamp", "zero", "repeat", "mirror"], default=None,
                      help="outside the image (default: zero with --tilt, else clamp)")
    warp.add_argument("--method", choices=[m.value for m in PyramidMethod], default="box")
    warp.add_argument("--srgb", action="store_true", help="filter 8-bit RGB(A) in linear light")
    warp.add_argument("-o", "--output", default="glmip-warp.png")
    warp.set_defaults(run=cmd_warp)

    add_slide_parser(commands)
    add_data_parser(commands)  # glmip tokenize: a folder into token shards

    view = commands.add_parser("view", parents=[device], help="the interactive LOD viewer (GLFW + Dear ImGui; "
                               "needs the viewer extra: pip install 'glmip[viewer]')",
                               description="The interactive LOD viewer: a mipmap pyramid sampled at relevance-driven "
                                           "levels of detail (keys: press h in the window).")
    add_view_arguments(view)
    view.set_defaults(run=cmd_view)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader went away (`glmip info --json | head`): stop quietly, and keep Python's own
        # flush at exit from raising again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, ImportError, GlmipError, OSError) as error:
        print(f"glmip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
