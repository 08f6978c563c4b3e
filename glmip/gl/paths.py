"""Which path data takes between GL and torch: the one place that decides it.

`interop_paths` reports what a machine offers (read-back, pinned read-back, CUDA-GL interop,
GL memory objects), each with its reason; `use_interop` decides one transfer from the caller's
`prefer` and the availability of the path for that GL object and CUDA device, asked only when it
matters. `glmip.bridge` moves the bytes; it never decides.
"""

from __future__ import annotations

import enum
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .formats import cuda_registrable

if TYPE_CHECKING:
    import torch

__all__ = ["BridgePath", "Prefer", "interop_paths", "cuda_gl_availability", "use_interop", "buffer_availability",
           "texture_availability"]


class BridgePath(str, enum.Enum):
    READBACK = "readback"  # GL -> host tensor memory
    PINNED_READBACK = "pinned_readback"  # GL -> pinned host tensor -> CUDA tensor (async copy)
    CUDA_GL = "cuda_gl"  # GL object mapped into CUDA -> device-to-device copy (no host round trip)


class Prefer(str, enum.Enum):
    """Which path a transfer into (or out of) a CUDA tensor takes."""

    AUTO = "auto"  # CUDA-GL interop where available, else read-back
    INTEROP = "interop"  # CUDA-GL interop, or a ValueError saying why not
    READBACK = "readback"  # always through host memory

    @classmethod
    def parse(cls, value: str | Prefer) -> Prefer:
        try:
            return cls(value)
        except (ValueError, TypeError):
            raise ValueError(f"prefer must be one of {', '.join(repr(p.value) for p in cls)}, got {value!r}") from None


def _find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # the parent package is missing
        return False


def interop_paths(vendor: str, extensions: set[str]) -> dict[str, dict[str, object]]:
    """Which GL -> torch paths this machine offers, each with the reason when it does not."""
    cuda = False
    if _find_spec("torch"):
        import torch

        cuda = bool(torch.cuda.is_available())
    cuda_python = _find_spec("cuda.bindings") or _find_spec("cuda.cudart")
    nvidia = "NVIDIA" in vendor.upper()
    paths: dict[str, dict[str, object]] = {
        "readback": {"available": True, "why": "glReadPixels/glGetTexImage into host memory"},
        "pinned_readback": {
            "available": cuda,
            "why": "torch with CUDA pins the host tensor" if cuda else "no CUDA device visible to torch",
        },
    }
    if not nvidia:
        why = f"the GL vendor is {vendor!r}, not NVIDIA"
    elif not cuda:
        why = "torch sees no CUDA device"
    elif not cuda_python:
        why = "cuda-python (cuda.bindings or cuda.cudart) is not installed"
    else:
        why = "NVIDIA GL with CUDA and cuda-python"
    paths["cuda_gl"] = {"available": nvidia and cuda and cuda_python, "why": why}
    has_fd = "GL_EXT_memory_object_fd" in extensions
    paths["memory_object_fd"] = {
        "available": has_fd,
        "why": "GL_EXT_memory_object_fd present" if has_fd else "GL_EXT_memory_object_fd missing",
    }
    return paths


def cuda_gl_availability(vendor: str, cuda_index: int, gl_cuda_devices: Callable[[], tuple[list[int] | None, str]],
                         where: str = "the current GL context") -> tuple[bool, str]:
    """Whether the CUDA-GL interop path can reach CUDA device `cuda_index` from a GL context of `vendor`
    whose CUDA devices `gl_cuda_devices()` reports (asked only when everything else is in place)."""
    path = interop_paths(vendor, set())["cuda_gl"]
    if not path["available"]:
        return False, str(path["why"])
    devices, why = gl_cuda_devices()
    if devices is None:
        return False, why
    if cuda_index not in devices:
        return False, (f"{where} runs on CUDA device(s) {devices}, not on cuda:{cuda_index}; create the "
                       f"context with glmip.Context(cuda_device={cuda_index})")
    return True, f"NVIDIA GL on cuda:{cuda_index} with cuda-python"


def use_interop(prefer: str | Prefer, target: torch.device, availability: Callable[[], tuple[bool, str]]) -> bool:
    """Whether to take the CUDA-GL path to/from `target`; availability() is asked only when it matters."""
    choice = Prefer.parse(prefer)
    if choice is Prefer.READBACK:
        return False
    if target.type != "cuda":
        if choice is Prefer.INTEROP:
            raise ValueError(f"prefer='interop' moves data between GL and CUDA tensors; the tensor here is on "
                             f"{target}. Pass a CUDA device, or prefer='auto'/'readback'")
        return False
    available, why = availability()
    if not available and choice is Prefer.INTEROP:
        raise ValueError(f"prefer='interop' asked for, but the CUDA-GL interop path is not available: {why}")
    return available


def _gl_cuda_devices_of_current_context() -> tuple[list[int] | None, str]:
    from .interop import gl_cuda_devices_or_reason

    return gl_cuda_devices_or_reason()


def buffer_availability(buffer: Any, target: torch.device) -> tuple[bool, str]:
    """Whether moderngl `buffer` (of the current context) can be copied to CUDA `target` through interop."""
    return cuda_gl_availability(buffer.ctx.info["GL_VENDOR"], int(target.index), _gl_cuda_devices_of_current_context)


def texture_availability(context: Any, target: torch.device, channels: int, dtype_name: str,
                         srgb: bool = False) -> tuple[bool, str]:
    """Whether a texture of this format in `context` can be copied to/from CUDA `target` through interop."""
    registrable, why = cuda_registrable(dtype_name, channels, srgb)
    if not registrable:
        return False, why
    return context.interop_available(int(target.index))
