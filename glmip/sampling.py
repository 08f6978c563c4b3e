"""Point and LOD sampling of a pyramid on the GPU: one compute dispatch over N points.

Convention:
    uv in [0, 1]^2 with (0, 0) the image's top-left corner and texel centres at
    ((i + 0.5) / w, (j + 0.5) / h), as OpenGL samples; lod in levels (0 = full resolution,
    fractional allowed); grad[:, 0] = d(uv)/dx and grad[:, 1] = d(uv)/dy; results are
    float32 (N, C), unorm formats normalised to [0, 1], sRGB textures decoded to linear.
"""

from __future__ import annotations

import enum
import numbers
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np

from .bridge import buffer_to_tensor
from .gl.programs import (
    BILINEAR_BASE,
    NEAREST_MIPMAP,
    TRILINEAR,
    WRAP_MODES,
    bound_texture,
    bound_textures,
    dispatch_flat,
    encode_texels,
    scratch,
    set_if_used,
)
from .limits import (
    MAX_LEVEL,
    MAX_OUTPUT_PIXELS,
    MAX_PATCH,
    MAX_SAMPLE_POINTS,
    MAX_TOKEN_SAMPLES,
    check_count,
    check_pyramid,
    check_storage,
    check_texture_side,
    finite_float,
    positive_int,
    size_pair,
)
from .maps import as_lod_map, default_max_level
from .maps import lod_map as relevance_to_lod

if TYPE_CHECKING:
    from .gl.texture import MipTexture

__all__ = ["Filter", "Wrap", "sample", "tokens", "tokens_batch", "render", "parse_enum", "BATCH_TEXTURES",
           "images_per_dispatch_for", "SAMPLER_FILTERS"]


class Filter(str, enum.Enum):
    NEAREST = "nearest"  # nearest texel of the nearest level
    BILINEAR = "bilinear"  # level 0 only
    TRILINEAR = "trilinear"  # bilinear on the two levels around the LOD, blended
    ANISOTROPIC = "anisotropic"  # footprint assembly in the shader: same result on every GPU
    ANISOTROPIC_HW = "anisotropic_hw"  # the texture unit's own anisotropic filter (vendor-defined)


class Wrap(str, enum.Enum):
    CLAMP = "clamp"
    REPEAT = "repeat"
    MIRROR = "mirror"


SAMPLER_FILTERS = {
    Filter.NEAREST: NEAREST_MIPMAP,
    Filter.BILINEAR: BILINEAR_BASE,
    Filter.TRILINEAR: TRILINEAR,
    Filter.ANISOTROPIC: TRILINEAR,
    Filter.ANISOTROPIC_HW: TRILINEAR,
}
_LOCAL = 64
# Images one tokens dispatch binds together (GL guarantees 16 texture units in a compute shader).
BATCH_TEXTURES = 16


def parse_enum(kind: type[enum.Enum], value: Any, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"unknown {what} {value!r}; choose one of {names}") from None


def as_float_array(values: Any, what: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    """`values` (numpy, torch or nested lists) as a C-contiguous float32 array of shape (N, *shape_tail)."""
    if hasattr(values, "detach"):
        if values.device.type == "meta":
            raise TypeError(f"{what} is a meta tensor, which holds no data; pass a CPU or CUDA tensor")
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be numbers, got {type(values).__name__} {values!r}")
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be a float array, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        expected = "(N, " + ", ".join(map(str, shape_tail)) + ")" if shape_tail else "(N,)"
        raise ValueError(f"{what} must have shape {expected}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return array


def sample(pyramid: MipTexture, uv: Any, lod: Any = None, *, filter: str | Filter = "trilinear", grad: Any = None,
           anisotropy: float = 16, lod_bias: float = 0.0, wrap: str | Wrap = "clamp", out: str = "numpy") -> Any:
    """Sample `pyramid` at N points in one compute dispatch; returns (N, C) float32 (unorm normalised),
    numpy or, with out="torch", a torch tensor.

    uv: (N, 2) in [0, 1]^2, (0, 0) the image's top-left, texel centres at (i + 0.5) / w.
    lod: scalar or (N,) levels, fractional allowed (textureLod); or grad: (N, 2, 2) with
    grad[:, 0] = d(uv)/dx, grad[:, 1] = d(uv)/dy (textureGrad). filter: "nearest",
    "bilinear" (level 0 only), "trilinear", "anisotropic" (footprint assembly in the shader,
    up to `anisotropy` taps, identical on every GPU) or "anisotropic_hw" (the texture unit's
    own). lod_bias shifts every level; wrap: "clamp", "repeat" or "mirror".
    """
    check_pyramid(pyramid)
    mode = parse_enum(Filter, filter, "filter")
    wrap_mode = parse_enum(Wrap, wrap, "wrap mode")
    if out not in ("numpy", "torch"):
        raise ValueError(f"out must be 'numpy' or 'torch', got {out!r}")
    if hasattr(uv, "shape") and len(uv.shape) >= 1:
        check_count(int(uv.shape[0]), "the number of sample points", MAX_SAMPLE_POINTS,
                    "split the points into several calls or raise glmip.limits.MAX_SAMPLE_POINTS")
    points = as_float_array(uv, "uv", (2,))
    n = points.shape[0]
    check_count(n, "the number of sample points", MAX_SAMPLE_POINTS,
                "split the points into several calls or raise glmip.limits.MAX_SAMPLE_POINTS")
    check_storage(pyramid.context, n * 16, f"sampling {n} points", "split the points into several calls")
    lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
    anisotropy = finite_float(anisotropy, "anisotropy")
    if lod is not None and grad is not None:
        raise ValueError("pass either lod (explicit levels) or grad (uv gradients), not both")
    if mode is Filter.BILINEAR and (lod is not None or grad is not None or lod_bias != 0.0):
        raise ValueError("filter 'bilinear' samples level 0 only; use 'trilinear' with lod or grad for other levels")
    if mode in (Filter.ANISOTROPIC, Filter.ANISOTROPIC_HW) and grad is None:
        raise ValueError(f"filter {mode.value!r} needs grad, the (N, 2, 2) uv gradients that shape the footprint")
    max_aniso = float(pyramid.context.gl.max_anisotropy)
    if not 1.0 <= float(anisotropy) <= max_aniso:
        raise ValueError(f"anisotropy must be within 1..{max_aniso:g} on this device, got {anisotropy}")

    defines: dict[str, object] = {"CHANNELS": pyramid.channels}
    extra: np.ndarray | None = None
    if grad is not None:
        extra = as_float_array(grad, "grad", (2, 2)).reshape(n, 4)
        defines["SHADER_ANISO" if mode is Filter.ANISOTROPIC else "LOD_SOURCE_GRAD"] = 1
    elif mode is not Filter.BILINEAR:
        if lod is None or getattr(lod, "ndim", 1) == 0 or isinstance(lod, (numbers.Number, str, bytes)):
            scalar = 0.0 if lod is None else lod.item() if hasattr(lod, "item") else lod
            extra = np.full(n, finite_float(scalar, "lod", -MAX_LEVEL, MAX_LEVEL), np.float32)
        else:
            extra = as_float_array(lod, "lod", ())
        if extra.shape[0] != n:
            raise ValueError(f"lod must be a scalar or have one value per point ({n}), got {extra.shape[0]}")
        defines["LOD_SOURCE_LOD"] = 1

    ctx = pyramid.context
    result_shape = (n, pyramid.channels)
    if n == 0:
        if out == "torch":
            import torch

            return torch.empty(result_shape, dtype=torch.float32)
        return np.empty(result_shape, np.float32)
    hw_aniso = float(anisotropy) if mode is Filter.ANISOTROPIC_HW else 1.0
    sampler = ctx.sampler(*SAMPLER_FILTERS[mode], WRAP_MODES[wrap_mode.value], hw_aniso)
    program = ctx.program("sample.comp", **defines)
    gl = ctx.gl
    with scratch(ctx) as buffers:
        buffers.append(gl.buffer(points))
        if extra is not None:
            buffers.append(gl.buffer(extra))
        samples = gl.buffer(reserve=n * pyramid.channels * 4)
        buffers.append(samples)
        for binding, buffer in enumerate(buffers[:-1]):
            buffer.bind_to_storage_buffer(binding)
        samples.bind_to_storage_buffer(2)
        with bound_texture(ctx, pyramid.texture, sampler, program):
            program["point_count"] = n
            set_if_used(program, "lod_bias", float(lod_bias))
            set_if_used(program, "max_anisotropy", float(anisotropy))
            set_if_used(program, "texture_size", (float(pyramid.width), float(pyramid.height)))
            dispatch_flat(program, n, _LOCAL)
        gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
        if out == "torch":
            return buffer_to_tensor(samples, result_shape).tensor
        result = np.empty(result_shape, np.float32)
        samples.read_into(result)
        return result


def tokens(pyramid: MipTexture, layout: Any, patch: int | None = None, filter: str | Filter = "trilinear",
           lod_bias: float = 0.0, out: Any = None) -> Any:
    """Every token of `layout` as a patch x patch sample grid at its level: torch (N, C, patch, patch).

    One dispatch writes all tokens into one GL buffer, read back straight into the tensor's memory.
    `layout` is a `TokenLayout` (or anything with cx, cy, size, level arrays in level-0 pixels);
    levels may be fractional. `patch` defaults to the layout's. `out`: a float32 tensor of the
    result's shape to fill (CPU or CUDA), reused across calls. The one-image case of `tokens_batch`.
    """
    return tokens_batch([pyramid], [layout], patch, filter, lod_bias, out)


def _token_table(layout: Any, image_size: tuple[int, int], index: int) -> np.ndarray:
    table = np.ascontiguousarray(np.stack([np.asarray(layout.cx), np.asarray(layout.cy), np.asarray(layout.size),
                                           np.asarray(layout.level)], axis=1), dtype=np.float32)
    if not np.isfinite(table).all() or (table[:, 2] <= 0).any() or (np.abs(table[:, 3]) > MAX_LEVEL).any():
        raise ValueError(f"layout {index}: token centres, sizes and levels must be finite, sizes positive and "
                         f"levels within ±{MAX_LEVEL}")
    made_for = getattr(layout, "image_size", None)
    if made_for is not None and tuple(int(v) for v in made_for) != tuple(image_size):
        raise ValueError(f"layout {index} was made for an image of {made_for[0]}x{made_for[1]}, but its image is "
                         f"{image_size[0]}x{image_size[1]}; allocate with image_size=(width, height) of the image")
    return table


def images_per_dispatch_for(context: Any) -> int:
    """How many images one tokens dispatch binds together on this renderer. The shader picks each
    work group's texture in a switch; a GPU runs only the taken case (the index is uniform per work
    group), but llvmpipe runs its SIMD lanes through every case, so there each bound image multiplies
    the cost of every sample (measured: 256 tokens of 16² from each of 8 images of 256², all 8 in one
    dispatch 208 ms, 4 a dispatch 148 ms, one a dispatch 38 ms). Software renderers get one image a
    dispatch, GPUs `BATCH_TEXTURES` (not yet measured on a GPU)."""
    renderer = str(context.gl.info["GL_RENDERER"]).lower()
    return 1 if any(name in renderer for name in ("llvmpipe", "softpipe", "swrast", "lavapipe")) else BATCH_TEXTURES


def tokens_batch(pyramids: list[MipTexture], layouts: list[Any], patch: int | None = None,
                 filter: str | Filter = "trilinear", lod_bias: float = 0.0, out: Any = None,
                 images_per_dispatch: int | None = None) -> Any:
    """The tokens of several images, packed: torch (N_0 + N_1 + ..., C, patch, patch) float32.

    Up to `images_per_dispatch` images (at most `BATCH_TEXTURES`; default `images_per_dispatch_for`
    the context's renderer) are bound together and sampled in one dispatch; every dispatch writes
    into the one output buffer, which is read back once. Every image must have the same channel count
    and context; layout b must be made for image b's size (`TokenLayout.image_size`). `patch`
    defaults to the first layout's. `out`: a float32 tensor of the packed shape to fill.

    Convention: image b's tokens are rows [sum of N_<b, sum of N_<=b) of the result, in its layout's order.
    """
    import torch

    mode = parse_enum(Filter, filter, "filter")
    if mode not in (Filter.TRILINEAR, Filter.ANISOTROPIC):
        raise ValueError(f"tokens are sampled with 'trilinear' or 'anisotropic', got {mode.value!r}")
    if not isinstance(pyramids, (list, tuple)) or not isinstance(layouts, (list, tuple)):
        raise TypeError(f"tokens_batch takes a list of pyramids and a list of layouts, got "
                        f"{type(pyramids).__name__} and {type(layouts).__name__}")
    if len(pyramids) != len(layouts):
        raise ValueError(f"need one layout per image, got {len(pyramids)} images and {len(layouts)} layouts")
    if not pyramids:
        raise ValueError("an empty batch: pass at least one image and its layout")
    for index, pyramid in enumerate(pyramids):
        check_pyramid(pyramid)
        if not all(hasattr(layouts[index], name) for name in ("cx", "cy", "size", "level")):
            raise TypeError(f"layout {index} must be a glmip.TokenLayout (cx, cy, size, level arrays), got "
                            f"{type(layouts[index]).__name__}")
    patch = positive_int(getattr(layouts[0], "patch", None) if patch is None else patch, "patch")
    if patch > MAX_PATCH:
        raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} samples a side; "
                         "raise glmip.limits.MAX_PATCH to go past it")
    lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
    ctx, channels = pyramids[0].context, pyramids[0].channels
    group_size = images_per_dispatch_for(ctx) if images_per_dispatch is None else images_per_dispatch
    if not isinstance(group_size, int) or not 1 <= group_size <= BATCH_TEXTURES:
        raise ValueError(f"images_per_dispatch must be an int in 1..{BATCH_TEXTURES}, got {images_per_dispatch!r}")
    for index, pyramid in enumerate(pyramids):
        if pyramid.context is not ctx or pyramid.channels != channels:
            raise ValueError(f"image {index} has {pyramid.channels} channel(s) in context {pyramid.context!r}; "
                             f"a batch needs one context and one channel count ({channels}, as image 0)")
    counts = [len(np.asarray(layout.cx)) for layout in layouts]
    total = sum(counts)
    check_count(total * patch * patch, f"tokens x patch^2 ({total} x {patch}^2)", MAX_TOKEN_SAMPLES,
                "sample fewer or smaller tokens per call, or raise glmip.limits.MAX_TOKEN_SAMPLES")
    check_storage(ctx, total * channels * patch * patch * 4, f"{total} tokens of {patch}^2",
                  "sample fewer or smaller tokens per call")
    tables = [_token_table(layout, (p.width, p.height), i) for i, (p, layout) in
              enumerate(zip(pyramids, layouts, strict=True))]
    shape = (total, channels, patch, patch)
    if total == 0:
        return torch.empty(shape, dtype=torch.float32) if out is None else out
    defines: dict[str, object] = {"CHANNELS": channels}
    if mode is Filter.ANISOTROPIC:
        defines["SHADER_ANISO"] = 1
    gl = ctx.gl
    per_token = patch * patch
    first_token = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with scratch(ctx) as buffers:
        samples = gl.buffer(reserve=int(np.prod(shape)) * 4)
        buffers += [samples, gl.buffer(np.concatenate(tables))]
        for start in range(0, len(pyramids), group_size):
            group = range(start, min(start + group_size, len(pyramids)))
            ranges, sizes, group_image, first = [], [], [], 0
            for slot, b in enumerate(group):
                n_groups = -(-counts[b] * per_token // _LOCAL)
                ranges.append((first * _LOCAL, first_token[b], counts[b], 0))
                sizes.append((pyramids[b].width, pyramids[b].height, 0, 0))
                group_image += [slot] * n_groups
                first += n_groups
            if first == 0:
                continue
            program = ctx.program("tokens.comp", IMAGES=len(group), **defines)
            extra = [gl.buffer(np.asarray(group_image, np.uint32)), gl.buffer(np.asarray(ranges, np.uint32)),
                     gl.buffer(np.asarray(sizes, np.float32))]
            buffers += extra
            samples.bind_to_storage_buffer(2)
            buffers[1].bind_to_storage_buffer(0)
            for binding, buffer in zip((3, 4, 5), extra, strict=True):
                buffer.bind_to_storage_buffer(binding)
            sampler = ctx.sampler(*TRILINEAR, WRAP_MODES["clamp"])
            with bound_textures(ctx, [pyramids[b].texture for b in group], sampler, program, "images"):
                program["group_count"] = first
                program["patch_size"] = patch
                program["lod_bias"] = float(lod_bias)
                set_if_used(program, "max_anisotropy", float(ctx.gl.max_anisotropy))
                dispatch_flat(program, first * _LOCAL, _LOCAL)
        gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
        return buffer_to_tensor(samples, shape, out=out).tensor


def render(pyramid: MipTexture, lod_map: Any = None, *, relevance: Any = None, size: tuple[int, int] | None = None,
           max_level: float | None = None, gamma: float = 1.0, lod_bias: float = 0.0,
           region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0), return_lod: bool = False) -> Any:
    """The image composited at per-pixel levels in one pass (trilinear, seamless): the foveated picture.

    Each output pixel samples the LOD map bilinearly at its centre and the pyramid trilinearly at
    that level, so levels blend without seams. Pass a LOD map (h, w) of any resolution, or a
    relevance map in [0, 1] turned into one by `glmip.lod_map(relevance, max_level (default:
    min(5, last level)), gamma)`. `size` is the output's (width, height), default the image's;
    `region` = (u0, v0, u1, v1) the part of the image it covers (default all), so a zoomed-in view
    renders only what it shows. Returns HxWxC in the image's dtype, and with `return_lod` also the
    level each output pixel used (h, w) float32.
    """
    check_pyramid(pyramid)
    if (lod_map is None) == (relevance is None):
        raise ValueError("pass exactly one of lod_map or relevance")
    how = "render a smaller size, or a region of the image in tiles (region=)"
    width, height = size_pair((pyramid.width, pyramid.height) if size is None else size, "size",
                              MAX_OUTPUT_PIXELS, how + ", or raise glmip.limits.MAX_OUTPUT_PIXELS")
    check_storage(pyramid.context, width * height * 16, f"rendering {width}x{height}", how)
    lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
    if relevance is not None:
        lod_map = relevance_to_lod(relevance, gamma=gamma,
                                   max_level=default_max_level(pyramid.levels) if max_level is None else max_level)
    lods = as_lod_map(lod_map)
    check_texture_side(pyramid.context, (lods.shape[1], lods.shape[0]), "the LOD map")
    try:
        region = tuple(float(v) for v in region)
    except (TypeError, ValueError):
        raise TypeError(f"region must be four numbers (u0, v0, u1, v1), got {region!r}") from None
    if len(region) != 4 or not all(np.isfinite(region)) or not (region[0] < region[2] and region[1] < region[3]):
        raise ValueError(f"region must be (u0, v0, u1, v1) with u0 < u1 and v0 < v1, got {region!r}")
    ctx = pyramid.context
    gl = ctx.gl
    channels, dtype = pyramid.channels, pyramid.dtype
    render_program = ctx.program("render.comp")
    image = np.empty((height, width, channels), dtype)
    used = np.empty((height, width), np.float32)
    with scratch(ctx) as resources:
        lod_texture = gl.texture((lods.shape[1], lods.shape[0]), 1, lods, dtype="f4")
        resources.append(lod_texture)
        lod_texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
        lod_texture.repeat_x = lod_texture.repeat_y = False
        colour = gl.buffer(reserve=width * height * 16)
        lod_out = gl.buffer(reserve=width * height * 4)
        packed = gl.buffer(reserve=-(-image.nbytes // 4) * 4)
        resources += [colour, lod_out, packed]
        with bound_texture(ctx, pyramid.texture, ctx.sampler(*TRILINEAR, WRAP_MODES["clamp"]), render_program):
            lod_texture.use(1)
            render_program["lod_map"] = 1
            render_program["size"] = (width, height)
            render_program["region"] = region
            render_program["lod_bias"] = float(lod_bias)
            colour.bind_to_storage_buffer(0)
            lod_out.bind_to_storage_buffer(1)
            render_program.run(-(-width // 16), -(-height // 16))
        gl.memory_barrier(moderngl.SHADER_STORAGE_BARRIER_BIT)
        encode_texels(ctx, colour, packed, width * height, dtype, channels, pyramid.srgb)
        gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
        packed.read_into(image, size=image.nbytes)
        lod_out.read_into(used)
    return (image, used) if return_lod else image
