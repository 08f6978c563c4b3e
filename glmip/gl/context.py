"""`GLContext`: one headless OpenGL 4.5 context (EGL) that owns glmip's GL state.

Programs and samplers are compiled/created once per context and cached here; GL objects made
through a context (pyramids, render targets) register with it and are closed with it. No
module-level GL state exists anywhere in glmip. `glmip.Context` adds the stage conveniences
(`pyramid`, ...) on top of this class.

Convention:
    a context belongs to the thread that created it and to the process that created it: use
    from another thread raises `WrongThreadError`, use in a forked child `ForkedContextError`
    (GL state does not survive either), instead of silently returning zeros.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

import moderngl

from ..errors import ClosedError, ForkedContextError, GLError, WrongThreadError
from . import process, raw, shaders
from .devices import cuda_device_uuid, default_device, describe, is_index, is_nvidia, match_cuda_device
from .paths import cuda_gl_availability, interop_paths

__all__ = ["GLContext", "REQUIRED_GL"]

REQUIRED_GL = 450


class _Closeable(Protocol):
    def close(self) -> None: ...


class GLContext:
    """A headless EGL OpenGL 4.5 core context; use as `with glmip.Context() as ctx:`.

    `device` picks the EGL device by index (`glmip info` lists them); `cuda_device` picks the EGL
    device that is torch's CUDA device of that index (matched by UUID, else EGL_NV_device_cuda),
    which the CUDA-GL interop path of `glmip.bridge` needs. With both, they must agree. With
    neither: the first NVIDIA EGL device, else EGL's first (see `glmip.gl.devices.default_device`).
    """

    def __init__(self, device: int | None = None, cuda_device: int | None = None) -> None:
        if device is not None and not is_index(device):
            raise TypeError(f"device must be a non-negative int EGL device index or None, got {device!r}")
        if cuda_device is not None and not is_index(cuda_device):
            raise TypeError(f"cuda_device must be a non-negative int CUDA device index or None, got {cuda_device!r}")
        process.prepare_process()  # before the first EGL display: see glmip.gl.process
        devices = raw.egl_devices()
        if device is not None and devices and device >= len(devices):
            raise ValueError(f"EGL device {device} does not exist; this machine has {len(devices)} "
                             f"(indices 0..{len(devices) - 1}, see `glmip info`)")
        if cuda_device is not None:
            matched = match_cuda_device(devices, cuda_device, cuda_device_uuid(cuda_device))
            if device is not None and device != matched:
                raise ValueError(f"device={device} and cuda_device={cuda_device} disagree: CUDA device {cuda_device} "
                                 f"is EGL device {matched}. {describe(devices)}")
            device = matched
        chosen = default_device(devices) if device is None else device
        try:
            self._mgl = process.create_gl_context(chosen, REQUIRED_GL)
        except ForkedContextError:
            raise
        except Exception as error:  # glcontext raises bare Exceptions
            raise GLError(f"could not create a headless EGL OpenGL {REQUIRED_GL // 100}.{REQUIRED_GL % 100 // 10} "
                          f"context on EGL device {chosen}: {error}. {describe(devices)}") from error
        self.device = chosen
        self.cuda_device = cuda_device
        self._egl_devices = devices
        self._gl_cuda_devices: tuple[list[int] | None, str] | None = None
        self._egl_context = raw.current_egl_context()  # creation made it current
        self._thread = threading.get_ident()
        self._pid = os.getpid()
        self._raw = raw.GL()
        self._max_texture_size = self._raw.get_integer(raw.GL_MAX_TEXTURE_SIZE)
        self._programs: dict[tuple[str, tuple[tuple[str, object], ...]], moderngl.ComputeShader] = {}
        self._raster_programs: dict[tuple[str, tuple[tuple[str, object], ...]], moderngl.Program] = {}
        self._samplers: dict[tuple[int, int, int, float], int] = {}
        self._owned: weakref.WeakSet[Any] = weakref.WeakSet()
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
    def raw(self) -> raw.GL:
        """glmip's raw GL calls, with this context made current on this thread."""
        self.make_current()
        return self._raw

    def check_usable(self) -> None:
        """Raise unless this context is open, in its own process and on its own thread."""
        if self._closed:
            raise ClosedError("this glmip Context is closed; create a new one")
        process.check_same_process(self._pid)
        if threading.get_ident() != self._thread:
            raise WrongThreadError(
                "this glmip Context belongs to the thread that created it; a GL context is current on one "
                "thread only. Create a Context in this thread, or call from the creating thread")

    # The name the stages use for the open check.
    check_open = check_usable

    def make_current(self) -> None:
        """Make this context current on this thread if another one (or none) is; raises if that fails."""
        self.check_usable()
        if raw.current_egl_context() != self._egl_context:
            self._mgl.__enter__()
            if raw.current_egl_context() != self._egl_context:
                raise GLError("eglMakeCurrent did not make this glmip Context current")

    def adopt(self, resource: _Closeable) -> None:
        """Close `resource` when this context closes (held weakly: it may close, or go, first)."""
        self._owned.add(resource)

    def close(self) -> None:
        """Release every owned GL object, program, sampler and the GL context itself. Safe to call twice.

        From a forked child or another thread it only marks the context closed: the GL objects
        belong to the creating process/thread, which is where they can be released."""
        if self._closed:
            return
        try:
            self.check_usable()
        except (ForkedContextError, WrongThreadError):
            self._closed = True
            return
        self.make_current()
        for resource in list(self._owned):
            resource.close()
        for program in self._programs.values():
            program.release()
        self._programs.clear()
        for raster in self._raster_programs.values():
            raster.release()
        self._raster_programs.clear()
        for name in self._samplers.values():
            self._raw.delete_sampler(name)
        self._samplers.clear()
        process.forget_context(self._egl_context)
        self._mgl.release()
        self._closed = True

    def __enter__(self) -> GLContext:
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
        self.check_usable()
        key = (name, tuple(sorted(defines.items())))
        if key not in self._programs:
            try:
                self._programs[key] = self._mgl.compute_shader(shaders.source(name, defines))
            except moderngl.Error as error:
                raise GLError(f"compiling shader {name} with {defines} failed:\n{error}") from error
        return self._programs[key]

    def raster_program(self, name: str, **defines: object) -> moderngl.Program:
        """The vertex + fragment program of shader files `name`.vert and `name`.frag with `defines` (both
        stages get them), compiled once per context."""
        self.check_usable()
        key = (name, tuple(sorted(defines.items())))
        if key not in self._raster_programs:
            try:
                self._raster_programs[key] = self._mgl.program(
                    vertex_shader=shaders.source(f"{name}.vert", defines),
                    fragment_shader=shaders.source(f"{name}.frag", defines))
            except moderngl.Error as error:
                raise GLError(f"compiling shaders {name}.vert/.frag with {defines} failed:\n{error}") from error
        return self._raster_programs[key]

    def sampler(self, min_filter: int, mag_filter: int, wrap: int, anisotropy: float = 1.0) -> int:
        """A GL sampler object with these parameters, created once per context."""
        key = (min_filter, mag_filter, wrap, float(anisotropy))
        if key not in self._samplers:
            self._samplers[key] = self.raw.create_sampler(*key)
        return self._samplers[key]

    # -- capabilities -------------------------------------------------------------------
    @property
    def max_texture_size(self) -> int:
        """GL_MAX_TEXTURE_SIZE of this device, read once at creation."""
        return self._max_texture_size

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
