"""Rasterized homography warps: a vertex + fragment program draws the warped image into an offscreen
framebuffer, so the rasterizer's own derivatives choose every pixel's level and footprint (the
texture unit's automatic LOD), and the result comes back to torch through the bridge.

Why: torch `grid_sample` and kornia `warp_perspective` sample one level, so a strongly minifying
warp aliases (moire, broken thin lines). Here each output pixel filters the mip pyramid over its own
footprint: "trilinear" (one level per pixel, from the longer footprint axis), "anisotropic"
(footprint assembly along the major axis in the shader, shaders/footprint.glsl, identical on every
GPU) or "anisotropic_hw" (the texture unit's own anisotropic filter, vendor-defined; weak on llvmpipe).

Convention:
    `matrix` H (3x3, row-major, acting on column vectors) maps OUTPUT pixel positions to INPUT pixel
    positions (the inverse map, as one samples): (x_in, y_in, w) = H @ (x_out, y_out, 1), then
    divide by w. Positions are continuous pixel coordinates with the origin at the image's top-left
    CORNER, x to the right, y down, and pixel (i, j)'s centre at (i + 0.5, j + 0.5) -- in both the
    output and the input. So uv = (x_in / width, y_in / height), exactly `Pyramid.sample`'s uv. An
    output pixel whose source has w <= 0 (behind the projection centre) is 0.
    kornia's `warp_perspective(src, M, dsize)` (align_corners=True) maps src -> dst with pixel centres
    at integers: M = S @ inv(H) @ inv(S) with S = translate(-0.5, -0.5) (`kornia_matrix`). torch
    `grid_sample(align_corners=False)` takes grid = 2 * (x_in / width, y_in / height) - 1 at every
    output pixel centre.
    Output: float32 (B, C, height, width), row 0 the top; values as the texture returns them (8/16-bit
    images normalised to [0, 1], float images their own values, sRGB pyramids decoded to linear).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np

from .bridge import texture_to_tensor
from .gl.programs import WRAP_MODES
from .limits import MAX_LEVEL, MAX_OUTPUT_PIXELS, check_pixels, finite_float
from .sampling import SAMPLER_FILTERS, Filter, parse_enum

if TYPE_CHECKING:
    import torch

    from .gl.texture import MipTexture as Pyramid

__all__ = ["Border", "warp", "tilt_homography", "warp_coordinates", "kornia_matrix", "grid_sample_grid",
           "as_homographies", "framebuffer_limit"]

TILT_DISTANCE = 1.5  # camera to plane centre in plane heights, as viewer/tilt.py
_SINGULAR = 1e-12  # |det H| below this times max|H_ij|^3 counts as singular


class Border(str, enum.Enum):
    CLAMP = "clamp"  # the edge texel repeats outward
    ZERO = "zero"  # 0 outside the image (GL_CLAMP_TO_BORDER); filtering blends it in at the edge
    REPEAT = "repeat"
    MIRROR = "mirror"


_BORDER_WRAP = {Border.CLAMP: WRAP_MODES["clamp"], Border.ZERO: WRAP_MODES["zero"],
                Border.REPEAT: WRAP_MODES["repeat"], Border.MIRROR: WRAP_MODES["mirror"]}


def as_homographies(matrix: Any, size: tuple[int, int] | None = None,
                    image_size: tuple[int, int] | None = None) -> np.ndarray:
    """`matrix` (3, 3) or (B, 3, 3), numpy / torch / nested lists, as float64 (B, 3, 3); rejects
    non-finite and singular matrices, naming the batch index.

    Singular means |det N| <= 1e-12 max|N_ij|^3 for N = H / max|H_ij| taken between the unit squares of
    the output (`size`) and the input (`image_size`) where they are given: scale-free, so 1e150 x H is H,
    and a wide output's large translation column is not mistaken for a degenerate map."""
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    array = np.asarray(matrix)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"matrix must hold numbers, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (3, 3) or array.shape[0] == 0:
        raise ValueError(f"matrix must be a 3x3 homography or a (B, 3, 3) batch of them, got shape {array.shape}")
    array = array.astype(np.float64)
    to_unit = np.diag([1.0 / image_size[0], 1.0 / image_size[1], 1.0]) if image_size else np.eye(3)
    from_unit = np.diag([float(size[0]), float(size[1]), 1.0]) if size else np.eye(3)
    for index, h in enumerate(array):
        if not np.isfinite(h).all():
            raise ValueError(f"matrix {index} holds NaN or infinite values: {h.tolist()}")
        scale = float(np.abs(h).max())
        normal = to_unit @ (h / scale) @ from_unit if scale > 0.0 else h
        normal_scale = float(np.abs(normal).max())
        if scale == 0.0 or not normal_scale > 0.0 or abs(float(np.linalg.det(normal / normal_scale))) <= _SINGULAR:
            raise ValueError(f"matrix {index} is singular; a homography must be invertible: {h.tolist()}")
    return array


def check_size(size: Any, limit: int) -> tuple[int, int]:
    """`size` = (width, height) as two ints in 1..limit."""
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)):
        raise TypeError(f"size must be (width, height), two ints, got {size!r}")
    width, height = int(size[0]), int(size[1])
    if not (1 <= width <= limit and 1 <= height <= limit):
        raise ValueError(f"size must be within 1..{limit} (this device's framebuffer limit) per axis, "
                         f"got {width}x{height}")
    return width, height


def framebuffer_limit(context: Any) -> int:
    """The largest framebuffer side this context renders: the least of viewport, framebuffer and texture limits."""
    info = context.gl.info
    limits = [int(v) for v in info.get("GL_MAX_VIEWPORT_DIMS", (context.max_texture_size,) * 2)]
    limits += [int(info.get(key, context.max_texture_size)) for key in
               ("GL_MAX_FRAMEBUFFER_WIDTH", "GL_MAX_FRAMEBUFFER_HEIGHT", "GL_MAX_RENDERBUFFER_SIZE")]
    return min(limits + [context.max_texture_size])


def kornia_matrix(matrix: np.ndarray) -> np.ndarray:
    """glmip's H (output pixel -> input pixel, centres at i + 0.5) as kornia's `warp_perspective` M
    (input -> output, centres at integers, align_corners=True), for one (3, 3) or a (B, 3, 3) batch."""
    shift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    return shift @ np.linalg.inv(np.asarray(matrix, np.float64)) @ unshift


def grid_sample_grid(matrix: np.ndarray, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """torch `grid_sample(align_corners=False)`'s grid (h, w, 2) for glmip's H: the normalised input
    position of every output pixel centre. Pixels whose source has w <= 0 get a grid far outside (2 of
    the normalised range away), which padding_mode="zeros" turns into 0 as glmip does."""
    uv, _, valid = warp_coordinates(matrix, size, image_size)
    grid = uv * 2.0 - 1.0
    return np.where(valid[..., None], grid, 3.0).astype(np.float32)


def warp_coordinates(matrix: np.ndarray, size: tuple[int, int], image_size: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one H (3, 3): uv (h, w, 2), its exact (analytic) gradients (h, w, 2, 2) with [..., 0, :] =
    d(uv)/dx and [..., 1, :] = d(uv)/dy per output pixel, and the mask (h, w) of pixels with w > 0, at
    every output pixel centre; float64. What `Pyramid.sample(uv, grad=...)` takes for the same warp
    (the compute path)."""
    h_matrix = np.asarray(matrix, np.float64)
    width, height = size
    x = np.arange(width, dtype=np.float64)[None, :] + 0.5
    y = np.arange(height, dtype=np.float64)[:, None] + 0.5
    q = [h_matrix[r, 0] * x + h_matrix[r, 1] * y + h_matrix[r, 2] for r in range(3)]
    valid = q[2] > 0
    w = np.where(valid, q[2], 1.0)
    scale = np.array(image_size, np.float64)
    uv = np.stack([q[0] / w, q[1] / w], axis=-1) / scale
    grad = np.empty((height, width, 2, 2))
    for axis in range(2):  # d/dx (column 0 of H), d/dy (column 1)
        for c in range(2):
            grad[..., axis, c] = (h_matrix[c, axis] * w - q[c] * h_matrix[2, axis]) / (w * w) / scale[c]
    return uv, grad, np.broadcast_to(valid, (height, width))


def tilt_homography(image_size: tuple[int, int], size: tuple[int, int], tilt: float, zoom: float = 1.0,
                    pan: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """H (3, 3) of the image as a plane tilted by `tilt` degrees, seen by a pinhole camera into an output
    of `size` = (width, height): viewer/tilt.py's geometry (the plane has the image's aspect, height 1,
    rotated about its horizontal centre line with the top edge away, camera at distance 1.5, filling 95%
    of the view at zoom 1). Output -> input pixels, as `warp` takes it."""
    tilt = finite_float(tilt, "tilt (degrees)", 0.0)
    if not tilt < 90.0:
        raise ValueError(f"tilt must be within [0, 90) degrees, got {tilt}")
    zoom = finite_float(zoom, "zoom", 0.0, exclusive_minimum=True)
    try:
        pan = (finite_float(pan[0], "pan x"), finite_float(pan[1], "pan y"))
    except (TypeError, IndexError, KeyError):
        raise TypeError(f"pan must be (x, y), two numbers, got {pan!r}") from None
    image_width, image_height = _positive_pair(image_size, "image_size")
    width, height = _positive_pair(size, "size")
    aspect = image_width / image_height
    theta = math.radians(tilt)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    near, far = TILT_DISTANCE - 0.5 * sin_t, TILT_DISTANCE + 0.5 * sin_t
    focal = 0.95 * min(width / (aspect / near), height / (0.5 * cos_t * (1 / near + 1 / far))) * zoom
    centre = 0.5 * focal * (0.5 * cos_t / near - 0.5 * cos_t / far)
    # screen (x', y') relative to the view centre -> (u w, v w, w) with w = focal cos + y' sin
    to_screen = np.array([[1.0, 0.0, -width / 2 - pan[0]], [0.0, 1.0, -height / 2 - pan[1] + centre],
                          [0.0, 0.0, 1.0]])
    plane = np.array([[TILT_DISTANCE * cos_t / aspect, 0.5 * sin_t, 0.5 * focal * cos_t],
                      [0.0, TILT_DISTANCE + 0.5 * sin_t, 0.5 * focal * cos_t],
                      [0.0, sin_t, focal * cos_t]])
    to_pixels = np.diag([float(image_width), float(image_height), 1.0])
    return to_pixels @ plane @ to_screen


def _positive_pair(value: Any, what: str) -> tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)):
        raise TypeError(f"{what} must be (width, height), two positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _is_pyramid(value: Any) -> bool:
    """Whether `value` is a mip texture glmip can sample (a `glmip.Pyramid`, or any `MipTexture`)."""
    return all(hasattr(value, name) for name in ("texture", "sizes", "context", "channels", "_check_open"))


def _as_pyramids(pyramid: Any) -> list[Pyramid]:
    items = [pyramid] if _is_pyramid(pyramid) else list(pyramid) if isinstance(pyramid, Sequence) else None
    if not items or not all(_is_pyramid(p) for p in items):
        raise TypeError(f"warp takes a glmip.Pyramid or a non-empty sequence of them, got {type(pyramid).__name__}")
    for p in items:
        p._check_open()
    if len({p.context for p in items}) != 1 or len({p.channels for p in items}) != 1:
        raise ValueError("a batch of pyramids must share one Context and one channel count, got "
                         f"{sorted({p.channels for p in items})} channels")
    return items


def warp(pyramid: Pyramid | Sequence[Pyramid], matrix: Any, size: tuple[int, int], *,
         filter: str | Filter = "anisotropic", anisotropy: float = 16, lod_bias: float = 0.0,
         border: str | Border = "clamp", out: torch.Tensor | None = None) -> torch.Tensor:
    """The image(s) warped through homography `matrix` into `size` = (width, height): torch float32
    (B, C, height, width), one draw of a screen quad per image into an offscreen framebuffer.

    `pyramid`: one Pyramid or a sequence of B (same context and channels); `matrix`: (3, 3) or (B, 3, 3),
    output pixel -> input pixel (see the module's Convention); one side of the batch may be 1 and is
    repeated. `filter`: "anisotropic" (shader footprint assembly on the rasterizer's derivatives, up to
    `anisotropy` taps), "anisotropic_hw" (the texture unit's, sampler anisotropy `anisotropy`),
    "trilinear", "bilinear" (level 0 only) or "nearest". `lod_bias` shifts every level. `border`:
    "clamp", "zero", "repeat", "mirror". `out`: a contiguous float32 tensor of the result's shape (CPU
    or CUDA) to fill and return.
    """
    import torch

    pyramids = _as_pyramids(pyramid)
    ctx = pyramids[0].context
    width, height = check_size(size, framebuffer_limit(ctx))
    how = "warp into a smaller size, or in tiles (compose a translation into the matrix)"
    # the framebuffer is float RGBA whatever the image's channels: 16 bytes a pixel
    check_pixels((width, height), "the warp's output", MAX_OUTPUT_PIXELS, how + " or raise "
                 "glmip.limits.MAX_OUTPUT_PIXELS")
    shared = {(p.width, p.height) for p in pyramids}
    homographies = as_homographies(matrix, (width, height), next(iter(shared)) if len(shared) == 1 else None)
    mode = parse_enum(Filter, filter, "filter")
    border_mode = parse_enum(Border, border, "border")
    max_aniso = float(ctx.gl.max_anisotropy)
    if (isinstance(anisotropy, bool) or not isinstance(anisotropy, (int, float, np.integer, np.floating))
            or not 1.0 <= float(anisotropy) <= max_aniso):
        raise ValueError(f"anisotropy must be within 1..{max_aniso:g} on this device, got {anisotropy!r}")
    lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
    if mode is Filter.BILINEAR and lod_bias != 0.0:
        raise ValueError("filter 'bilinear' samples level 0 only; lod_bias needs 'trilinear' or an anisotropic filter")
    n_images, n_matrices = len(pyramids), homographies.shape[0]
    if n_images != n_matrices and 1 not in (n_images, n_matrices):
        raise ValueError(f"the batch of matrices ({n_matrices}) does not match the batch of images ({n_images}); "
                         "pass one matrix, one image, or as many of each")
    batch = max(n_images, n_matrices)
    channels = pyramids[0].channels
    shape = (batch, channels, height, width)
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.device.type not in ("cpu", "cuda"):
            raise TypeError(f"out must be a CPU or CUDA torch tensor, got "
                            f"{getattr(out, 'device', type(out).__name__)}")
        if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}, got "
                             f"{tuple(out.shape)} {out.dtype}")
    result = out if out is not None else torch.empty(shape, dtype=torch.float32)

    defines: dict[str, object] = {}
    if mode is Filter.ANISOTROPIC:
        defines["SHADER_ANISO"] = 1
        if border_mode is Border.ZERO:
            defines["ZERO_BORDER"] = 1
    elif mode is Filter.BILINEAR:
        defines["BILINEAR"] = 1
    program = ctx.raster_program("warp", **defines)
    hw_aniso = float(anisotropy) if mode is Filter.ANISOTROPIC_HW else 1.0
    sampler = ctx.sampler(*SAMPLER_FILTERS[mode], _BORDER_WRAP[border_mode], hw_aniso)
    gl = ctx.gl
    # rebound before ours is released; a framebuffer someone else released while bound is not rebound
    current = gl.fbo
    released = current is None or type(getattr(current, "mglo", None)).__name__ == "InvalidObject"
    previous = gl.detect_framebuffer(0) if released else current
    if released:  # moderngl would rebind the deleted name while making ours (GL_INVALID_OPERATION)
        previous.use()
    host = torch.empty((height, width, 4), dtype=torch.float32)
    resources: list[Any] = []
    try:
        target = gl.texture((width, height), 4, dtype="f4")
        resources.append(target)
        framebuffer = gl.framebuffer(color_attachments=[target])
        resources.append(framebuffer)
        quad = gl.vertex_array(program, [])
        resources.append(quad)
        framebuffer.use()
        program["image"] = 0
        for name, value in (("lod_bias", float(lod_bias)), ("max_anisotropy", float(anisotropy))):
            if name in program:
                program[name] = value
        ctx.raw.glBindSampler(0, sampler)
        for b in range(batch):
            source = pyramids[b % n_images]
            source.texture.use(0)
            program["texture_size"] = (float(source.width), float(source.height))
            h = homographies[b % n_matrices]
            h = h / np.abs(h).max()  # the same map (homogeneous), in float32's range
            program["homography"] = tuple(float(v) for v in h.T.ravel())  # column-major
            quad.render(moderngl.TRIANGLE_STRIP, vertices=4)
            texture_to_tensor(ctx, target, out=host)
            result[b].copy_(host[..., :channels].permute(2, 0, 1))
    finally:
        ctx.raw.glBindSampler(0, 0)
        previous.use()
        for resource in reversed(resources):
            resource.release()
    return result
