"""From tokens back to an image: what a ViT fed `Pyramid.tokens(layout)` "sees".

Convention:
    token k covers the square of `layout.size[k]` level-0 pixels a side centred at
    (`layout.cx[k]`, `layout.cy[k]`) ((0, 0) the image's top-left corner); its P x P samples
    sit at the centres of a P x P grid over that square (as `tokens.comp` takes them). An output
    pixel belongs to the token whose square holds the pixel's centre (x0 <= x + 0.5 < x1, edges
    half-open, so abutting squares never share a pixel) and takes that token's grid
    interpolated bilinearly at the pixel centre, clamped to the grid's outer sample centres
    within the token (never blended across tokens). Values are the tokens' own (unorm [0, 1]
    for 8/16-bit pyramids, linear light for sRGB ones); the result is float32 (C, H, W).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .limits import MAX_OUTPUT_PIXELS, check_pixels

__all__ = ["reconstruct", "covering_tokens"]

EDGE_SNAP = 1e-6  # pixels: how close to a pixel centre a token edge counts as on it


def _layout_arrays(layout: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, tuple[int, int]]:
    missing = [name for name in ("cx", "cy", "size", "patch", "image_size") if not hasattr(layout, name)]
    if missing:
        raise TypeError(f"layout must be a glmip.TokenLayout (cx, cy, size, patch, image_size); "
                        f"{type(layout).__name__} lacks {', '.join(missing)}")
    cx, cy, size = (np.asarray(getattr(layout, name), np.float64).reshape(-1) for name in ("cx", "cy", "size"))
    if not (cx.shape == cy.shape == size.shape):
        raise ValueError(f"layout.cx, cy and size must have one value per token, got lengths "
                         f"{cx.shape[0]}, {cy.shape[0]}, {size.shape[0]}")
    if not (np.isfinite(cx).all() and np.isfinite(cy).all() and np.isfinite(size).all()) or (size <= 0).any():
        raise ValueError("layout centres and sizes must be finite and sizes positive")
    width, height = (int(v) for v in layout.image_size)
    if width < 1 or height < 1:
        raise ValueError(f"layout.image_size must be positive (width, height), got {layout.image_size}")
    return cx, cy, size, int(layout.patch), (width, height)


def _output_size(size: Any, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height), two positive ints, got {size!r}") from None
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (width, height))
    if not ok:
        raise ValueError(f"size must be (width, height), two positive ints, got {size!r}")
    return int(width), int(height)


def covering_tokens(layout: Any, size: tuple[int, int] | None = None, *, device: Any = "cpu") -> torch.Tensor:
    """Which token covers each output pixel: int64 (H, W), H x W = `size` (default the layout's image size).

    Pixel (x, y) of a (W, H) output has its centre at ((x + 0.5) W0 / W, (y + 0.5) H0 / H) in
    level-0 pixels (W0 x H0 = `layout.image_size`) and belongs to the token whose square holds
    that point. Raises ValueError when some pixel is covered by no token or by more than one.
    Vectorised: every token's pixel rectangle is enumerated at once (no Python loop over tokens).
    """
    cx, cy, side, _, (width0, height0) = _layout_arrays(layout)
    width, height = _output_size(size, (width0, height0))
    sx, sy = width / width0, height / height0
    half = side / 2

    def span(centre: np.ndarray, scale: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
        # pixel i is inside when lo <= (i + 0.5) / scale < hi,
        # i.e. ceil(lo * scale - 0.5) <= i < ceil(hi * scale - 0.5);
        # edges within EDGE_SNAP of a pixel centre count as on it, so that abutting tokens whose shared edge
        # is computed with different rounding (cx - size / 2 vs cx' + size' / 2) still neither gap nor overlap
        first = np.clip(np.ceil((centre - half) * scale - 0.5 - EDGE_SNAP), 0, limit).astype(np.int64)
        end = np.clip(np.ceil((centre + half) * scale - 0.5 - EDGE_SNAP), 0, limit).astype(np.int64)
        return first, np.maximum(end - first, 0)

    x0, nx = span(cx, sx, width)
    y0, ny = span(cy, sy, height)
    dev = torch.device(device)
    counts = torch.from_numpy(nx * ny).to(dev)
    owner = torch.repeat_interleave(torch.arange(len(cx), device=dev), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(owner.numel(), device=dev) - start[owner]
    nx_t, x0_t, y0_t = (torch.from_numpy(a).to(dev) for a in (nx, x0, y0))
    flat = (y0_t[owner] + local // nx_t[owner]) * width + x0_t[owner] + local % nx_t[owner]
    hits = torch.bincount(flat, minlength=width * height)
    gaps, overlaps = int((hits == 0).sum()), int((hits > 1).sum())
    if gaps or overlaps:
        raise ValueError(f"the layout must cover every pixel exactly once: at {width}x{height}, {gaps} pixel(s) "
                         f"are covered by no token and {overlaps} by more than one")
    index = torch.empty(width * height, dtype=torch.int64, device=dev)
    index[flat] = owner
    return index.reshape(height, width)


def reconstruct(tokens: Any, layout: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The image `tokens` encode: float32 (C, H, W) on the tokens' device, each pixel from its covering token.

    tokens: (N, C, P, P) as `Pyramid.tokens(layout)` returns them (torch or numpy); layout: the
    `TokenLayout` they were sampled from (N tokens, `layout.patch` = P). size: (width, height)
    of the result, default `layout.image_size`; other sizes resample the same continuous
    picture at their own pixel centres. Every pixel takes its covering token's P x P grid
    interpolated bilinearly at the pixel's centre, grid samples at the token's cell centres,
    clamped at the token's border (see the module's convention). A constant token gives exactly
    that constant; a level-0 token at integer position gives its samples back exactly.
    Raises TypeError/ValueError for tokens that are not (N, C, P, P) matching the layout, and
    for layouts that leave a pixel uncovered or cover it twice.
    """
    if isinstance(tokens, np.ndarray):
        tokens = torch.from_numpy(tokens)
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch tensor or numpy array (N, C, P, P), got {type(tokens).__name__}")
    cx, cy, side, patch, (width0, height0) = _layout_arrays(layout)
    if tokens.ndim != 4 or tokens.shape[2] != tokens.shape[3]:
        raise ValueError(f"tokens must have shape (N, C, P, P), got {tuple(tokens.shape)}")
    n, channels, p, _ = tokens.shape
    if n != len(cx):
        raise ValueError(f"{n} tokens for a layout of {len(cx)}")
    if p != patch:
        raise ValueError(f"tokens are {p}x{p} but the layout's patch is {patch}")
    if channels < 1:
        raise ValueError(f"tokens have no channels: shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise TypeError(f"tokens must be floating point, got {tokens.dtype}")
    if tokens.device.type == "meta":
        raise TypeError("tokens are a meta tensor, which holds no data; pass a CPU or CUDA tensor")
    if not bool(torch.isfinite(tokens).all()):
        raise ValueError("tokens hold NaN or infinite values")
    width, height = _output_size(size, (width0, height0))
    check_pixels((width, height), "the reconstruction size", MAX_OUTPUT_PIXELS,
                 "ask for a smaller size or raise glmip.limits.MAX_OUTPUT_PIXELS")
    device = tokens.device
    owner = covering_tokens(layout, (width, height), device=device)  # (H, W)

    # Grid coordinate of every pixel centre inside its token, in samples: 0 at the first sample centre.
    # Per token: its left/top edge and samples per level-0 pixel; float32 is exact for power-of-two sides
    # at integer positions (level-0 tokens give integer coordinates, so their samples come back as they are).
    token_left = torch.from_numpy(cx - side / 2).to(device, torch.float32)[owner]
    token_top = torch.from_numpy(cy - side / 2).to(device, torch.float32)[owner]
    density = torch.from_numpy(p / side).to(device, torch.float32)[owner]
    px = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) * (width0 / width)
    py = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) * (height0 / height)
    gx = ((px.to(torch.float32)[None, :] - token_left) * density - 0.5).clamp_(0, p - 1)
    gy = ((py.to(torch.float32)[:, None] - token_top) * density - 0.5).clamp_(0, p - 1)
    ix0, iy0 = gx.long(), gy.long()  # gx, gy >= 0: truncation is floor
    ix1, iy1 = (ix0 + 1).clamp_(max=p - 1), (iy0 + 1).clamp_(max=p - 1)
    fx = (gx - ix0).unsqueeze_(-1)
    fy = (gy - iy0).unsqueeze_(-1)

    samples = tokens.to(torch.float32).permute(0, 2, 3, 1).reshape(n * p * p, channels)
    base = owner * (p * p)

    def at(iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
        return samples[base + iy * p + ix]  # (H, W, C)

    # lerp form: equal neighbours give exactly their value, so constant tokens reconstruct exactly
    top = torch.lerp(at(iy0, ix0), at(iy0, ix1), fx)
    bottom = torch.lerp(at(iy1, ix0), at(iy1, ix1), fx)
    return torch.lerp(top, bottom, fy).permute(2, 0, 1).contiguous()
