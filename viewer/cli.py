"""`glmip view [IMAGE]`: the interactive viewer, or one frame of it as a PNG (`--screenshot`)."""

from __future__ import annotations

import argparse
import sys

from glmip.cli import parse_pair

from .state import ViewState, parse_mode


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glmip view", description="The interactive LOD viewer: a mipmap pyramid "
                                "sampled at relevance-driven levels of detail (keys: press h in the window).")
    p.add_argument("image", nargs="?", help="image file (default: the bundled coffee.png)")
    p.add_argument("--screenshot", metavar="OUT.png", help="render one frame to this PNG and exit")
    p.add_argument("--mode", default="foveated",
                   help="original | foveated | levels | heat | tokens | level:K (default foveated)")
    p.add_argument("--gaze", help="gaze point X,Y as fractions of width and height (default 0.5,0.5); pins it")
    p.add_argument("--size", default="1280x800", help="window / screenshot WIDTHxHEIGHT in pixels")
    p.add_argument("--method", choices=["hardware", "box", "lanczos"], default="hardware", help="pyramid filter")
    p.add_argument("--srgb", action="store_true", help="filter 8-bit RGB(A) in linear light")
    p.add_argument("--zoom", type=float, default=1.0, help="zoom relative to fitting the image (default 1)")
    p.add_argument("--tilt", type=float, default=0.0, help="degrees; > 0 compares trilinear with --filter")
    p.add_argument("--filter", default="anisotropic",
                   choices=["anisotropic", "anisotropic_hw", "trilinear", "nearest"],
                   help="the compared filter on the tilted plane")
    p.add_argument("--anisotropy", type=int, default=16, help="1..16 (default 16)")
    p.add_argument("--lod-bias", type=float, default=0.0)
    p.add_argument("--budget", type=int, default=256, help="token budget")
    p.add_argument("--patch", type=int, default=16, help="samples per token side")
    p.add_argument("--gamma", type=float, default=1.0, help="relevance curve exponent")
    p.add_argument("--no-ui", action="store_true", help="hide the side panel (toggle with u)")
    p.add_argument("--clip-model", metavar="PATH", help="CLIP model for text-query relevance")
    p.add_argument("--headless", action="store_true", help="render through EGL even where a display exists")
    p.add_argument("--device", type=int, default=None, help="EGL device index for glmip's context")
    return p


def state_from_args(args: argparse.Namespace) -> dict:
    mode, level = parse_mode(args.mode)
    state: dict = {"mode": mode, "level": level, "method": args.method, "zoom": args.zoom, "tilt": args.tilt,
                   "compare_filter": args.filter, "anisotropy": args.anisotropy, "lod_bias": args.lod_bias,
                   "budget": args.budget, "patch": args.patch, "gamma": args.gamma, "show_panel": not args.no_ui}
    if args.gaze:
        gaze = parse_pair(args.gaze, "--gaze")
        state.update(gaze=gaze, gaze_pinned=True)
    ViewState(image_size=(1, 1), **state)  # checks every value before a context or window opens
    return state


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        size = tuple(int(v) for v in parse_pair(args.size, "--size"))
        state = state_from_args(args)
        from .window import Viewer, display_available

        window = display_available() and not args.headless
        if not window and not args.screenshot:
            raise ValueError("no display (DISPLAY is unset): run under X/Xvfb, or pass --screenshot OUT.png "
                             "to render one frame headless through EGL")
        with Viewer(args.image, size=size, window=window, visible=not args.screenshot, device=args.device,
                     srgb=args.srgb, clip_model=args.clip_model, **state) as viewer:
            if args.screenshot:
                viewer.settle()
                viewer.screenshot(args.screenshot)
                print(f"{viewer.state.mode.value}: {size[0]}x{size[1]} frame "
                      f"({'window' if window else 'EGL, no window'}), wrote {args.screenshot}")
            else:
                viewer.run()
    except (ValueError, TypeError) as error:
        print(f"glmip view: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
