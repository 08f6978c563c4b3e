"""CUDA-GL interop: GL buffers and textures registered with CUDA once, mapped per use on torch's
current stream, and copied device to device into (or from) torch CUDA tensors; no host round trip.

Written against cuda-python's runtime bindings (`cuda.bindings.runtime`, 12.x/13.x; `cuda.cudart`
for older releases). It has run on one GPU: an H100 (driver 580.159.04, cuda-bindings from that
machine's image), where tests/test_interop.py passed (docs/gpu.md, "On NVIDIA"). Those tests are
skipped without an NVIDIA GL context and CUDA; scripts/gpu-run.sh runs them on a lent GPU machine.

What CUDA can map (see docs/design.md): a GL *buffer* maps as a device pointer, so buffer -> tensor is
one `cudaMemcpyAsync`; a GL *texture* maps only as an opaque cudaArray per mip level, so level ->
tensor is one `cudaMemcpy2DFromArrayAsync`, and tensor -> texture one `cudaMemcpy2DToArrayAsync`.
CUDA registers R/RG/RGBA textures of 8/16-bit unorm, 16F and 32F (cudaGraphicsGLRegisterImage); not
RGB (3 channels) nor sRGB formats, which `glmip.bridge` reads back through the host instead.

Convention:
    the GL context must be current on the calling thread (register, map and unmap on the GL
    thread); the GL context and the tensor must be on the same GPU (`Context(cuda_device=i)`,
    checked with cudaGLGetDevices). Mapping orders GL work issued before it ahead of the CUDA
    work that follows on the stream, unmapping orders that CUDA work ahead of later GL work, so
    callers need no glFinish or stream synchronisation. Rows are copied as GL stores them:
    row 0 first, which for a glmip pyramid is the image's top (as `Pyramid.level` reads it).
    Resources are released by `close()` (or `with`), before the GL object they name is deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import moderngl
    import torch

__all__ = [
    "InteropUnavailable", "CudaError", "runtime", "check", "gl_cuda_devices", "gl_cuda_devices_or_reason",
    "on_device", "registered_count", "GLBufferResource", "GLImageResource",
]

GL_TEXTURE_2D = 0x0DE1

# Hints for the errors GL interop is known for; 304 is the famous one.
_HINTS = {
    304: "cudaErrorOperatingSystem from a GL interop call usually hides a GL-side error (no GL context current "
         "on this thread, a GL name that is not a live buffer/texture, an unsupported texture format) or a device "
         "mismatch (the GL context runs on another GPU than the current CUDA device; use "
         "glmip.Context(cuda_device=i))",
    219: "cudaErrorInvalidGraphicsContext: no NVIDIA GL context is current on this thread",
    100: "cudaErrorNoDevice: the current GL context is not on a CUDA-capable GPU (e.g. Mesa llvmpipe)",
    101: "cudaErrorInvalidDevice: the GL context and the current CUDA device are different GPUs; use "
         "glmip.Context(cuda_device=i)",
    999: "cudaErrorUnknown from a GL interop call: often a resource mapped twice, used while unmapped, or a GL "
         "object deleted while registered",
}


class InteropUnavailable(RuntimeError):
    """cuda-python is missing, or this machine cannot run the CUDA-GL interop path."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed; `code` is the cudaError_t value, `call` what was called."""

    def __init__(self, call: str, code: int, name: str) -> None:
        hint = _HINTS.get(code)
        super().__init__(f"{call} failed with CUDA error {code} ({name})" + (f": {hint}" if hint else ""))
        self.call, self.code = call, code


def runtime() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime`, or `cuda.cudart` for cuda-python < 12.6."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            raise InteropUnavailable("the CUDA-GL interop path needs cuda-python (pip install cuda-python, or "
                                     "cuda-bindings); neither cuda.bindings.runtime nor cuda.cudart imports") from None
    return cudart


def check(result: tuple, call: str) -> Any:
    """Unpack a cuda-python result `(err, *values)`: raise CudaError unless err is cudaSuccess; return
    None, the single value, or the tuple of values."""
    err, *values = result
    code = int(err)
    if code != 0:
        raise CudaError(call, code, getattr(err, "name", str(err)))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gl_cuda_devices(max_devices: int = 64) -> list[int]:
    """The CUDA devices that run the GL context current on this thread (cudaGLGetDevices), in the
    numbering of this process (CUDA_VISIBLE_DEVICES applied). Raises CudaError on a non-NVIDIA context."""
    cudart = runtime()
    count, devices = check(cudart.cudaGLGetDevices(max_devices, cudart.cudaGLDeviceList.cudaGLDeviceListAll),
                           "cudaGLGetDevices")
    return [int(d) for d in devices[: int(count)]]


def gl_cuda_devices_or_reason() -> tuple[list[int] | None, str]:
    """`gl_cuda_devices()` and a sentence, or None and the reason it cannot be asked."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None, "torch sees no CUDA device"
        devices = gl_cuda_devices()
    except (InteropUnavailable, CudaError, ImportError) as error:
        return None, str(error)
    return devices, f"cudaGLGetDevices: this GL context runs on CUDA device(s) {devices}"


@contextlib.contextmanager
def on_device(index: int) -> Iterator[None]:
    """Make CUDA device `index` current for torch and for cuda-python's runtime, restoring both after."""
    import torch

    cudart = runtime()
    with torch.cuda.device(index):
        previous = check(cudart.cudaGetDevice(), "cudaGetDevice")
        check(cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
        try:
            yield
        finally:
            check(cudart.cudaSetDevice(int(previous)), f"cudaSetDevice({previous})")


def _stream(device: int) -> int:
    import torch

    return int(torch.cuda.current_stream(device).cuda_stream)


def _flags(cudart: Any, flags: str) -> int:
    names = {"none": "cudaGraphicsRegisterFlagsNone", "read_only": "cudaGraphicsRegisterFlagsReadOnly",
             "write_discard": "cudaGraphicsRegisterFlagsWriteDiscard"}
    if flags not in names:
        raise ValueError(f"flags must be one of {', '.join(repr(n) for n in names)}, got {flags!r}")
    return int(getattr(cudart.cudaGraphicsRegisterFlags, names[flags]))


def _gl_name(gl_object: Any, kind: str) -> int:
    name = getattr(gl_object, "glo", gl_object)
    if not isinstance(name, int) or isinstance(name, bool) or name <= 0:
        raise TypeError(f"need a moderngl {kind} or its GL name (a positive int), got {gl_object!r}")
    return name


def _cuda_tensor(tensor: Any, what: str, device: int) -> torch.Tensor:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor, got {type(tensor).__name__}")
    if not tensor.is_cuda or not tensor.is_contiguous():
        raise ValueError(f"{what} must be a contiguous CUDA tensor, got device {tensor.device}, "
                         f"contiguous={tensor.is_contiguous()}")
    if tensor.device.index != device:
        raise ValueError(f"{what} is on {tensor.device}, but this resource is registered on cuda:{device}")
    return tensor


class _Registered:
    """A GL object registered with CUDA on one device; `map()` lends it to CUDA on a stream."""

    _live = 0  # registrations not yet closed, in this process (a leak check, not GL state)

    def __init__(self, device: int | None) -> None:
        import torch

        self.device = torch.cuda.current_device() if device is None else int(device)
        self._cudart = runtime()
        self._resource: Any = None
        self._mapped_on: int | None = None

    def _register(self, call: str, register: Any) -> None:
        with on_device(self.device):
            self._resource = check(register(), call)
        _Registered._live += 1

    @property
    def closed(self) -> bool:
        return self._resource is None

    @property
    def mapped(self) -> bool:
        return self._mapped_on is not None

    @contextlib.contextmanager
    def map(self, stream: int | None = None) -> Iterator[Any]:
        """Map for CUDA on `stream` (default: torch's current stream on this device) and unmap on leaving;
        yields the resource handle. GL must not touch the object while it is mapped."""
        if self._resource is None:
            raise RuntimeError("this interop resource is closed")
        if self._mapped_on is not None:
            raise RuntimeError("this interop resource is already mapped; unmap it first (map() is not reentrant)")
        cudart = self._cudart
        with on_device(self.device):
            stream = _stream(self.device) if stream is None else int(stream)
            check(cudart.cudaGraphicsMapResources(1, self._resource, stream), "cudaGraphicsMapResources")
            self._mapped_on = stream
            try:
                yield self._resource
            finally:
                self._mapped_on = None
                check(cudart.cudaGraphicsUnmapResources(1, self._resource, stream), "cudaGraphicsUnmapResources")

    def close(self) -> None:
        """Unregister from CUDA (before the GL object is deleted). Safe to call twice."""
        if self._resource is None:
            return
        if self._mapped_on is not None:
            raise RuntimeError("close() while mapped; leave the map() block first")
        resource, self._resource = self._resource, None
        _Registered._live -= 1
        with on_device(self.device):
            check(self._cudart.cudaGraphicsUnregisterResource(resource), "cudaGraphicsUnregisterResource")

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def registered_count() -> int:
    """How many GL objects this process has registered with CUDA and not closed (a leak check)."""
    return _Registered._live


class GLBufferResource(_Registered):
    """A GL buffer (moderngl.Buffer or GL name) registered with CUDA on `device` (default: torch's current).

    `flags`: "none" (CUDA reads and writes), "read_only", "write_discard". Register once, then
    `copy_to` / `copy_from` as often as needed; each maps, copies on torch's current stream, unmaps.
    """

    def __init__(self, buffer: moderngl.Buffer | int, flags: str = "none", device: int | None = None) -> None:
        name = _gl_name(buffer, "Buffer")
        super().__init__(device)
        self.name = name
        flag = _flags(self._cudart, flags)
        self._register(f"cudaGraphicsGLRegisterBuffer(buffer {name})",
                       lambda: self._cudart.cudaGraphicsGLRegisterBuffer(name, flag))

    @contextlib.contextmanager
    def pointer(self, stream: int | None = None) -> Iterator[tuple[int, int]]:
        """Map and yield (device pointer, size in bytes), valid until the block ends."""
        with self.map(stream) as resource:
            pointer, size = check(self._cudart.cudaGraphicsResourceGetMappedPointer(resource),
                                  "cudaGraphicsResourceGetMappedPointer")
            yield int(pointer), int(size)

    def _copy(self, tensor: torch.Tensor, offset: int, to_tensor: bool) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        cudart = self._cudart
        with self.pointer() as (pointer, size):
            if offset < 0 or offset + nbytes > size:
                raise ValueError(f"{nbytes} bytes from offset {offset} do not fit the mapped GL buffer of {size} bytes")
            if nbytes:
                src, dst = (pointer + offset, tensor.data_ptr()) if to_tensor else (tensor.data_ptr(), pointer + offset)
                check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                             self._mapped_on), "cudaMemcpyAsync (GL buffer <-> tensor)")

    def copy_to(self, out: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Copy the buffer's bytes from `offset` into contiguous CUDA tensor `out` (all of it); returns `out`."""
        self._copy(_cuda_tensor(out, "out", self.device), offset, to_tensor=True)
        return out

    def copy_from(self, tensor: torch.Tensor, offset: int = 0) -> None:
        """Copy contiguous CUDA tensor `tensor`'s bytes into the buffer at `offset`."""
        self._copy(_cuda_tensor(tensor, "tensor", self.device), offset, to_tensor=False)


class GLImageResource(_Registered):
    """A GL texture (moderngl.Texture or GL name, `target` GL_TEXTURE_2D) registered with CUDA; each mip
    level is a cudaArray while mapped. `flags` as `GLBufferResource` ("write_discard" to fill it from CUDA)."""

    def __init__(self, texture: moderngl.Texture | int, flags: str = "none", device: int | None = None,
                 target: int = GL_TEXTURE_2D) -> None:
        name = _gl_name(texture, "Texture")
        super().__init__(device)
        self.name = name
        flag = _flags(self._cudart, flags)
        self._register(f"cudaGraphicsGLRegisterImage(texture {name}, target 0x{target:04X})",
                       lambda: self._cudart.cudaGraphicsGLRegisterImage(name, target, flag))

    def _level_copy(self, level: int, tensor: torch.Tensor, to_tensor: bool) -> None:
        if tensor.ndim != 3:
            raise ValueError(f"need an (H, W, C) tensor for a texture level, got shape {tuple(tensor.shape)}")
        height, width, channels = tensor.shape
        row = width * channels * tensor.element_size()
        cudart = self._cudart
        with self.map() as resource:
            array = check(cudart.cudaGraphicsSubResourceGetMappedArray(resource, 0, int(level)),
                          f"cudaGraphicsSubResourceGetMappedArray(level {level})")
            desc, extent, _ = check(cudart.cudaArrayGetInfo(array), "cudaArrayGetInfo")
            texel = (int(desc.x) + int(desc.y) + int(desc.z) + int(desc.w)) // 8
            if (int(extent.width), int(extent.height)) != (width, height) or texel * width != row:
                raise ValueError(f"level {level} is {int(extent.width)}x{int(extent.height)} texels of {texel} bytes, "
                                 f"the tensor {width}x{height} of {channels} x {tensor.dtype}")
            kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            if to_tensor:
                result = cudart.cudaMemcpy2DFromArrayAsync(tensor.data_ptr(), row, array, 0, 0, row, height, kind,
                                                           self._mapped_on)
            else:
                result = cudart.cudaMemcpy2DToArrayAsync(array, 0, 0, tensor.data_ptr(), row, row, height, kind,
                                                         self._mapped_on)
            check(result, "cudaMemcpy2D" + ("FromArrayAsync" if to_tensor else "ToArrayAsync"))

    def copy_level_to(self, level: int, out: torch.Tensor) -> torch.Tensor:
        """Copy mip `level` into contiguous CUDA tensor `out` of shape (H, W, C) and the texture's
        element size (rows as GL stores them); returns `out`."""
        self._level_copy(level, _cuda_tensor(out, "out", self.device), to_tensor=True)
        return out

    def copy_level_from(self, level: int, tensor: torch.Tensor) -> None:
        """Copy contiguous CUDA tensor `tensor` (H, W, C) into mip `level` (row 0 first)."""
        self._level_copy(level, _cuda_tensor(tensor, "tensor", self.device), to_tensor=False)
