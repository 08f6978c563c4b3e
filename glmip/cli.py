"""The `glmip` command line: `glmip info`, `glmip build`. Thin: every step is a library call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import DEFAULT_IMAGE, Context, PyramidMethod, __version__
from .pictures import contact_sheet, save_png


def _print_info(info: dict, stream=sys.stdout) -> None:
    print(f"renderer        {info['renderer']} ({info['vendor']})", file=stream)
    print(f"OpenGL          {info['gl_version']}", file=stream)
    print(f"EGL device      {info['egl_device']} of {max(1, len(info['egl_devices']))}", file=stream)
    print(f"max texture     {info['max_texture_size']} px", file=stream)
    print(f"max anisotropy  {info['max_anisotropy']:g}x", file=stream)
    print(f"compute shaders {'yes' if info['compute_shaders'] else 'no'}", file=stream)
    for name, path in info["interop"].items():
        mark = "yes" if path["available"] else "no "
        print(f"interop {name:<16} {mark}  ({path['why']})", file=stream)


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
    with Context(device=args.device) as ctx:
        if not args.quiet:
            _print_info(ctx.info())
            print()
        start = time.perf_counter()
        with ctx.pyramid(image, method=args.method, srgb=args.srgb) as pyramid:
            ctx.gl.finish()
            elapsed = time.perf_counter() - start
            levels = [pyramid.level(i) for i in range(pyramid.levels)]
            level0_bytes = levels[0].nbytes
            print(f"{Path(image).name}: {pyramid.width}x{pyramid.height}x{pyramid.channels} {pyramid.dtype}, "
                  f"method {pyramid.method.value}{' (sRGB)' if pyramid.srgb else ''}: {pyramid.levels} levels "
                  f"in {elapsed * 1e3:.1f} ms (upload + build), {pyramid.nbytes} bytes = "
                  f"{pyramid.nbytes / level0_bytes:.3f} x level 0")
        out = save_png(contact_sheet(levels), args.output)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glmip", description="GPU mipmap pyramids with OpenGL, for vision models.")
    parser.add_argument("--version", action="version", version=f"glmip {__version__}")
    parser.add_argument("--device", type=int, default=None, help="EGL device index (default: EGL's first)")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="report the GL device's capabilities and interop paths")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(run=cmd_info)

    build = commands.add_parser("build", help="build an image's pyramid and write its levels as a PNG contact sheet")
    build.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    build.add_argument("--method", choices=[m.value for m in PyramidMethod], default="hardware")
    build.add_argument("--srgb", action="store_true", help="filter 8-bit RGB(A) in linear light")
    build.add_argument("-o", "--output", default="glmip-levels.png", help="contact sheet PNG path")
    build.add_argument("-q", "--quiet", action="store_true", help="skip the capability report")
    build.set_defaults(run=cmd_build)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as error:
        print(f"glmip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
