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
ARRAY_POOL_SHAPES = 4  # batch array-texture shapes a context keeps for reuse


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
        self._max_array_layers = self._raw.get_integer(raw.GL_MAX_ARRAY_TEXTURE_LAYERS)
        self._textures: set[int] = set()  # GL texture names made through this context and not yet deleted
        # Array textures given back by closed batches, by (levels, format, width, height): [(name, layers)]
        self._array_pool: dict[tuple[int, int, int, int], tuple[int, int]] = {}
        self._deferred: list[int] = []  # names of collected owners, deleted at this context's next use
        self._buffers: dict[str, moderngl.Buffer] = {}  # persistent buffers by role, grown geometrically
        self._registered: dict[str, Any] = {}  # CUDA registrations of those buffers, by role
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
        """Make this context current on this thread if another one (or none) is; raises if that fails.
        Deletes the textures of owners collected since the last call (see `defer_delete`)."""
        self.check_usable()
        if raw.current_egl_context() != self._egl_context:
            self._mgl.__enter__()
            if raw.current_egl_context() != self._egl_context:
                raise GLError("eglMakeCurrent did not make this glmip Context current")
        if self._deferred:
            self._drain_deferred()

    # -- textures owned by Python objects ------------------------------------------------------
    def take_array_texture(self, levels: int, internal_format: int, width: int, height: int, layers: int
                           ) -> tuple[int, int]:
        """An immutable mip-mapped 2-D array texture of at least `layers` layers: (GL name, layers it has).
        One a closed batch gave back (`give_array_texture`) when it is of this shape and large enough, so
        a run of same-shaped batches allocates its storage once; else a new one."""
        key = (levels, internal_format, width, height)
        pooled = self._array_pool.get(key)
        if pooled is not None and pooled[1] >= layers:
            del self._array_pool[key]
            return pooled
        name = self.raw.create_array_storage(levels, internal_format, width, height, layers)
        self._textures.add(name)
        return name, layers

    def give_array_texture(self, levels: int, internal_format: int, width: int, height: int, name: int,
                           layers: int) -> None:
        """Keep array texture `name` for the next batch of its shape (one per shape, the larger kept; at most
        `ARRAY_POOL_SHAPES` shapes, the oldest deleted first)."""
        key = (levels, internal_format, width, height)
        pooled = self._array_pool.pop(key, None)
        if pooled is not None:
            keep, drop = (pooled, (name, layers)) if pooled[1] >= layers else ((name, layers), pooled)
            self.delete_textures([drop[0]])
            name, layers = keep
        self._array_pool[key] = (name, layers)
        while len(self._array_pool) > ARRAY_POOL_SHAPES:
            oldest = next(iter(self._array_pool))
            self.delete_textures([self._array_pool.pop(oldest)[0]])

    def create_layer_view(self, array: int, internal_format: int, levels: int, layer: int) -> int:
        """A 2-D texture view of one layer of `array`, counted as live."""
        name = self.raw.create_layer_view(array, internal_format, levels, layer)
        self._textures.add(name)
        return name

    def delete_textures(self, names: list[int]) -> None:
        """Delete textures made by `take_array_texture`/`create_layer_view` now (on this thread)."""
        gl = self.raw
        for name in names:
            if name in self._textures:
                self._textures.discard(name)
                gl.delete_texture(name)

    def defer_delete(self, names: list[int]) -> None:
        """Queue textures for deletion at this context's next use. Safe from any thread and from a
        garbage-collection finaliser: it makes no GL call (only the context's own thread can)."""
        if not self._closed:
            self._deferred.extend(names)

    def _drain_deferred(self) -> None:
        names, self._deferred[:] = list(self._deferred), []
        for name in names:
            if name in self._textures:
                self._textures.discard(name)
                self._raw.delete_texture(name)

    @property
    def live_textures(self) -> int:
        """How many textures made through this context are in use (deferred deletions drained first; the
        array textures kept for reuse by `give_array_texture` are not counted)."""
        self.make_current()
        return len(self._textures) - len(self._array_pool)

    # -- persistent buffers ----------------------------------------------------------------------
    def persistent_buffer(self, role: str, nbytes: int) -> moderngl.Buffer:
        """This context's GL buffer for `role` (e.g. "upload", "tokens"), at least `nbytes` long: kept
        across calls and grown geometrically (x1.5, whole MiB above 1 MiB), so a run of same-shaped
        batches allocates it once. Its CUDA registration (`registered_buffer`) is dropped when it grows.
        Makes this context current, as every call that hands out an object the caller then uses does."""
        self.make_current()
        buffer = self._buffers.get(role)
        if buffer is None or buffer.size < nbytes:
            size = max(int(nbytes), 16)
            if buffer is not None:
                size = max(size, buffer.size + buffer.size // 2)
                self._drop_registration(role)
                buffer.release()
            if size > 1 << 20:
                size = -(-size // (1 << 20)) << 20
            buffer = self.gl.buffer(reserve=size)
            self._buffers[role] = buffer
        return buffer

    def registered_buffer(self, role: str, nbytes: int, device: int) -> Any:
        """`persistent_buffer(role, nbytes)` registered with CUDA device `device` once (a
        `glmip.gl.interop.GLBufferResource`), kept until the buffer grows or the context closes."""
        buffer = self.persistent_buffer(role, nbytes)
        resource = self._registered.get(role)
        if resource is None or resource.device != device:
            self._drop_registration(role)
            from .interop import GLBufferResource

            resource = GLBufferResource(buffer, device=device)
            self._registered[role] = resource
        return resource

    def _drop_registration(self, role: str) -> None:
        resource = self._registered.pop(role, None)
        if resource is not None:
            resource.close()

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
        for role in list(self._registered):
            self._drop_registration(role)
        for buffer in self._buffers.values():
            buffer.release()
        self._buffers.clear()
        self._array_pool.clear()
        self.delete_textures(list(self._textures))
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
        """The compute program of shader file `name` with `defines`, compiled once per context (which it
        makes current: the caller sets uniforms and dispatches next)."""
        self.make_current()
        key = (name, tuple(sorted(defines.items())))
        if key not in self._programs:
            try:
                self._programs[key] = self._mgl.compute_shader(shaders.source(name, defines))
            except moderngl.Error as error:
                raise GLError(f"compiling shader {name} with {defines} failed:\n{error}") from error
        return self._programs[key]

    def raster_program(self, name: str, **defines: object) -> moderngl.Program:
        """The vertex + fragment program of shader files `name`.vert and `name`.frag with `defines` (both
        stages get them), compiled once per context (which it makes current)."""
        self.make_current()
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

    @property
    def max_array_layers(self) -> int:
        """GL_MAX_ARRAY_TEXTURE_LAYERS of this device (layers of one batch texture), read once at creation."""
        return self._max_array_layers

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
