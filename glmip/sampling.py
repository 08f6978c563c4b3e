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
    bound_array,
    bound_texture,
    dispatch_flat,
    encode_texels,
    scratch,
    set_if_used,
)
from .layout import LAYOUT_ARRAYS
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

__all__ = ["Filter", "Wrap", "sample", "tokens", "tokens_batch", "render", "parse_enum", "SAMPLER_FILTERS"]


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

    One dispatch writes all tokens into the context's token buffer, read back straight into the
    tensor's memory. `layout` is a `TokenLayout` (or anything with cx, cy, size, level arrays in
    level-0 pixels); levels may be fractional. `patch` defaults to the layout's. `out`: a float32
    tensor of the result's shape to fill (CPU or CUDA), reused across calls. The one-image case of
    `tokens_batch`.
    """
    return tokens_batch([pyramid], [layout], patch, filter, lod_bias, out)


def _images_of(source: Any) -> list[tuple[Any, int, tuple[int, int]]]:
    """(array texture, layer, (width, height)) of every image of `source`: a `PyramidBatch` or a list
    of `Pyramid`s (each a layer of some batch)."""
    if hasattr(source, "array_of") and hasattr(source, "arrays"):
        source._check_open()
        return [(*source.array_of(b), size) for b, size in enumerate(source.image_sizes)]
    if not isinstance(source, (list, tuple)):
        raise TypeError(f"tokens_batch takes a glmip.PyramidBatch or a list of pyramids, got {type(source).__name__}")
    images = []
    for index, pyramid in enumerate(source):
        check_pyramid(pyramid, f"pyramid {index}")
        if not hasattr(pyramid, "array") or not hasattr(pyramid, "layer"):
            raise TypeError(f"pyramid {index} must be a glmip.Pyramid (made by Context.pyramid or a PyramidBatch), "
                            f"got {type(pyramid).__name__}")
        images.append((pyramid.array, pyramid.layer, (pyramid.width, pyramid.height)))
    return images


def _token_tables(layouts: Any, sizes: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """All layouts' tokens as one (ΣN, 4) float32 table (cx, cy, size, level) and their counts (B,),
    validated at once: array lengths agree, values finite, sizes positive, levels within ±MAX_LEVEL,
    and layout b made for image b's size."""
    if not isinstance(layouts, (list, tuple)):
        raise TypeError(f"layouts must be a list of glmip.TokenLayout, one per image, got {type(layouts).__name__}")
    if len(layouts) != len(sizes):
        raise ValueError(f"need one layout per image, got {len(sizes)} images and {len(layouts)} layouts")
    columns: list[list[np.ndarray]] = [[], [], [], []]
    counts = np.empty(len(layouts), np.int64)
    checked: dict[int, tuple[list[np.ndarray], tuple[int, ...] | None]] = {}  # a layout shared by images once
    for index, layout in enumerate(layouts):
        known = checked.get(id(layout))
        if known is not None:
            arrays, made_for = known
            if made_for is not None and made_for != tuple(sizes[index]):
                raise ValueError(f"layout {index} was made for an image of {made_for[0]}x{made_for[1]}, but its "
                                 f"image is {sizes[index][0]}x{sizes[index][1]}; allocate with image_size=(width, "
                                 "height) of the image")
            counts[index] = arrays[0].shape[0]
            for column, array in zip(columns, arrays, strict=True):
                column.append(array)
            continue
        if not all(hasattr(layout, name) for name in LAYOUT_ARRAYS):
            raise TypeError(f"layout {index} must be a glmip.TokenLayout (cx, cy, size, level arrays), got "
                            f"{type(layout).__name__}")
        arrays = [np.asarray(getattr(layout, name)) for name in LAYOUT_ARRAYS]
        if any(a.ndim != 1 or a.shape != arrays[0].shape or a.dtype.kind not in "fiu" for a in arrays):
            found = ", ".join(f"{n} {a.shape} {a.dtype}" for n, a in zip(LAYOUT_ARRAYS, arrays, strict=True))
            raise ValueError(f"layout {index}: cx, cy, size and level must be 1-D number arrays of one length, got "
                             f"{found}")
        made_for = getattr(layout, "image_size", None)
        if made_for is not None and tuple(int(v) for v in made_for) != tuple(sizes[index]):
            raise ValueError(f"layout {index} was made for an image of {made_for[0]}x{made_for[1]}, but its image is "
                             f"{sizes[index][0]}x{sizes[index][1]}; allocate with image_size=(width, height) of the "
                             "image")
        checked[id(layout)] = (arrays, None if made_for is None else tuple(int(v) for v in made_for))
        counts[index] = arrays[0].shape[0]
        for column, array in zip(columns, arrays, strict=True):
            column.append(array)
    table = np.stack([np.concatenate(column).astype(np.float32) for column in columns], axis=1)
    bad = ~np.isfinite(table).all(axis=1) | (table[:, 2] <= 0) | (np.abs(table[:, 3]) > MAX_LEVEL)
    if bad.any():
        index = int(np.searchsorted(np.cumsum(counts), int(np.argmax(bad)), side="right"))
        raise ValueError(f"layout {index}: token centres, sizes and levels must be finite, sizes positive and "
                         f"levels within ±{MAX_LEVEL}")
    return np.ascontiguousarray(table), counts


def _checked_patch(patch: Any) -> int:
    patch = positive_int(patch, "patch")
    if patch > MAX_PATCH:
        raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} samples a side; "
                         "raise glmip.limits.MAX_PATCH to go past it")
    return patch


def tokens_batch(source: Any, layouts: Any, patch: int | None = None, filter: str | Filter = "trilinear",
                 lod_bias: float = 0.0, out: Any = None, device: Any = "cpu") -> Any:
    """The tokens of several images, packed: torch (N_0 + N_1 + ..., C, patch, patch) float32.

    `source`: a `PyramidBatch` (image b is its image b) or a list of `Pyramid`s. Tokens of the
    images that share an array texture (same-size images of one batch) are sampled in one dispatch
    through a `sampler2DArray` (each token names its layer and output row), so a batch costs one
    dispatch per distinct size; every dispatch writes into the context's token buffer (kept across
    calls, grown geometrically), which reaches `device` in one transfer (device to device through
    its CUDA registration where interop is available, else one read-back). Layout b must be made for
    image b's size (`TokenLayout.image_size`). `patch` defaults to the first layout's. `out`: a
    float32 tensor of the packed shape to fill (its device wins over `device`).

    Convention: image b's tokens are rows [sum of N_<b, sum of N_<=b) of the result, in its layout's order.
    """
    import torch

    from .bridge import check_destination, persistent_buffer_to_tensor

    mode = parse_enum(Filter, filter, "filter")
    if mode not in (Filter.TRILINEAR, Filter.ANISOTROPIC):
        raise ValueError(f"tokens are sampled with 'trilinear' or 'anisotropic', got {mode.value!r}")
    images = _images_of(source)
    if not images:
        raise ValueError("an empty batch: pass at least one image and its layout")
    if patch is not None:
        patch = _checked_patch(patch)
    table, counts = _token_tables(layouts, [size for _, _, size in images])
    patch = _checked_patch(getattr(layouts[0], "patch", None) if patch is None else patch)
    lod_bias = finite_float(lod_bias, "lod_bias", -MAX_LEVEL, MAX_LEVEL)
    first = images[0][0]
    ctx, channels = first.context, first.channels
    for index, (array, _, _) in enumerate(images):
        if array.context is not ctx or array.channels != channels:
            raise ValueError(f"image {index} has {array.channels} channel(s) in context {array.context!r}; "
                             f"a batch needs one context and one channel count ({channels}, as image 0)")
    total = int(counts.sum())
    check_count(total * patch * patch, f"tokens x patch^2 ({total} x {patch}^2)", MAX_TOKEN_SAMPLES,
                "sample fewer or smaller tokens per call, or raise glmip.limits.MAX_TOKEN_SAMPLES")
    nbytes = total * channels * patch * patch * 4
    check_storage(ctx, nbytes, f"{total} tokens of {patch}^2", "sample fewer or smaller tokens per call")
    shape = (total, channels, patch, patch)
    check_destination(out, shape, device)
    if total == 0:
        return torch.empty(shape, dtype=torch.float32) if out is None else out
    keys: dict[int, int] = {}
    array_index = np.fromiter((keys.setdefault(id(array), len(keys)) for array, _, _ in images), np.int64,
                              len(images))
    distinct = {keys[id(array)]: array for array, _, _ in images}
    per_token_array = np.repeat(array_index, counts)
    targets = np.stack([np.repeat(np.asarray([layer for _, layer, _ in images], np.uint32), counts),
                        np.arange(total, dtype=np.uint32)], axis=1)
    defines: dict[str, object] = {"CHANNELS": channels}
    if mode is Filter.ANISOTROPIC:
        defines["SHADER_ANISO"] = 1
    program = ctx.program("tokens.comp", **defines)
    gl = ctx.gl
    order = np.argsort(per_token_array, kind="stable")  # each array's tokens one run, for one offset each
    starts = np.searchsorted(per_token_array[order], np.arange(len(distinct) + 1))
    table_buffer = ctx.persistent_buffer("token_table", table.nbytes)
    table_buffer.write(np.ascontiguousarray(table[order]))
    targets_buffer = ctx.persistent_buffer("token_targets", targets.nbytes)
    targets_buffer.write(np.ascontiguousarray(targets[order]))
    samples = ctx.persistent_buffer("tokens", nbytes)
    sampler = ctx.sampler(*TRILINEAR, WRAP_MODES["clamp"])
    program["images"] = 0
    program["patch_size"] = patch
    program["lod_bias"] = float(lod_bias)
    set_if_used(program, "max_anisotropy", float(gl.max_anisotropy))
    table_buffer.bind_to_storage_buffer(0)
    targets_buffer.bind_to_storage_buffer(1)
    samples.bind_to_storage_buffer(2)
    for key, array in distinct.items():
        count = int(starts[key + 1] - starts[key])
        with bound_array(ctx, array.name, sampler):
            program["token_offset"] = int(starts[key])
            program["token_count"] = count
            program["texture_size"] = (float(array.width), float(array.height))
            dispatch_flat(program, count * patch * patch, _LOCAL)
    gl.memory_barrier(moderngl.BUFFER_UPDATE_BARRIER_BIT)
    return persistent_buffer_to_tensor(ctx, "tokens", shape, device=device, out=out).tensor


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
