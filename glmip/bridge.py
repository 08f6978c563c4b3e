"""GL buffers and texture levels into torch tensors, and which path each transfer took.

On any machine: read-back straight into the tensor's own memory (no numpy or bytes copy in
between); the host tensor is pinned when the destination is a CUDA device, so the upload that
follows is asynchronous. The CUDA-GL interop path (no host round trip) is not built yet;
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


def buffer_to_tensor(buffer: moderngl.Buffer, shape: tuple[int, ...], dtype: Any = None, device: Any = "cpu",
                     offset: int = 0) -> Transfer:
    """The bytes of GL `buffer` from `offset` as a tensor of `shape` and `dtype` (default float32)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    target, pinned = _target(device)
    host = _host_tensor(shape, dtype, pinned)
    nbytes = host.numel() * host.element_size()
    if offset < 0 or offset + nbytes > buffer.size:
        raise ValueError(f"{nbytes} bytes from offset {offset} do not fit a GL buffer of {buffer.size} bytes")
    if nbytes:
        buffer.read_into(writable_view(host), size=nbytes, offset=offset)
    return _finish(host, target)


def level_to_tensor(pyramid: Pyramid, level: int, device: Any = "cpu") -> Transfer:
    """Pyramid level `level` as an HxWxC tensor of the image's dtype (see `Pyramid.level`)."""
    import torch

    target, pinned = _target(device)
    if not 0 <= level < pyramid.levels:
        raise ValueError(f"level {level} does not exist; this pyramid has levels 0..{pyramid.levels - 1}")
    w, h = pyramid.sizes[level]
    host = _host_tensor((h, w, pyramid.channels), getattr(torch, pyramid.dtype.name), pinned)
    pyramid.context.raw.read_level(pyramid.texture.glo, level, pyramid.channels, pyramid.dtype.name,
                                   host.data_ptr(), host.numel() * host.element_size())
    return _finish(host, target)
