"""`Context`: one headless OpenGL 4.5 context (EGL) that owns glmip's GL state.

Programs are compiled once per context and cached here; pyramids made through a context
are closed with it. No module-level GL state exists anywhere in glmip.
"""

from __future__ import annotations

import importlib.util
import weakref
from typing import TYPE_CHECKING, Any

import moderngl

from . import _gl, shaders

if TYPE_CHECKING:
    from .pyramid import Pyramid

REQUIRED_GL = 450


class Context:
    """A headless EGL OpenGL 4.5 core context; use as `with glmip.Context() as ctx:`.

    `device` picks the EGL device by index (`glmip info` lists them); None takes EGL's first.
    """

    def __init__(self, device: int | None = None) -> None:
        if device is not None and (not isinstance(device, int) or isinstance(device, bool) or device < 0):
            raise TypeError(f"device must be a non-negative int EGL device index or None, got {device!r}")
        devices = _gl.egl_devices()
        if device is not None and devices and device >= len(devices):
            raise ValueError(f"EGL device {device} does not exist; this machine has {len(devices)} "
                             f"(indices 0..{len(devices) - 1}, see `glmip info`)")
        try:
            self._mgl = moderngl.create_context(
                standalone=True, backend="egl", require=REQUIRED_GL, device_index=device or 0
            )
        except Exception as error:  # glcontext raises bare Exceptions
            raise RuntimeError(f"could not create a headless EGL OpenGL {REQUIRED_GL // 100}.{REQUIRED_GL % 100 // 10} "
                               f"context on device {device or 0}: {error}") from error
        self.device = device or 0
        self._egl_devices = devices
        self._egl_context = _gl.current_egl_context()  # creation made it current
        self._raw = _gl.GL()
        self._programs: dict[tuple[str, tuple[tuple[str, object], ...]], moderngl.ComputeShader] = {}
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
        return f"glmip.Context(device={self.device}, {state})"

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

    def info(self) -> dict[str, Any]:
        """Capability report: renderer, GL version, limits, compute support, interop paths."""
        gl = self.gl
        extensions = gl.extensions
        work_group = [int(v) for v in gl.info.get("GL_MAX_COMPUTE_WORK_GROUP_COUNT", (0, 0, 0))]
        return {
            "renderer": gl.info["GL_RENDERER"],
            "vendor": gl.info["GL_VENDOR"],
            "gl_version": gl.info["GL_VERSION"],
            "version_code": gl.version_code,
            "egl_device": self.device,
            "egl_devices": [{k: v for k, v in d.items() if k != "extensions"} for d in self._egl_devices],
            "max_texture_size": self.max_texture_size,
            "max_anisotropy": float(gl.max_anisotropy),
            "compute_shaders": gl.version_code >= 430,
            "max_compute_work_group_count": work_group,
            "max_shader_storage_block_size": int(gl.info["GL_MAX_SHADER_STORAGE_BLOCK_SIZE"]),
            "interop": interop_paths(gl.info["GL_VENDOR"], extensions),
        }


def interop_paths(vendor: str, extensions: set[str]) -> dict[str, dict[str, object]]:
    """Which GL -> torch paths this machine offers, each with the reason when it does not."""
    torch_found = importlib.util.find_spec("torch") is not None
    cuda = False
    if torch_found:
        import torch

        cuda = bool(torch.cuda.is_available())
    cuda_python = importlib.util.find_spec("cuda") is not None
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
        why = "cuda-python is not installed"
    else:
        why = "NVIDIA GL with CUDA and cuda-python"
    paths["cuda_gl"] = {"available": nvidia and cuda and cuda_python, "why": why}
    has_fd = "GL_EXT_memory_object_fd" in extensions
    paths["memory_object_fd"] = {
        "available": has_fd,
        "why": "GL_EXT_memory_object_fd present" if has_fd else "GL_EXT_memory_object_fd missing",
    }
    return paths
