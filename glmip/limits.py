"""glmip's size limits in one place, and the small validators every public function shares.

Every size a caller passes is checked here before anything is allocated, host or GPU, so a
call that cannot finish fails at once with the value, the limit and how to go past it, instead
of hanging, running out of memory or leaving a GL error behind.

Two kinds of limit:
    host bounds (`MAX_*` below): stated by glmip to keep one call's memory and time bounded;
        raise them by assigning the module attribute (e.g. `glmip.limits.MAX_OUTPUT_PIXELS = 2**28`).
    device limits: the GL implementation's own (GL_MAX_TEXTURE_SIZE, read from the context) and the
        scratch-buffer bound measured on it (`max_storage_bytes`); they cannot be raised, only worked
        around (crop, tile, a smaller size).

Convention:
    sizes are (width, height) pairs of positive Python or numpy ints; bools, floats (even 2.0),
    strings and NaN are refused with TypeError/ValueError, never rounded.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gl.context import GLContext

__all__ = [
    "MAX_OUTPUT_PIXELS", "MAX_SAMPLE_POINTS", "MAX_TOKEN_SAMPLES", "MAX_PATCH", "MAX_LEVEL", "MAX_SCRATCH_BYTES",
    "positive_int", "non_negative_int", "finite_float", "size_pair", "check_pixels", "check_count",
    "max_storage_bytes", "check_storage", "check_texture_side", "compute_build_bytes", "check_compute_build",
]

# Host bounds (raise them by assignment, see the module docstring).
MAX_OUTPUT_PIXELS = 1 << 26  # render / saliency / gaze / relevance outputs: 64 Mpixel (8192 x 8192)
MAX_SAMPLE_POINTS = 1 << 24  # points per `sample` call (16 M)
MAX_TOKEN_SAMPLES = 1 << 26  # tokens x patch^2 per `tokens` call (64 M samples, 256 MiB a channel)
MAX_PATCH = 1024  # samples per token side
MAX_LEVEL = 64.0  # largest LOD / level value accepted anywhere (a 2^64 image has no more levels)
MAX_SCRATCH_BYTES = (2 << 30) - 1  # largest GPU scratch buffer one call may ask for (see max_storage_bytes)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: Any, what: str) -> int:
    """`value` as an int >= 1; TypeError for non-integers (floats included), ValueError for < 1."""
    if not _is_int(value):
        raise TypeError(f"{what} must be a positive int, got {value!r} ({type(value).__name__})")
    if int(value) < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def non_negative_int(value: Any, what: str) -> int:
    """`value` as an int >= 0 (TypeError for non-integers)."""
    if not _is_int(value):
        raise TypeError(f"{what} must be a non-negative int, got {value!r} ({type(value).__name__})")
    if int(value) < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return int(value)


def finite_float(value: Any, what: str, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False) -> float:
    """`value` as a finite float within [minimum, maximum] (minimum excluded with `exclusive_minimum`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    low_bad = minimum is not None and (number <= minimum if exclusive_minimum else number < minimum)
    if low_bad or (maximum is not None and number > maximum):
        low = "" if minimum is None else (f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        raise ValueError(f"{what} must be {' and '.join(s for s in (low, high) if s)}, got {value!r}")
    return number


def size_pair(value: Any, what: str = "size", max_pixels: int | None = None, how: str = "") -> tuple[int, int]:
    """`value` as (width, height), two positive ints; with `max_pixels`, at most that many pixels."""
    try:
        width, height = value
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be (width, height), two positive ints, got {value!r}") from None
    if not (_is_int(width) and _is_int(height)):
        raise TypeError(f"{what} must be (width, height), two positive ints, got {value!r}")
    if width < 1 or height < 1:
        raise ValueError(f"{what} must be (width, height), two positive ints, got {value!r}")
    size = (int(width), int(height))
    if max_pixels is not None:
        check_pixels(size, what, max_pixels, how)
    return size


def check_pixels(size: tuple[int, int], what: str, limit: int, how: str = "") -> None:
    """Raise ValueError if width x height exceeds `limit`."""
    pixels = size[0] * size[1]
    if pixels > limit:
        raise ValueError(f"{what} {size[0]}x{size[1]} is {pixels} pixels, over the limit of {limit}"
                         + (f"; {how}" if how else ""))


def check_count(count: int, what: str, limit: int, how: str) -> None:
    """Raise ValueError if `count` exceeds `limit`."""
    if count > limit:
        raise ValueError(f"{what} is {count}, over the limit of {limit}; {how}")


def max_storage_bytes(context: GLContext) -> int:
    """The largest shader storage buffer a dispatch may bind: `MAX_SCRATCH_BYTES`, 2 GiB - 1.

    Not the device's GL_MAX_SHADER_STORAGE_BLOCK_SIZE: llvmpipe reports 128 MiB there, yet binds
    larger buffers correctly (box builds of 4096² and 8192², 256 MiB and 1 GiB of float texels,
    come out exact). Past 2^31 bytes it goes wrong without an error: a box build of 15000² (3.6 GB)
    read 110/110/255/110 at its 1x1 level for a mean of 127.5, and 16384² (4 GiB) fails with
    GL_OUT_OF_MEMORY after 11 s. So 2^31 - 1 bytes is the stated limit, on every device."""
    return MAX_SCRATCH_BYTES


def check_storage(context: GLContext, nbytes: int, what: str, how: str) -> None:
    """Raise ValueError if a scratch buffer of `nbytes` exceeds what a dispatch can bind on this device."""
    limit = max_storage_bytes(context)
    if nbytes > limit:
        raise ValueError(f"{what} needs a GPU buffer of {nbytes} bytes, over this device's limit of {limit} "
                         f"(glmip.limits.MAX_SCRATCH_BYTES); {how}")


def check_texture_side(context: GLContext, size: tuple[int, int], what: str) -> None:
    """Raise ValueError if either side exceeds this device's GL_MAX_TEXTURE_SIZE."""
    limit = context.max_texture_size
    if size[0] > limit or size[1] > limit:
        raise ValueError(f"{what} of {size[0]}x{size[1]} exceeds this device's maximum texture size "
                         f"{limit}x{limit}; downscale or crop it (tiling is not supported yet)")


def compute_build_bytes(width: int, height: int) -> int:
    """The largest scratch buffer a box/lanczos build of a width x height image binds: level 0 as
    float RGBA texels (16 bytes each). The two ping-pong buffers (level-1 width x level-0 height)
    and the packed level are smaller."""
    return width * height * 16


def check_compute_build(context: GLContext, width: int, height: int, method: str) -> None:
    """Raise ValueError before a compute build whose float scratch buffers the device cannot bind."""
    limit = max_storage_bytes(context)
    if compute_build_bytes(width, height) > limit:
        largest = math.isqrt(limit // 16)
        check_storage(context, compute_build_bytes(width, height), f"method={method!r} on a {width}x{height} image",
                      f"this device's compute path builds at most {limit // 16} pixels (e.g. {largest}x{largest}); "
                      "use method='hardware' (glGenerateMipmap, up to the texture size) or downscale the image")


def check_pyramid(pyramid: Any, what: str = "pyramid") -> None:
    """Raise TypeError unless `pyramid` is a glmip Pyramid (a `MipTexture`), and the glmip error
    (`ClosedError`, `WrongThreadError`, ...) if it is closed or used off its context's thread."""
    if not all(hasattr(pyramid, name) for name in ("_check_open", "sizes", "channels", "context")):
        raise TypeError(f"{what} must be a glmip.Pyramid (made by Context.pyramid), got {type(pyramid).__name__}")
    pyramid._check_open()


def check_pyramid_or_batch(pyramid: Any) -> bool:
    """Check a `Pyramid` or a `PyramidBatch` as `check_pyramid` does (TypeError naming what was given, the
    glmip error if closed); True for a batch."""
    if hasattr(pyramid, "arrays") and hasattr(pyramid, "where"):
        pyramid._check_open()
        return True
    check_pyramid(pyramid)
    if not hasattr(pyramid, "array"):
        raise TypeError(f"pyramid must be a glmip.Pyramid or PyramidBatch, got {type(pyramid).__name__}")
    return False


def check_context(context: Any, what: str = "context") -> None:
    """Raise TypeError unless `context` is a glmip Context, and the glmip error if it is closed or
    used off its thread."""
    if not hasattr(context, "check_usable") or not hasattr(context, "max_texture_size"):
        raise TypeError(f"{what} must be a glmip.Context or None, got {type(context).__name__}")
    context.check_usable()
