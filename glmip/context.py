"""`Context`: one headless OpenGL 4.5 context (EGL) that owns glmip's GL state.

Programs are compiled once per context and cached here; pyramids made through a context
are closed with it. No module-level GL state exists anywhere in glmip.

Device choice: EGL and CUDA number devices differently (CUDA_VISIBLE_DEVICES reorders only
CUDA), so `Context(cuda_device=i)` finds the EGL device of torch's CUDA device i by UUID
(EGL_EXT_device_persistent_id against `torch.cuda.get_device_properties(i).uuid`), else by the
ordinal EGL_NV_device_cuda reports; never by index. The pure functions `match_cuda_device` and
`default_device` hold that logic, on device lists as `_gl.egl_devices()` reports them.
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import moderngl

from . import _gl, shaders

if TYPE_CHECKING:
    from .pyramid import Pyramid

REQUIRED_GL = 450


def _is_index(value: object) -> bool:
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
    """Whether an EGL device (as `_gl.egl_devices()` reports it) is driven by NVIDIA's driver."""
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


def _describe(egl_devices: list[dict[str, Any]]) -> str:
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
    if not _is_index(cuda_index):
        raise TypeError(f"cuda_index must be a non-negative int, got {cuda_index!r}")
    uuid = normalize_uuid(cuda_uuid)
    if uuid is not None:
        by_uuid = [d for d in egl_devices if normalize_uuid(d.get("uuid")) == uuid]
        if len(by_uuid) == 1:
            return int(by_uuid[0]["index"])
        if len(by_uuid) > 1:
            raise ValueError(f"{len(by_uuid)} EGL devices report the UUID {uuid} of CUDA device {cuda_index}; "
                             f"pass Context(device=...) to choose. {_describe(egl_devices)}")
    by_ordinal = [d for d in egl_devices if d.get("cuda_device") == cuda_index]
    if len(by_ordinal) == 1:
        return int(by_ordinal[0]["index"])
    what = f"CUDA device {cuda_index}" + (f" (uuid {uuid})" if uuid else "")
    if len(by_ordinal) > 1:
        raise ValueError(f"{len(by_ordinal)} EGL devices report EGL_CUDA_DEVICE_NV {cuda_index}; pass "
                         f"Context(device=...) to choose. {_describe(egl_devices)}")
    raise ValueError(f"no EGL device matches {what}, neither by UUID nor by EGL_CUDA_DEVICE_NV; is the NVIDIA "
                     f"EGL driver installed (__EGL_VENDOR_LIBRARY_FILENAMES)? {_describe(egl_devices)}")


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


class Context:
    """A headless EGL OpenGL 4.5 core context; use as `with glmip.Context() as ctx:`.

    `device` picks the EGL device by index (`glmip info` lists them); `cuda_device` picks the EGL
    device that is torch's CUDA device of that index (matched by UUID, else EGL_NV_device_cuda),
    which the CUDA-GL interop path of `glmip.bridge` needs. With both, they must agree. With
    neither: the first NVIDIA EGL device, else EGL's first (see `default_device`).
    """

    def __init__(self, device: int | None = None, cuda_device: int | None = None) -> None:
        if device is not None and not _is_index(device):
            raise TypeError(f"device must be a non-negative int EGL device index or None, got {device!r}")
        if cuda_device is not None and not _is_index(cuda_device):
            raise TypeError(f"cuda_device must be a non-negative int CUDA device index or None, got {cuda_device!r}")
        devices = _gl.egl_devices()
        if device is not None and devices and device >= len(devices):
            raise ValueError(f"EGL device {device} does not exist; this machine has {len(devices)} "
                             f"(indices 0..{len(devices) - 1}, see `glmip info`)")
        if cuda_device is not None:
            matched = match_cuda_device(devices, cuda_device, cuda_device_uuid(cuda_device))
            if device is not None and device != matched:
                raise ValueError(f"device={device} and cuda_device={cuda_device} disagree: CUDA device {cuda_device} "
                                 f"is EGL device {matched}. {_describe(devices)}")
            device = matched
        chosen = default_device(devices) if device is None else device
        try:
            self._mgl = moderngl.create_context(
                standalone=True, backend="egl", require=REQUIRED_GL, device_index=chosen
            )
        except Exception as error:  # glcontext raises bare Exceptions
            raise RuntimeError(f"could not create a headless EGL OpenGL {REQUIRED_GL // 100}.{REQUIRED_GL % 100 // 10} "
                               f"context on EGL device {chosen}: {error}. {_describe(devices)}") from error
        self.device = chosen
        self.cuda_device = cuda_device
        self._egl_devices = devices
        self._gl_cuda_devices: tuple[list[int] | None, str] | None = None
        self._egl_context = _gl.current_egl_context()  # creation made it current
        self._raw = _gl.GL()
        self._programs: dict[tuple[str, tuple[tuple[str, object], ...]], moderngl.ComputeShader] = {}
        self._raster_programs: dict[tuple[str, tuple[tuple[str, object], ...]], moderngl.Program] = {}
        self._samplers: dict[tuple[int, int, int, float], int] = {}
        self._pyramids: weakref.WeakSet[Pyramid] = weakref.WeakSet()
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def gl(self) -> moderngl.Context:
        """The underlying moderngl context, made current on this thread (raises if closed)."""
        self.make_current()
        return self._mgl

    @property
    def raw(self) -> _gl.GL:
        """glmip's raw GL calls, with this context made current on this thread."""
        self.make_current()
        return self._raw

    def make_current(self) -> None:
        """Make this context current on this thread if another one (or none) is."""
        self.check_open()
        if _gl.current_egl_context() != self._egl_context:
            self._mgl.__enter__()

    def check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this glmip Context is closed; create a new one")

    def close(self) -> None:
        """Release every pyramid, program and the GL context itself. Safe to call twice."""
        if self._closed:
            return
        self.make_current()
        for pyramid in list(self._pyramids):
            pyramid.close()
        for program in self._programs.values():
            program.release()
        self._programs.clear()
        for raster in self._raster_programs.values():
            raster.release()
        self._raster_programs.clear()
        for name in self._samplers.values():
            self._raw.delete_sampler(name)
        self._samplers.clear()
        self._mgl.release()
        self._closed = True

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._mgl.info["GL_RENDERER"]
        cuda = "" if self.cuda_device is None else f", cuda_device={self.cuda_device}"
        return f"glmip.Context(device={self.device}{cuda}, {state})"

    # -- programs -----------------------------------------------------------------------
    def program(self, name: str, **defines: object) -> moderngl.ComputeShader:
        """The compute program of shader file `name` with `defines`, compiled once per context."""
        self.check_open()
        key = (name, tuple(sorted(defines.items())))
        if key not in self._programs:
            try:
                self._programs[key] = self._mgl.compute_shader(shaders.source(name, defines))
            except moderngl.Error as error:
                raise RuntimeError(f"compiling shader {name} with {defines} failed:\n{error}") from error
        return self._programs[key]

    def raster_program(self, name: str, **defines: object) -> moderngl.Program:
        """The vertex + fragment program of shader files `name`.vert and `name`.frag with `defines` (both
        stages get them), compiled once per context."""
        self.check_open()
        key = (name, tuple(sorted(defines.items())))
        if key not in self._raster_programs:
            try:
                self._raster_programs[key] = self._mgl.program(
                    vertex_shader=shaders.source(f"{name}.vert", defines),
                    fragment_shader=shaders.source(f"{name}.frag", defines))
            except moderngl.Error as error:
                raise RuntimeError(f"compiling shaders {name}.vert/.frag with {defines} failed:\n{error}") from error
        return self._raster_programs[key]

    def sampler(self, min_filter: int, mag_filter: int, wrap: int, anisotropy: float = 1.0) -> int:
        """A GL sampler object with these parameters, created once per context."""
        key = (min_filter, mag_filter, wrap, float(anisotropy))
        if key not in self._samplers:
            self._samplers[key] = self.raw.create_sampler(*key)
        return self._samplers[key]

    # -- pyramids -----------------------------------------------------------------------
    def pyramid(self, image: Any, method: str = "hardware", srgb: bool = False) -> Pyramid:
        """Upload `image` and build its full mip chain; see `glmip.Pyramid`."""
        from .pyramid import Pyramid

        pyramid = Pyramid(self, image, method=method, srgb=srgb)
        self._pyramids.add(pyramid)
        return pyramid

    # -- capabilities -------------------------------------------------------------------
    @property
    def max_texture_size(self) -> int:
        return int(self.gl.info["GL_MAX_TEXTURE_SIZE"])

    def gl_cuda_devices(self) -> tuple[list[int] | None, str]:
        """The CUDA devices (torch's numbering) that run this GL context, as CUDA itself reports them
        (cudaGLGetDevices), or None with the reason when that cannot be asked here. Asked once."""
        if self._gl_cuda_devices is None:
            vendor = self.gl.info["GL_VENDOR"]
            if "NVIDIA" not in vendor.upper():
                self._gl_cuda_devices = (None, f"the GL vendor is {vendor!r}, not NVIDIA")
            else:
                from . import interop

                self._gl_cuda_devices = interop.gl_cuda_devices_or_reason()
        return self._gl_cuda_devices

    def interop_available(self, cuda_index: int) -> tuple[bool, str]:
        """Whether the CUDA-GL interop path can move data between this context and CUDA device
        `cuda_index`, and why (or why not)."""
        return cuda_gl_availability(self.gl.info["GL_VENDOR"], cuda_index, self.gl_cuda_devices,
                                    f"EGL device {self.device}")

    def info(self) -> dict[str, Any]:
        """Capability report: renderer, GL version, limits, compute support, EGL devices (uuid, CUDA
        ordinal), the chosen one, the CUDA devices behind this context, interop paths."""
        gl = self.gl
        extensions = gl.extensions
        work_group = [int(v) for v in gl.info.get("GL_MAX_COMPUTE_WORK_GROUP_COUNT", (0, 0, 0))]
        gl_cuda, gl_cuda_why = self.gl_cuda_devices()
        return {
            "renderer": gl.info["GL_RENDERER"],
            "vendor": gl.info["GL_VENDOR"],
            "gl_version": gl.info["GL_VERSION"],
            "version_code": gl.version_code,
            "egl_device": self.device,
            "cuda_device": self.cuda_device,
            "gl_cuda_devices": gl_cuda,
            "gl_cuda_devices_why": gl_cuda_why,
            "egl_devices": [{"uuid": None, "cuda_device": None,
                             **{k: v for k, v in d.items() if k != "extensions"},
                             "nvidia": is_nvidia(d), "chosen": d.get("index") == self.device}
                            for d in self._egl_devices],
            "max_texture_size": self.max_texture_size,
            "max_anisotropy": float(gl.max_anisotropy),
            "compute_shaders": gl.version_code >= 430,
            "max_compute_work_group_count": work_group,
            "max_shader_storage_block_size": int(gl.info["GL_MAX_SHADER_STORAGE_BLOCK_SIZE"]),
            "interop": interop_paths(gl.info["GL_VENDOR"], extensions),
        }


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
