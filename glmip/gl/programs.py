"""Running compute programs: dispatch shapes, texture/sampler binding scopes that unbind in
`finally`, scratch buffers released in `finally`, and the texel packer every stage shares.

Convention:
    a 1-D job of N invocations runs as a 2-D grid of work groups (x capped at 65535); shaders
    recover their index with common.glsl's `flat_invocation_index()`. Binding scopes leave no
    sampler bound to a unit when they exit, normally or by an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np

from . import raw
from .formats import texel_format

if TYPE_CHECKING:
    from .context import GLContext

__all__ = ["groups", "dispatch_flat", "bound_texture", "bound_array", "scratch", "set_if_used", "encode_texels",
           "TRILINEAR", "NEAREST_MIPMAP", "BILINEAR_BASE", "WRAP_MODES"]

# (min filter, mag filter) pairs of the samplers glmip uses.
TRILINEAR = (raw.GL_LINEAR_MIPMAP_LINEAR, raw.GL_LINEAR)
NEAREST_MIPMAP = (raw.GL_NEAREST_MIPMAP_NEAREST, raw.GL_NEAREST)
BILINEAR_BASE = (raw.GL_LINEAR, raw.GL_LINEAR)
WRAP_MODES = {"clamp": raw.GL_CLAMP_TO_EDGE, "repeat": raw.GL_REPEAT, "mirror": raw.GL_MIRRORED_REPEAT,
              "zero": raw.GL_CLAMP_TO_BORDER}  # zero: the sampler's default border colour (0, 0, 0, 0)


def groups(n: int, local: int) -> int:
    """Work groups of `local` invocations that cover `n`."""
    return (n + local - 1) // local


def dispatch_flat(program: moderngl.ComputeShader, invocations: int, local_size: int) -> None:
    """Run a 1-D job of `invocations` as a 2-D grid of work groups (x is capped at 65535)."""
    count = max(1, groups(invocations, local_size))
    program.run(min(count, 65535), groups(count, 65535))


@contextlib.contextmanager
def bound_texture(context: GLContext, texture: Any, sampler: int, program: Any, uniform: str = "image",
                  unit: int = 0) -> Iterator[None]:
    """Bind moderngl `texture` with GL sampler object `sampler` to `unit` as `program[uniform]`;
    the sampler is unbound from the unit when the scope exits, however it exits."""
    texture.use(unit)
    context.raw.glBindSampler(unit, sampler)
    try:
        program[uniform] = unit
        yield
    finally:
        context.raw.glBindSampler(unit, 0)


@contextlib.contextmanager
def bound_array(context: GLContext, name: int, sampler: int, unit: int = 0) -> Iterator[None]:
    """Bind the array texture of GL name `name` with sampler object `sampler` to `unit`; both are unbound
    when the scope exits, however it exits."""
    gl = context.raw
    gl.glBindTextureUnit(unit, name)
    gl.glBindSampler(unit, sampler)
    try:
        yield
    finally:
        gl.glBindSampler(unit, 0)
        gl.glBindTextureUnit(unit, 0)


@contextlib.contextmanager
def scratch(context: GLContext) -> Iterator[list[Any]]:
    """A list to append GL buffers/textures to; each is released when the scope exits."""
    resources: list[Any] = []
    try:
        yield resources
    finally:
        for resource in resources:
            resource.release()


def set_if_used(program: moderngl.ComputeShader, name: str, value: object) -> None:
    """Set a uniform the compiler kept (a variant may not use it)."""
    try:
        program[name] = value
    except KeyError:
        pass


def encode_texels(context: GLContext, source: moderngl.Buffer, packed: moderngl.Buffer, texels: int,
                  dtype: np.dtype, channels: int, srgb: bool) -> None:
    """Pack `texels` float RGBA texels of `source` into the bytes of a `dtype` x `channels` texture
    level in `packed` (encode.comp), ready for a pixel-unpack upload or a read-back.

    Convention: unorm values are rounded once, to nearest (x * scale + 0.5, floored); sRGB is
    encoded before rounding."""
    define = texel_format(dtype.name).encode_define
    if define is None:
        raise ValueError(f"encode.comp cannot pack {dtype.name} texels")
    program = context.program("encode.comp", **{define: 1, "CHANNELS": channels, "SRGB": int(srgb)})
    count = texels * channels
    source.bind_to_storage_buffer(0)
    packed.bind_to_storage_buffer(1)
    program["element_count"] = count
    dispatch_flat(program, groups(count * dtype.itemsize, 4), 256)
