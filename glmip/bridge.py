"""GL buffers and texture levels into torch tensors (and tensors into GL textures), and which
path each transfer took.

On any machine: read-back straight into the tensor's own memory (no numpy or bytes copy in
between), or into a caller's `out` tensor; the host tensor is pinned when the destination is a
CUDA device, so the upload that follows is asynchronous.

Where the destination is a CUDA tensor, the GL context is NVIDIA's on that same GPU and
cuda-python is installed, the CUDA-GL interop path (`glmip.gl.interop`) copies device to device on
torch's current stream instead, with no host round trip (`BridgePath.CUDA_GL`); textures in
RGB (3 channels) or sRGB formats cannot be registered with CUDA and are read back. `prefer`
chooses: "auto" (interop where available), "interop" (a ValueError saying why when it is not),
"readback". Each Transfer names the path taken. The interop path has run on one GPU (an
H100, docs/gpu.md, "On NVIDIA"); its tests (tests/test_interop.py) are skipped without one.
These calls register the GL object for one transfer; for repeated transfers of one buffer, keep a
`glmip.gl.interop.GLBufferResource`.
`Context.info()["interop"]` says which paths this machine offers and why.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .gl.formats import FORMATS, by_moderngl_dtype
from .gl.paths import BridgePath, Prefer, buffer_availability, texture_availability, use_interop
from .limits import check_context, check_pyramid, check_texture_side, non_negative_int

if TYPE_CHECKING:
    import moderngl
    import torch

    from .gl.context import GLContext
    from .gl.texture import MipTexture

__all__ = ["BridgePath", "Prefer", "Transfer", "buffer_to_tensor", "level_to_tensor", "texture_to_tensor",
           "tensor_to_texture", "writable_view", "persistent_buffer_to_tensor",
           "check_destination"]


@dataclass(frozen=True)
class Transfer:
    """A tensor made from GL data, and the path that made it."""

    tensor: torch.Tensor
    path: BridgePath


def _host_tensor(shape: tuple[int, ...], dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    import torch

    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


def writable_view(tensor: torch.Tensor) -> ctypes.Array:
    """A writable buffer-protocol view of a contiguous CPU tensor's bytes (any dtype, no copy)."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("a writable view needs a contiguous CPU tensor")
    return (ctypes.c_char * (tensor.numel() * tensor.element_size())).from_address(tensor.data_ptr())


def _target(device: Any) -> tuple[torch.device, bool]:
    import torch

    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    return target, target.type == "cuda"


def _check_out(out: Any, shape: tuple[int, ...], dtype: torch.dtype) -> torch.device:
    """Validate a caller's `out` tensor; returns the device it lives on."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {shape} and dtype {dtype}, got {tuple(out.shape)} {out.dtype}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    return _target(out.device)[0]


def _resolve(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> torch.device:
    """The destination device: `out`'s, else `device`'s; a CUDA device always with its index."""
    import torch

    target = _check_out(out, shape, dtype) if out is not None else _target(device)[0]
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return target


def _destination(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, target: torch.device
                 ) -> torch.Tensor:
    """The host tensor GL writes into: `out` itself when it is a CPU tensor, else a new (pinned, when
    the destination is CUDA) one."""
    if out is not None and target.type == "cpu":
        return out
    return _host_tensor(shape, dtype, target.type == "cuda")


def _deliver(host: torch.Tensor, target: torch.device, out: torch.Tensor | None) -> Transfer:
    """The read-back host tensor at its destination: itself on the CPU, else copied (asynchronously,
    from pinned memory) into `out` or a new CUDA tensor."""
    if target.type != "cuda":
        return Transfer(host, BridgePath.READBACK)
    if out is None:
        return Transfer(host.to(target, non_blocking=True), BridgePath.PINNED_READBACK)
    out.copy_(host, non_blocking=True)
    return Transfer(out, BridgePath.PINNED_READBACK)


def _image_to_cuda(context: GLContext, texture: Any, level: int, out: torch.Tensor | None, shape: tuple[int, ...],
                   dtype: torch.dtype, target: torch.device) -> Transfer:
    """Texture level -> CUDA tensor (`out` or a new one) through CUDA-GL interop, device to device."""
    import torch

    from .gl.interop import GLImageResource

    tensor = out if out is not None else torch.empty(shape, dtype=dtype, device=target)
    context.make_current()
    with GLImageResource(texture, flags="read_only", device=target.index) as resource:
        resource.copy_level_to(level, tensor)
    return Transfer(tensor, BridgePath.CUDA_GL)


def buffer_to_tensor(buffer: moderngl.Buffer, shape: tuple[int, ...], dtype: Any = None, device: Any = "cpu",
                     offset: int = 0, out: torch.Tensor | None = None, prefer: str | Prefer = "auto") -> Transfer:
    """The bytes of GL `buffer` from `offset` as a tensor of `shape` and `dtype` (default float32).

    With `out` (a contiguous tensor of that shape and dtype, CPU or CUDA) the data lands in it, so
    repeated transfers reuse memory that is already paged in (several times faster than a fresh
    tensor on first touch; see bench/bridge.py). A CUDA destination takes the CUDA-GL interop path
    when available (`prefer`, see the module docstring); the buffer's GL context must be current.
    """
    import moderngl
    import torch

    if not isinstance(buffer, moderngl.Buffer):
        raise TypeError(f"buffer must be a moderngl.Buffer, got {type(buffer).__name__}")
    if type(buffer.mglo).__name__ == "InvalidObject":
        raise ValueError("this GL buffer has been released")
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a tuple of non-negative ints, got {shape!r}")
    shape = tuple(non_negative_int(s, "each dimension of shape") for s in shape)
    offset = non_negative_int(offset, "offset")
    target = _resolve(out, shape, dtype, device)
    nbytes = math.prod(shape) * dtype.itemsize
    if offset < 0 or offset + nbytes > buffer.size:
        raise ValueError(f"{nbytes} bytes from offset {offset} do not fit a GL buffer of {buffer.size} bytes")
    if use_interop(prefer, target, lambda: buffer_availability(buffer, target)):
        from .gl.interop import GLBufferResource

        tensor = out if out is not None else torch.empty(shape, dtype=dtype, device=target)
        with GLBufferResource(buffer, flags="read_only", device=target.index) as resource:
            resource.copy_to(tensor, offset)
        return Transfer(tensor, BridgePath.CUDA_GL)
    host = _destination(out, shape, dtype, target)
    if nbytes:
        buffer.read_into(writable_view(host), size=nbytes, offset=offset)
    return _deliver(host, target, out)


def check_destination(out: torch.Tensor | None, shape: tuple[int, ...], device: Any) -> None:
    """Raise TypeError/ValueError for a bad float32 `out` tensor of `shape` or a bad `device` (not 'cpu'
    or an available CUDA device), before any GL work that would deliver there."""
    import torch

    if out is None and (isinstance(device, bool) or not isinstance(device, (str, int, torch.device))):
        raise TypeError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}")
    try:
        _resolve(out, shape, torch.float32, device)
    except RuntimeError as error:  # torch.device's own parse error
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}: {error}") \
            from None


def persistent_buffer_to_tensor(context: GLContext, role: str, shape: tuple[int, ...], device: Any = "cpu",
                                out: torch.Tensor | None = None, prefer: str | Prefer = "auto") -> Transfer:
    """The first bytes of the context's persistent buffer `role` (`GLContext.persistent_buffer`) as a
    float32 tensor of `shape` on `device` (or in `out`). A CUDA destination with interop available
    copies device to device through the buffer's CUDA registration, made once per buffer growth and
    kept by the context (one map, one copy, one unmap per call); else one read-back (pinned when the
    destination is CUDA)."""
    import torch

    dtype = torch.float32
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = context.persistent_buffer(role, nbytes)
    target = _resolve(out, shape, dtype, device)
    if use_interop(prefer, target, lambda: buffer_availability(buffer, target)):
        tensor = out if out is not None else torch.empty(shape, dtype=dtype, device=target)
        context.registered_buffer(role, nbytes, int(target.index)).copy_to(tensor)
        return Transfer(tensor, BridgePath.CUDA_GL)
    host = _destination(out, shape, dtype, target)
    if nbytes:
        buffer.read_into(writable_view(host), size=nbytes)
    return _deliver(host, target, out)


def level_to_tensor(pyramid: MipTexture, level: int, device: Any = "cpu", out: torch.Tensor | None = None,
                    prefer: str | Prefer = "auto") -> Transfer:
    """Pyramid level `level` as an HxWxC tensor of the image's dtype (see `Pyramid.level`), into
    `out` when given (as `buffer_to_tensor`); CUDA destinations through CUDA-GL interop where
    available (not for RGB or sRGB pyramids, see the module docstring)."""
    import torch

    check_pyramid(pyramid)
    level = non_negative_int(level, "level")
    if not 0 <= level < pyramid.levels:
        raise ValueError(f"level {level} does not exist; this pyramid has levels 0..{pyramid.levels - 1}")
    w, h = pyramid.sizes[level]
    shape, dtype = (h, w, pyramid.channels), getattr(torch, pyramid.dtype.name)
    target = _resolve(out, shape, dtype, device)
    context = pyramid.context
    if use_interop(prefer, target, lambda: texture_availability(context, target, pyramid.channels,
                                                                  pyramid.dtype.name, pyramid.srgb)):
        return _image_to_cuda(context, pyramid.texture.glo, level, out, shape, dtype, target)
    host = _destination(out, shape, dtype, target)
    context.raw.read_level(pyramid.texture.glo, level, pyramid.channels, pyramid.dtype.name,
                           host.data_ptr(), host.numel() * host.element_size())
    return _deliver(host, target, out)


def texture_to_tensor(context: GLContext, texture: moderngl.Texture, level: int = 0, device: Any = "cpu",
                      out: torch.Tensor | None = None, prefer: str | Prefer = "auto") -> Transfer:
    """Level `level` of any 2-D moderngl texture of `context` (a render target, say) as an (H, W, C)
    tensor, rows as GL stores them (row 0 first: the bottom of a rendered picture). Texture dtypes
    'f1' (uint8), 'nu2' (uint16), 'f2' (float16), 'f4' (float32). Paths as `level_to_tensor`."""
    import moderngl
    import torch

    if not isinstance(texture, moderngl.Texture):
        raise TypeError(f"texture must be a moderngl.Texture of this context (for a glmip.Pyramid use "
                        f"level_to_tensor), got {type(texture).__name__}")
    record = by_moderngl_dtype(texture.dtype)
    if record is None:
        accepted = ", ".join(f.moderngl for f in FORMATS.values())
        raise TypeError(f"texture_to_tensor reads textures of dtype {accepted}, got {texture.dtype!r}")
    name = record.dtype
    levels = max(texture.size).bit_length()
    if not isinstance(level, int) or not 0 <= level < levels:
        raise ValueError(f"level must be an int in 0..{levels - 1} for a {texture.size[0]}x{texture.size[1]} "
                         f"texture, got {level!r}")
    w, h = max(1, texture.size[0] >> level), max(1, texture.size[1] >> level)
    shape, dtype = (h, w, texture.components), getattr(torch, name)
    target = _resolve(out, shape, dtype, device)
    if use_interop(prefer, target, lambda: texture_availability(context, target, texture.components, name)):
        return _image_to_cuda(context, texture, level, out, shape, dtype, target)
    host = _destination(out, shape, dtype, target)
    context.make_current()
    try:
        texture.read_into(writable_view(host), level=level, alignment=1)
    except moderngl.Error as error:
        raise ValueError(f"level {level} of this texture is not there (moderngl: {error}); build its mipmaps "
                         "first (texture.build_mipmaps())") from None
    return _deliver(host, target, out)


def tensor_to_texture(context: GLContext, tensor: torch.Tensor, layout: str = "HWC",
                      prefer: str | Prefer = "auto") -> moderngl.Texture:
    """A new GL texture (one level) holding `tensor`: (H, W, C) or, with layout="CHW", (C, H, W);
    C in 1..4; uint8/uint16 (normalised), float16 or float32. A contiguous CPU tensor is uploaded
    straight from its memory; a CUDA tensor is copied device to device through CUDA-GL interop
    where available (C != 3; `prefer` as in the module docstring), else through one contiguous host
    copy, as are strided CPU tensors. The caller releases the texture.
    """
    import torch

    check_context(context)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor_to_texture takes a torch tensor, got {type(tensor).__name__}")
    if tensor.device.type == "meta":
        raise TypeError("a meta tensor holds no data; pass a CPU or CUDA tensor")
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"layout must be 'HWC' or 'CHW', got {layout!r}")
    if tensor.ndim == 2:
        tensor = tensor[..., None] if layout == "HWC" else tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"need a {layout} tensor (or H x W), got shape {tuple(tensor.shape)}")
    if layout == "CHW":
        tensor = tensor.permute(1, 2, 0)
    height, width, channels = tensor.shape
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in FORMATS:
        raise TypeError(f"texture data must be uint8, uint16, float16 or float32, got {tensor.dtype}")
    if not 1 <= channels <= 4 or height < 1 or width < 1:
        raise ValueError(f"need 1..4 channels and a non-empty image, got (H, W, C) = {tuple(tensor.shape)}")
    check_texture_side(context, (int(width), int(height)), "the tensor")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError("the tensor holds NaN or infinite values")
    gl = context.gl
    if use_interop(prefer, tensor.device, lambda: texture_availability(
            context, _resolve(None, (), tensor.dtype, tensor.device), int(channels), name)):
        from .gl.interop import GLImageResource

        source = tensor.detach().contiguous()
        texture = gl.texture((width, height), channels, dtype=FORMATS[name].moderngl, alignment=1)
        try:
            with GLImageResource(texture, flags="write_discard", device=source.device.index) as resource:
                resource.copy_level_from(0, source)
        except BaseException:
            texture.release()
            raise
        return texture
    host = tensor.detach().to("cpu").contiguous()
    texture = gl.texture((width, height), channels, writable_view(host), dtype=FORMATS[name].moderngl,
                         alignment=1)
    return texture
