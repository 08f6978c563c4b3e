"""The one table of texel formats: numpy/torch dtype ↔ GL internal format ↔ client pixel type ↔
moderngl dtype ↔ encode.comp's format define ↔ whether CUDA can register it.

Every module that needs a format asks here; nothing else spells a GL format constant.

Convention:
    integer formats are unsigned normalised (uint8 → [0, 1] in 1/255 steps, uint16 in 1/65535
    steps); float16/float32 are stored as is. 1..4 channels map to R, RG, RGB, RGBA. sRGB exists
    only for 8-bit RGB/RGBA. CUDA registers R/RG/RGBA of every dtype here, never RGB or sRGB.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TexelFormat", "FORMATS", "PIXEL_FORMATS", "texel_format", "internal_format", "by_moderngl_dtype",
           "cuda_registrable", "unorm_scale"]

# Client pixel formats by channel count: GL_RED, GL_RG, GL_RGB, GL_RGBA.
PIXEL_FORMATS = {1: 0x1903, 2: 0x8227, 3: 0x1907, 4: 0x1908}

GL_SRGB8 = 0x8C41
GL_SRGB8_ALPHA8 = 0x8C43


@dataclass(frozen=True)
class TexelFormat:
    """How one dtype lives in GL: `internal` sized formats by channel count (1..4), the client
    `pixel_type` of glTexSubImage/glGetTexImage, moderngl's dtype string, encode.comp's define
    (None where the compute path cannot pack it) and the unorm scale (None for floats)."""

    dtype: str
    internal: tuple[int, int, int, int]
    pixel_type: int
    moderngl: str
    encode_define: str | None
    unorm_scale: float | None


FORMATS: dict[str, TexelFormat] = {
    "uint8": TexelFormat("uint8", (0x8229, 0x822B, 0x8051, 0x8058), 0x1401, "f1", "FORMAT_UNORM8", 255.0),
    "uint16": TexelFormat("uint16", (0x822A, 0x822C, 0x8054, 0x805B), 0x1403, "nu2", "FORMAT_UNORM16", 65535.0),
    "float16": TexelFormat("float16", (0x822D, 0x822F, 0x881B, 0x881A), 0x140B, "f2", None, None),
    "float32": TexelFormat("float32", (0x822E, 0x8230, 0x8815, 0x8814), 0x1406, "f4", "FORMAT_FLOAT32", None),
}

# The dtypes an image pyramid holds (the compute filters pack these; float16 is for bridge textures only).
PYRAMID_DTYPES = ("uint8", "uint16", "float32")


def texel_format(dtype: str) -> TexelFormat:
    """The format record of numpy/torch dtype name `dtype`; ValueError listing the accepted ones."""
    try:
        return FORMATS[dtype]
    except KeyError:
        raise ValueError(f"no GL texel format for dtype {dtype!r}; accepted: {', '.join(FORMATS)}") from None


def internal_format(dtype: str, channels: int, srgb: bool = False) -> int:
    """The sized GL internal format of `channels` (1..4) of `dtype`, sRGB where asked (8-bit RGB/RGBA)."""
    if not 1 <= channels <= 4:
        raise ValueError(f"channels must be 1..4, got {channels}")
    if srgb:
        if dtype != "uint8" or channels < 3:
            raise ValueError(f"sRGB needs 8-bit RGB or RGBA, got {dtype} with {channels} channel(s)")
        return GL_SRGB8 if channels == 3 else GL_SRGB8_ALPHA8
    return texel_format(dtype).internal[channels - 1]


def by_moderngl_dtype(moderngl_dtype: str) -> TexelFormat | None:
    """The format whose moderngl dtype string is `moderngl_dtype` ('f1', 'nu2', 'f2', 'f4'), else None."""
    return next((f for f in FORMATS.values() if f.moderngl == moderngl_dtype), None)


def cuda_registrable(dtype: str, channels: int, srgb: bool = False) -> tuple[bool, str]:
    """Whether cudaGraphicsGLRegisterImage takes a texture of this format, and why not."""
    if channels == 3:
        return False, "CUDA cannot register 3-channel (RGB) textures; they are read back through the host"
    if srgb:
        return False, "CUDA cannot register sRGB textures; they are read back through the host"
    if dtype not in FORMATS:
        return False, f"CUDA-GL interop handles {', '.join(FORMATS)} textures, not {dtype}"
    return True, "registrable"


def unorm_scale(dtype: str) -> float | None:
    """255 for uint8, 65535 for uint16, None for float dtypes (stored as is)."""
    record = FORMATS.get(dtype)
    return None if record is None else record.unorm_scale
