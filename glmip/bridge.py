"""GL buffers and texture levels into torch tensors (and tensors into GL textures), and which
path each transfer took.

On any machine: read-back straight into the tensor's own memory (no numpy or bytes copy in
between), or into a caller's `out` tensor; the host tensor is pinned when the destination is a
CUDA device, so the upload that follows is asynchronous. The CUDA-GL interop path (no host round trip) is not built yet;
`Context.info()["interop"]` says whether this machine could offer it and why.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import moderngl
    import torch

    from .context import Context
    from .pyramid import Pyramid


class BridgePath(str, enum.Enum):
    READBACK = "readback"  # GL -> host tensor memory
    PINNED_READBACK = "pinned_readback"  # GL -> pinned host tensor -> CUDA tensor (async copy)


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


def _finish(host: torch.Tensor, target: torch.device) -> Transfer:
    if target.type == "cuda":
        return Transfer(host.to(target, non_blocking=True), BridgePath.PINNED_READBACK)
    return Transfer(host, BridgePath.READBACK)


def _destination(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: Any
                 ) -> tuple[torch.Tensor, torch.device]:
    """The host tensor GL writes into: `out` itself when it is a contiguous CPU tensor, else a new
    (pinned, when the destination is CUDA) one."""
    import torch

    if out is None:
        target, pinned = _target(device)
        return _host_tensor(shape, dtype, pinned), target
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {shape} and dtype {dtype}, got {tuple(out.shape)} {out.dtype}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    target, pinned = _target(out.device)
    return (out if target.type == "cpu" else _host_tensor(shape, dtype, pinned)), target


def _deliver(host: torch.Tensor, target: torch.device, out: torch.Tensor | None) -> Transfer:
    if out is not None and target.type == "cuda":
        out.copy_(host, non_blocking=True)
        return Transfer(out, BridgePath.PINNED_READBACK)
    if out is not None:
        return Transfer(out, BridgePath.READBACK)
    return _finish(host, target)


def buffer_to_tensor(buffer: moderngl.Buffer, shape: tuple[int, ...], dtype: Any = None, device: Any = "cpu",
                     offset: int = 0, out: torch.Tensor | None = None) -> Transfer:
    """The bytes of GL `buffer` from `offset` as a tensor of `shape` and `dtype` (default float32).

    With `out` (a contiguous tensor of that shape and dtype, CPU or CUDA) the data lands in it, so
    repeated transfers reuse memory that is already paged in (several times faster than a fresh
    tensor on first touch; see bench/bridge.py).
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    host, target = _destination(out, shape, dtype, device)
    nbytes = host.numel() * host.element_size()
    if offset < 0 or offset + nbytes > buffer.size:
        raise ValueError(f"{nbytes} bytes from offset {offset} do not fit a GL buffer of {buffer.size} bytes")
    if nbytes:
        buffer.read_into(writable_view(host), size=nbytes, offset=offset)
    return _deliver(host, target, out)


def level_to_tensor(pyramid: Pyramid, level: int, device: Any = "cpu", out: torch.Tensor | None = None) -> Transfer:
    """Pyramid level `level` as an HxWxC tensor of the image's dtype (see `Pyramid.level`), into
    `out` when given (as `buffer_to_tensor`)."""
    import torch

    if not 0 <= level < pyramid.levels:
        raise ValueError(f"level {level} does not exist; this pyramid has levels 0..{pyramid.levels - 1}")
    w, h = pyramid.sizes[level]
    host, target = _destination(out, (h, w, pyramid.channels), getattr(torch, pyramid.dtype.name), device)
    pyramid.context.raw.read_level(pyramid.texture.glo, level, pyramid.channels, pyramid.dtype.name,
                                   host.data_ptr(), host.numel() * host.element_size())
    return _deliver(host, target, out)


# moderngl's texture dtypes for the tensor dtypes a texture can hold (unsigned ints normalised).
_TEXTURE_DTYPES = {"uint8": "f1", "uint16": "nu2", "float16": "f2", "float32": "f4"}


def tensor_to_texture(context: Context, tensor: torch.Tensor, layout: str = "HWC") -> moderngl.Texture:
    """A new GL texture (one level) holding `tensor`: (H, W, C) or, with layout="CHW", (C, H, W);
    C in 1..4; uint8/uint16 (normalised), float16 or float32. A contiguous CPU tensor is uploaded
    straight from its memory; other tensors (CUDA, strided) go through one contiguous host copy.
    The caller releases the texture.
    """
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor_to_texture takes a torch tensor, got {type(tensor).__name__}")
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
    if name not in _TEXTURE_DTYPES:
        raise TypeError(f"texture data must be uint8, uint16, float16 or float32, got {tensor.dtype}")
    if not 1 <= channels <= 4 or height < 1 or width < 1:
        raise ValueError(f"need 1..4 channels and a non-empty image, got (H, W, C) = {tuple(tensor.shape)}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError("the tensor holds NaN or infinite values")
    host = tensor.detach().to("cpu").contiguous()
    gl = context.gl
    texture = gl.texture((width, height), channels, writable_view(host), dtype=_TEXTURE_DTYPES[name],
                         alignment=1)
    return texture
