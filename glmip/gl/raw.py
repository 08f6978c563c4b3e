"""The few raw GL and EGL entry points moderngl does not expose, bound through ctypes.

moderngl covers programs, buffers and most texture work; immutable texture storage
(all mip levels allocated up front) and EGL device enumeration need the raw calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

from .formats import PIXEL_FORMATS, texel_format

__all__ = ["GL", "egl_devices", "current_egl_context"]

GL_TEXTURE_2D = 0x0DE1
GL_TEXTURE_2D_ARRAY = 0x8C1A
GL_MAX_ARRAY_TEXTURE_LAYERS = 0x88FF
GL_MAX_TEXTURE_SIZE = 0x0D33

GL_PIXEL_PACK_BUFFER = 0x88EB
GL_PIXEL_UNPACK_BUFFER = 0x88EC
GL_PACK_ALIGNMENT = 0x0D05
GL_UNPACK_ALIGNMENT = 0x0CF5

GL_TEXTURE_MAG_FILTER = 0x2800
GL_TEXTURE_MIN_FILTER = 0x2801
GL_TEXTURE_WRAP_S = 0x2802
GL_TEXTURE_WRAP_T = 0x2803
GL_TEXTURE_MAX_ANISOTROPY = 0x84FE
GL_NEAREST = 0x2600
GL_LINEAR = 0x2601
GL_NEAREST_MIPMAP_NEAREST = 0x2700
GL_LINEAR_MIPMAP_LINEAR = 0x2703
GL_CLAMP_TO_EDGE = 0x812F
GL_CLAMP_TO_BORDER = 0x812D
GL_REPEAT = 0x2901
GL_MIRRORED_REPEAT = 0x8370

# EGL enums, as Khronos' api/EGL/egl.h and eglext.h define them.
EGL_VENDOR = 0x3053
EGL_EXTENSIONS = 0x3055
EGL_DRM_DEVICE_FILE_EXT = 0x3233  # EGL_EXT_device_drm
EGL_CUDA_DEVICE_NV = 0x323A  # EGL_NV_device_cuda
EGL_DEVICE_UUID_EXT = 0x335C  # EGL_EXT_device_persistent_id (binary, 16 bytes)
EGL_DRIVER_NAME_EXT = 0x335E  # EGL_EXT_device_persistent_id (string)
EGL_RENDERER_EXT = 0x335F  # EGL_EXT_device_query_name
EGL_UUID_SIZE = 16

@lru_cache(maxsize=1)
def _libegl() -> ctypes.CDLL:
    name = ctypes.util.find_library("EGL") or "libEGL.so.1"
    lib = ctypes.CDLL(name)
    lib.eglGetProcAddress.restype = ctypes.c_void_p
    lib.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    lib.eglGetCurrentContext.restype = ctypes.c_void_p
    return lib


def current_egl_context() -> int:
    """The EGL context current on this thread (0 if none)."""
    return int(_libegl().eglGetCurrentContext() or 0)


def _proc(name: str, restype, *argtypes):
    """A GL/EGL function pointer from eglGetProcAddress (GLVND dispatches it per context)."""
    address = _libegl().eglGetProcAddress(name.encode())
    if not address:
        raise RuntimeError(f"the EGL library does not provide {name}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


class GL:
    """Raw GL 4.5 calls used by glmip; valid while a context is current on this thread."""

    def __init__(self) -> None:
        self.glCreateTextures = _proc(
            "glCreateTextures", None, ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)
        )
        self.glTextureStorage2D = _proc(
            "glTextureStorage2D", None, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_int,
            ctypes.c_int,
        )
        self.glDeleteTextures = _proc(
            "glDeleteTextures", None, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)
        )
        self.glTextureStorage3D = _proc(
            "glTextureStorage3D", None, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_int, ctypes.c_int,
            ctypes.c_int,
        )
        self.glTextureSubImage3D = _proc(
            "glTextureSubImage3D", None, ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
        )
        self.glGenerateTextureMipmap = _proc("glGenerateTextureMipmap", None, ctypes.c_uint)
        self.glGetTextureSubImage = _proc(
            "glGetTextureSubImage", None, ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p,
        )
        self.glGenTextures = _proc("glGenTextures", None, ctypes.c_int, ctypes.POINTER(ctypes.c_uint))
        self.glTextureView = _proc(
            "glTextureView", None, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
        )
        self.glBindTextureUnit = _proc("glBindTextureUnit", None, ctypes.c_uint, ctypes.c_uint)
        self.glTextureParameteri = _proc("glTextureParameteri", None, ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
        self.glGetError = _proc("glGetError", ctypes.c_uint)
        self.glGetInteger64v = _proc("glGetInteger64v", None, ctypes.c_uint, ctypes.POINTER(ctypes.c_int64))
        self.glBindBuffer = _proc("glBindBuffer", None, ctypes.c_uint, ctypes.c_uint)
        self.glPixelStorei = _proc("glPixelStorei", None, ctypes.c_uint, ctypes.c_int)
        self.glTextureSubImage2D = _proc(
            "glTextureSubImage2D", None, ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
        )
        self.glGetTextureImage = _proc(
            "glGetTextureImage", None, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_int, ctypes.c_void_p,
        )

        self.glCreateSamplers = _proc(
            "glCreateSamplers", None, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)
        )
        self.glSamplerParameteri = _proc("glSamplerParameteri", None, ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
        self.glSamplerParameterf = _proc("glSamplerParameterf", None, ctypes.c_uint, ctypes.c_uint, ctypes.c_float)
        self.glBindSampler = _proc("glBindSampler", None, ctypes.c_uint, ctypes.c_uint)
        self.glDeleteSamplers = _proc("glDeleteSamplers", None, ctypes.c_int, ctypes.POINTER(ctypes.c_uint))

    def create_sampler(self, min_filter: int, mag_filter: int, wrap: int, anisotropy: float) -> int:
        """A sampler object with the given filters, the same wrap on both axes, and max anisotropy."""
        name = ctypes.c_uint(0)
        self.glCreateSamplers(1, ctypes.byref(name))
        self.glSamplerParameteri(name.value, GL_TEXTURE_MIN_FILTER, min_filter)
        self.glSamplerParameteri(name.value, GL_TEXTURE_MAG_FILTER, mag_filter)
        self.glSamplerParameteri(name.value, GL_TEXTURE_WRAP_S, wrap)
        self.glSamplerParameteri(name.value, GL_TEXTURE_WRAP_T, wrap)
        self.glSamplerParameterf(name.value, GL_TEXTURE_MAX_ANISOTROPY, float(anisotropy))
        self._check("creating a sampler")
        return name.value

    def delete_sampler(self, name: int) -> None:
        self.glDeleteSamplers(1, ctypes.byref(ctypes.c_uint(name)))

    def get_integer(self, name: int) -> int:
        """glGetInteger64v of one value (a limit such as GL_MAX_TEXTURE_SIZE), without moderngl's
        info dictionary (building it costs a few KiB per context that are never given back)."""
        value = ctypes.c_int64(0)
        self.glGetInteger64v(name, ctypes.byref(value))
        return int(value.value)

    def _check(self, what: str) -> None:
        error = self.glGetError()
        if error:
            raise RuntimeError(f"{what} failed with GL error 0x{error:04X}")

    def create_texture_storage(self, levels: int, internal_format: int, width: int, height: int) -> int:
        """A new immutable 2-D texture with every level allocated; returns its GL name."""
        name = ctypes.c_uint(0)
        self.glCreateTextures(GL_TEXTURE_2D, 1, ctypes.byref(name))
        self.glTextureStorage2D(name.value, levels, internal_format, width, height)
        error = self.glGetError()
        if error:
            self.delete_texture(name.value)
            raise RuntimeError(
                f"glTextureStorage2D({levels} levels, format 0x{internal_format:04X}, "
                f"{width}x{height}) failed with GL error 0x{error:04X}"
            )
        return name.value

    def upload_level_from_buffer(self, texture: int, level: int, size: tuple[int, int], channels: int,
                                 dtype: str, buffer: int) -> None:
        """Fill `level` of `texture` from the tightly packed pixels at the start of GL buffer `buffer`,
        on the GPU (the buffer serves as pixel-unpack buffer)."""
        self.glBindBuffer(GL_PIXEL_UNPACK_BUFFER, buffer)
        self.glPixelStorei(GL_UNPACK_ALIGNMENT, 1)
        self.glTextureSubImage2D(texture, level, 0, 0, size[0], size[1], PIXEL_FORMATS[channels],
                                 texel_format(dtype).pixel_type, None)
        self.glBindBuffer(GL_PIXEL_UNPACK_BUFFER, 0)
        self._check(f"uploading level {level} from a buffer")

    def read_level(self, texture: int, level: int, channels: int, dtype: str, address: int, nbytes: int) -> None:
        """Copy `level` of `texture` as tightly packed pixels into host memory at `address`."""
        self.glBindBuffer(GL_PIXEL_PACK_BUFFER, 0)
        self.glPixelStorei(GL_PACK_ALIGNMENT, 1)
        self.glGetTextureImage(texture, level, PIXEL_FORMATS[channels], texel_format(dtype).pixel_type, nbytes,
                               ctypes.c_void_p(address))
        self._check(f"reading level {level}")

    def delete_texture(self, name: int) -> None:
        self.glDeleteTextures(1, ctypes.byref(ctypes.c_uint(name)))

    def create_array_storage(self, levels: int, internal_format: int, width: int, height: int, layers: int) -> int:
        """A new immutable 2-D array texture of `layers` layers with every level allocated; returns its GL name."""
        name = ctypes.c_uint(0)
        self.glCreateTextures(GL_TEXTURE_2D_ARRAY, 1, ctypes.byref(name))
        self.glTextureStorage3D(name.value, levels, internal_format, width, height, layers)
        error = self.glGetError()
        if error:
            self.delete_texture(name.value)
            raise RuntimeError(f"glTextureStorage3D({levels} levels, format 0x{internal_format:04X}, {width}x{height}, "
                               f"{layers} layers) failed with GL error 0x{error:04X}")
        for parameter, value in ((GL_TEXTURE_MIN_FILTER, GL_LINEAR_MIPMAP_LINEAR), (GL_TEXTURE_MAG_FILTER, GL_LINEAR),
                                 (GL_TEXTURE_WRAP_S, GL_CLAMP_TO_EDGE), (GL_TEXTURE_WRAP_T, GL_CLAMP_TO_EDGE)):
            self.glTextureParameteri(name.value, parameter, value)
        return name.value

    def upload_layers(self, texture: int, level: int, size: tuple[int, int], first_layer: int, layers: int,
                      channels: int, dtype: str, buffer: int, offset: int = 0) -> None:
        """Fill `layers` layers of `level` of array `texture` from tightly packed pixels (layer, row, column,
        channel) at byte `offset` of GL buffer `buffer`, on the GPU: one glTextureSubImage3D."""
        self.glBindBuffer(GL_PIXEL_UNPACK_BUFFER, buffer)
        self.glPixelStorei(GL_UNPACK_ALIGNMENT, 1)
        self.glTextureSubImage3D(texture, level, 0, 0, first_layer, size[0], size[1], layers, PIXEL_FORMATS[channels],
                                 texel_format(dtype).pixel_type, ctypes.c_void_p(offset))
        self.glBindBuffer(GL_PIXEL_UNPACK_BUFFER, 0)
        self._check(f"uploading {layers} layer(s) of level {level} from a buffer")

    def read_layers(self, texture: int, level: int, size: tuple[int, int], first_layer: int, layers: int,
                    channels: int, dtype: str, address: int, nbytes: int) -> None:
        """Copy `layers` layers of `level` of array `texture` as tightly packed pixels into host memory at
        `address`: one glGetTextureSubImage."""
        self.glBindBuffer(GL_PIXEL_PACK_BUFFER, 0)
        self.glPixelStorei(GL_PACK_ALIGNMENT, 1)
        self.glGetTextureSubImage(texture, level, 0, 0, first_layer, size[0], size[1], layers, PIXEL_FORMATS[channels],
                                  texel_format(dtype).pixel_type, nbytes, ctypes.c_void_p(address))
        self._check(f"reading {layers} layer(s) of level {level}")

    def create_layer_view(self, array: int, internal_format: int, levels: int, layer: int) -> int:
        """A 2-D texture view of one layer of array texture `array` (all `levels` levels, no copy)."""
        name = ctypes.c_uint(0)
        self.glGenTextures(1, ctypes.byref(name))
        self.glTextureView(name.value, GL_TEXTURE_2D, array, internal_format, 0, levels, layer, 1)
        error = self.glGetError()
        if error:
            self.delete_texture(name.value)
            raise RuntimeError(f"glTextureView of layer {layer} failed with GL error 0x{error:04X}")
        return name.value


def egl_devices() -> list[dict[str, object]]:
    """EGL devices as EGL_EXT_device_enumeration lists them, in EGL's order (the index `Context(device=)`
    takes). Each: `index`, `extensions`, and where the device's extensions expose them `drm_file`
    (EGL_EXT_device_drm), `renderer` and `vendor` (EGL_EXT_device_query_name), `driver` and `uuid`
    (EGL_EXT_device_persistent_id; the UUID as 32 lowercase hex digits), `cuda_device`
    (EGL_NV_device_cuda: the CUDA device ordinal the NVIDIA driver reports)."""
    try:
        query_devices = _proc(
            "eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
        )
        query_string = _proc("eglQueryDeviceStringEXT", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
        query_attrib = _proc(
            "eglQueryDeviceAttribEXT", ctypes.c_uint, ctypes.c_void_p, ctypes.c_int,
            ctypes.POINTER(ctypes.c_ssize_t),
        )
    except (OSError, RuntimeError):
        return []
    try:
        query_binary = _proc(
            "eglQueryDeviceBinaryEXT", ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
        )
    except RuntimeError:  # an EGL loader older than EGL_EXT_device_persistent_id
        query_binary = None
    count = ctypes.c_int(0)
    if not query_devices(0, None, ctypes.byref(count)) or count.value == 0:
        return []
    handles = (ctypes.c_void_p * count.value)()
    query_devices(count.value, handles, ctypes.byref(count))

    def text(handle: int, name: int) -> str | None:
        value = query_string(handle, name)
        return value.decode(errors="replace") if value else None

    devices: list[dict[str, object]] = []
    for index in range(count.value):
        handle = handles[index]
        extensions = (query_string(handle, EGL_EXTENSIONS) or b"").decode().split()
        device: dict[str, object] = {"index": index, "extensions": extensions}
        if "EGL_EXT_device_drm" in extensions:
            device["drm_file"] = text(handle, EGL_DRM_DEVICE_FILE_EXT)
        if "EGL_EXT_device_query_name" in extensions:
            device["renderer"] = text(handle, EGL_RENDERER_EXT)
            device["vendor"] = text(handle, EGL_VENDOR)
        if "EGL_EXT_device_persistent_id" in extensions:
            device["driver"] = text(handle, EGL_DRIVER_NAME_EXT)
            if query_binary is not None:
                uuid = (ctypes.c_ubyte * EGL_UUID_SIZE)()
                size = ctypes.c_int(0)
                if query_binary(handle, EGL_DEVICE_UUID_EXT, EGL_UUID_SIZE, uuid, ctypes.byref(size)) and size.value:
                    device["uuid"] = bytes(uuid[: size.value]).hex()
        if "EGL_NV_device_cuda" in extensions:
            value = ctypes.c_ssize_t(-1)
            if query_attrib(handle, EGL_CUDA_DEVICE_NV, ctypes.byref(value)):
                device["cuda_device"] = int(value.value)
        devices.append(device)
    return devices
