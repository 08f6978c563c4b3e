"""EGL devices and their CUDA twins: which EGL device a Context opens.

EGL and CUDA number devices differently (CUDA_VISIBLE_DEVICES reorders only CUDA), so
`Context(cuda_device=i)` finds the EGL device of torch's CUDA device i by UUID
(EGL_EXT_device_persistent_id against `torch.cuda.get_device_properties(i).uuid`), else by the
ordinal EGL_NV_device_cuda reports; never by index. These are pure functions over device lists as
`glmip.gl.raw.egl_devices()` reports them, so the policy is tested without the devices.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_index", "normalize_uuid", "is_nvidia", "default_device", "describe", "match_cuda_device",
           "cuda_device_uuid"]


def is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def normalize_uuid(value: Any) -> str | None:
    """A device UUID as 32 lowercase hex digits, from 16 bytes, a list of 16 ints (torch's
    `_CUuuid.bytes`), an object with `.bytes`, or a string such as "GPU-1a2b...", "1a2b3c4d-..." ;
    None for None or anything that is not 16 bytes."""
    if value is None:
        return None
    if hasattr(value, "bytes") and not isinstance(value, (bytes, bytearray, str)):
        value = value.bytes
    if isinstance(value, (bytes, bytearray)) or (isinstance(value, (list, tuple)) and
                                                 all(isinstance(v, int) and 0 <= v < 256 for v in value)):
        raw = bytes(value)
        return raw.hex() if len(raw) == 16 else None
    text = str(value).strip().lower().removeprefix("gpu-").replace("-", "")
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None


def is_nvidia(device: dict[str, Any]) -> bool:
    """Whether an EGL device (as `raw.egl_devices()` reports it) is driven by NVIDIA's driver."""
    if "EGL_NV_device_cuda" in device.get("extensions", ()) or device.get("cuda_device") is not None:
        return True
    names = " ".join(str(device.get(key) or "") for key in ("vendor", "renderer", "driver"))
    return "nvidia" in names.lower()


def default_device(egl_devices: list[dict[str, Any]]) -> int:
    """The EGL device a Context takes when none is named: the first NVIDIA device, else EGL's first (0).

    Mesa's software device (llvmpipe) is often listed first even on a machine with an NVIDIA GPU."""
    for position, device in enumerate(egl_devices):
        if is_nvidia(device):
            return int(device.get("index", position))
    return 0


def describe(egl_devices: list[dict[str, Any]]) -> str:
    if not egl_devices:
        return "EGL lists no devices"
    parts = []
    for position, d in enumerate(egl_devices):
        name = d.get("renderer") or d.get("vendor") or d.get("driver") or d.get("drm_file") or "unnamed"
        parts.append(f"{d.get('index', position)}: {name} (uuid {d.get('uuid') or 'not exposed'}, "
                     f"EGL_CUDA_DEVICE_NV {d.get('cuda_device', 'not exposed')})")
    return "EGL devices: " + "; ".join(parts)


def match_cuda_device(egl_devices: list[dict[str, Any]], cuda_index: int, cuda_uuid: Any = None) -> int:
    """The EGL device index of CUDA device `cuda_index` (whose UUID is `cuda_uuid`, any form
    `normalize_uuid` takes, or None).

    By UUID where both sides have one (EGL_EXT_device_persistent_id); otherwise by the ordinal
    EGL_NV_device_cuda reports. Raises ValueError, listing every EGL device, when none matches or
    the match is ambiguous. Never matches by position in the list.
    """
    if not is_index(cuda_index):
        raise TypeError(f"cuda_index must be a non-negative int, got {cuda_index!r}")
    uuid = normalize_uuid(cuda_uuid)
    if uuid is not None:
        by_uuid = [d for d in egl_devices if normalize_uuid(d.get("uuid")) == uuid]
        if len(by_uuid) == 1:
            return int(by_uuid[0]["index"])
        if len(by_uuid) > 1:
            raise ValueError(f"{len(by_uuid)} EGL devices report the UUID {uuid} of CUDA device {cuda_index}; "
                             f"pass Context(device=...) to choose. {describe(egl_devices)}")
    by_ordinal = [d for d in egl_devices if d.get("cuda_device") == cuda_index]
    if len(by_ordinal) == 1:
        return int(by_ordinal[0]["index"])
    what = f"CUDA device {cuda_index}" + (f" (uuid {uuid})" if uuid else "")
    if len(by_ordinal) > 1:
        raise ValueError(f"{len(by_ordinal)} EGL devices report EGL_CUDA_DEVICE_NV {cuda_index}; pass "
                         f"Context(device=...) to choose. {describe(egl_devices)}")
    raise ValueError(f"no EGL device matches {what}, neither by UUID nor by EGL_CUDA_DEVICE_NV; is the NVIDIA "
                     f"EGL driver installed (__EGL_VENDOR_LIBRARY_FILENAMES)? {describe(egl_devices)}")


def cuda_device_uuid(cuda_index: int) -> str | None:
    """torch's UUID of CUDA device `cuda_index` (32 hex digits), None where torch does not expose one.
    Raises ValueError when torch has no CUDA or no such device."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"cuda_device={cuda_index} asked for, but torch is not installed") from None
    if not torch.cuda.is_available():
        raise ValueError(f"cuda_device={cuda_index} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
    count = torch.cuda.device_count()
    if cuda_index >= count:
        raise ValueError(f"cuda_device={cuda_index} does not exist; torch sees {count} CUDA device(s) "
                         f"(0..{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return normalize_uuid(getattr(torch.cuda.get_device_properties(cuda_index), "uuid", None))
