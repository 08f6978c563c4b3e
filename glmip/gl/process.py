"""What a process must get right around glmip's GL libraries: the order they load in, and fork.

Two hazards, both from Mesa's llvmpipe (the software OpenGL this runs on without a GPU):

1. Clashing LLVMs. Mesa's DRI loader opens its driver `swrast_dri.so` with RTLD_GLOBAL, so the
   driver's dependency `libLLVM-15.so.1` joins the process's global symbol scope. A library
   loaded later that carries its own LLVM with default-visibility symbols and no -Bsymbolic,
   such as triton's `libtriton.so` (every CUDA build of torch ships triton; timm, torch._dynamo
   and torch.compile import it), then binds its own LLVM calls to Mesa's LLVM 15 instead:
   ld.so finds the global definition first. Its first static initialiser calls the wrong
   `llvm::DebugCounter::instance()` and frees garbage: a segfault inside `import timm`.
   `preload_llvm_libraries` loads such libraries (RTLD_NOW | RTLD_LOCAL) before the first EGL
   display exists, so all their relocations bind to themselves; Python's later import of the
   same file reuses the loaded copy.

2. fork. A forked child has only the thread that forked. An EGL display that the parent
   initialised holds llvmpipe's screen, whose rasterizer and compute threads stayed behind in
   the parent: any draw or dispatch in the child, on an inherited context or on a new context
   of the same display, waits for them forever. So a Context refuses to run in a process other
   than the one that created it (`ForkedContextError`), and `create_gl_context` gives a forked
   child a display its ancestors never initialised: the device platform where that is fresh,
   else Mesa's surfaceless platform (a display of its own, with threads of its own). Before a
   fork, the GL work queued on the forking thread is finished, so the child inherits no
   half-submitted llvmpipe scene.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from pathlib import Path

import moderngl

from ..errors import ForkedContextError
from . import raw as _gl

# (Python package, path of the library inside it) for libraries that carry their own LLVM.
__all__ = ["prepare_process", "check_same_process", "forget_context", "create_gl_context", "preload_llvm_libraries",
           "SurfacelessContext", "LLVM_LIBRARIES"]

LLVM_LIBRARIES: tuple[tuple[str, str], ...] = (("triton", "_C/libtriton.so"),)

EGL_PLATFORM_DEVICE_EXT = 0x313F
EGL_PLATFORM_SURFACELESS_MESA = 0x31DD
_EGL_NONE = 0x3038
_EGL_SURFACE_TYPE = 0x3033
_EGL_PBUFFER_BIT = 0x0001
_EGL_RENDERABLE_TYPE = 0x3040
_EGL_OPENGL_BIT = 0x0008
_EGL_OPENGL_API = 0x30A2
_EGL_DRAW = 0x3059
_EGL_READ = 0x305A
_EGL_CONTEXT_MAJOR_VERSION = 0x3098
_EGL_CONTEXT_MINOR_VERSION = 0x30FB
_EGL_CONTEXT_OPENGL_PROFILE_MASK = 0x30FD
_EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT = 0x0001


_lock = threading.Lock()
_prepared_pid: int | None = None
_preloaded: list[str] = []
_libraries: list[ctypes.CDLL] = []  # kept so the preloaded libraries stay loaded
# EGL displays initialised so far, (platform, device index) -> pid of the process that did it;
# a fork copies this table, so a child can tell its ancestors' displays from its own.
_displays: dict[tuple[int, int], int] = {}
_renderers: dict[int, str] = {}  # EGL device index -> GL_RENDERER seen on it
_contexts: dict[int, int] = {}  # EGL context handle -> pid of the process that created it


def preload_llvm_libraries() -> list[str]:
    """Load every installed library of `LLVM_LIBRARIES` that is not loaded yet, RTLD_NOW | RTLD_LOCAL,
    without importing its Python package; returns the paths loaded now. A library that fails to
    load is left to its package's own import, which reports the failure there."""
    loaded = []
    for package, relative in LLVM_LIBRARIES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file() or str(path) in _preloaded:
            continue
        try:
            _libraries.append(ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL))
        except OSError:
            continue
        _preloaded.append(str(path))
        loaded.append(str(path))
    return loaded


def prepare_process() -> None:
    """Once per process, before its first EGL display: preload `LLVM_LIBRARIES` and register the
    before-fork hook. Cheap after the first call."""
    global _prepared_pid
    if _prepared_pid is not None:
        return
    with _lock:
        if _prepared_pid is None:
            preload_llvm_libraries()
            os.register_at_fork(before=_finish_before_fork)
            _prepared_pid = os.getpid()


def _finish_before_fork() -> None:
    """glFinish on the forking thread's current GL context when this process created it (one inherited
    from an ancestor would hang)."""
    if _contexts and _contexts.get(_gl.current_egl_context()) == os.getpid():
        _gl._proc("glFinish", None)()


def forget_context(handle: int) -> None:
    """Drop EGL context `handle` from this process's table (its Context is closing)."""
    _contexts.pop(handle, None)


def check_same_process(owner_pid: int) -> None:
    """Raise ForkedContextError unless this is process `owner_pid` (the one that created the Context)."""
    if os.getpid() != owner_pid:
        raise ForkedContextError(
            f"this glmip Context was created in process {owner_pid} and this is process {os.getpid()}, forked "
            "from it; its GL state stays in the parent and would hang here. Create a new glmip.Context() in "
            "this process instead (e.g. lazily in each DataLoader worker), or start workers with 'spawn'")


def inherited(platform: int, device: int) -> bool:
    """Whether the EGL display of (`platform`, `device`) was initialised by an ancestor of this
    process, not by this process (unusable here: its driver threads stayed in the ancestor)."""
    pid = _displays.get((platform, device))
    return pid is not None and pid != os.getpid()


def create_gl_context(device: int, require: int) -> moderngl.Context:
    """A standalone moderngl context of GL version >= `require` on EGL device `device`, made current.

    On the device platform (glcontext's EGL backend), unless an ancestor process initialised that
    display; then on a surfaceless display of this process's own, provided it reaches the same
    renderer. Raises ForkedContextError when every usable display is inherited."""
    prepare_process()
    if not inherited(EGL_PLATFORM_DEVICE_EXT, device):
        gl = moderngl.create_context(standalone=True, backend="egl", require=require, device_index=device)
        _displays.setdefault((EGL_PLATFORM_DEVICE_EXT, device), os.getpid())
        if device not in _renderers:  # asked once: moderngl keeps every `info` dict it builds
            _renderers[device] = gl.info["GL_RENDERER"]
        _contexts[_gl.current_egl_context()] = os.getpid()
        return gl
    if inherited(EGL_PLATFORM_SURFACELESS_MESA, 0):
        raise ForkedContextError(
            f"process {os.getpid()} inherited every EGL display glmip can open for device {device} (the device and "
            "the surfaceless one) from its ancestors, where llvmpipe's threads stay; start this process with "
            "'spawn' (or fork it from a process that has no glmip Context)")
    loader = SurfacelessContext(require)
    try:
        gl = moderngl.create_context(require=require, context=loader)
    except BaseException:
        loader.release()
        raise
    _displays.setdefault((EGL_PLATFORM_SURFACELESS_MESA, 0), os.getpid())
    renderer, expected = gl.info["GL_RENDERER"], _renderers.get(device)
    if expected is not None and renderer != expected:
        gl.release()
        raise ForkedContextError(
            f"EGL device {device} ({expected}) was initialised by a parent process, and the surfaceless display this "
            f"forked process can open instead runs on {renderer}; start this process with 'spawn'")
    _contexts[_gl.current_egl_context()] = os.getpid()
    return gl


class SurfacelessContext:
    """An EGL OpenGL core context on Mesa's surfaceless platform, as the `context=` loader moderngl
    takes (`load_opengl_function`, `__enter__`/`__exit__` make it current and restore the previous
    one, `release`). Made current on creation."""

    def __init__(self, require: int) -> None:
        egl = _gl._libegl()
        self._egl = egl
        egl.eglGetCurrentDisplay.restype = ctypes.c_void_p
        egl.eglGetCurrentSurface.restype = ctypes.c_void_p
        egl.eglCreateContext.restype = ctypes.c_void_p
        get_display = _gl._proc("eglGetPlatformDisplayEXT", ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p,
                                ctypes.c_void_p)
        self._display = ctypes.c_void_p(get_display(EGL_PLATFORM_SURFACELESS_MESA, None, None))
        self._context = ctypes.c_void_p(0)
        self._saved: list[tuple[ctypes.c_void_p, ...]] = []
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        if not self._display or not egl.eglInitialize(self._display, ctypes.byref(major), ctypes.byref(minor)):
            raise RuntimeError(f"the surfaceless EGL display cannot be initialised ({self._error()})")
        config, count = ctypes.c_void_p(0), ctypes.c_int(0)
        attributes = (ctypes.c_int * 5)(_EGL_SURFACE_TYPE, _EGL_PBUFFER_BIT, _EGL_RENDERABLE_TYPE, _EGL_OPENGL_BIT,
                                        _EGL_NONE)
        if not egl.eglChooseConfig(self._display, attributes, ctypes.byref(config), 1, ctypes.byref(count)) or \
                count.value < 1:
            raise RuntimeError(f"the surfaceless EGL display has no OpenGL config ({self._error()})")
        egl.eglBindAPI(_EGL_OPENGL_API)
        version = (ctypes.c_int * 7)(_EGL_CONTEXT_MAJOR_VERSION, require // 100, _EGL_CONTEXT_MINOR_VERSION,
                                     require % 100 // 10, _EGL_CONTEXT_OPENGL_PROFILE_MASK,
                                     _EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT, _EGL_NONE)
        self._context = ctypes.c_void_p(egl.eglCreateContext(self._display, config, None, version))
        if not self._context:
            raise RuntimeError(f"no OpenGL {require // 100}.{require % 100 // 10} core context on the surfaceless EGL "
                               f"display ({self._error()})")
        self._make_current(self._display, None, None, self._context)

    def _error(self) -> str:
        return f"EGL error 0x{self._egl.eglGetError():04X}"

    def _make_current(self, display, draw, read, context) -> None:
        if not self._egl.eglMakeCurrent(display, draw, read, context):
            raise RuntimeError(f"eglMakeCurrent failed ({self._error()})")

    def load_opengl_function(self, name: str) -> int:
        return int(self._egl.eglGetProcAddress(name.encode()) or 0)

    def __enter__(self) -> None:
        egl = self._egl
        self._saved.append(tuple(ctypes.c_void_p(handle) for handle in (
            egl.eglGetCurrentDisplay(), egl.eglGetCurrentSurface(_EGL_DRAW), egl.eglGetCurrentSurface(_EGL_READ),
            _gl.current_egl_context())))
        self._make_current(self._display, None, None, self._context)

    def __exit__(self, *exc: object) -> None:
        display, draw, read, context = self._saved.pop() if self._saved else (self._display, None, None, None)
        if display:
            self._make_current(display, draw, read, context)
        else:
            self._make_current(self._display, None, None, None)

    def release(self) -> None:
        if self._context:
            if _gl.current_egl_context() == self._context.value:
                self._egl.eglMakeCurrent(self._display, None, None, None)
            self._egl.eglDestroyContext(self._display, self._context)
            self._context = ctypes.c_void_p(0)
