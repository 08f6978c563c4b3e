"""The viewer: glmip's EGL context computes, a surface shows (a GLFW window, or nothing: headless).

Why the window's context is EGL too: glvnd refuses to make a GLX context current on a thread
while an EGL context is (X error BadAccess in glXMakeCurrent), and glmip's context is EGL; two
EGL contexts switch freely. GLFW creates the window's context through EGL
(GLFW_CONTEXT_CREATION_API = EGL), and glmip makes its own current again whenever it is used.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

import glfw
import moderngl
import numpy as np
from imgui_bundle import imgui

import glmip
from glmip import pictures

from .controls import Controls
from .present import Presenter
from .scene import Scene
from .slide_scene import SLIDE_MODES, SlideScene, open_slide
from .state import Mode, ViewState
from .ui import Figures, build

__all__ = ["display_available", "WindowSurface", "HeadlessSurface", "Viewer"]

IDLE_WAIT_S = 0.5
CHANGE_MS = 1.0  # engine time above which a frame counts as having recomputed something
SETTLE_FRAMES = 2  # ImGui needs a frame or two after a change to lay its widgets out again

_KEY_NAMES = {glfw.KEY_ESCAPE: "escape", glfw.KEY_SPACE: "space", glfw.KEY_LEFT_BRACKET: "[",
              glfw.KEY_RIGHT_BRACKET: "]", glfw.KEY_COMMA: ",", glfw.KEY_PERIOD: ".", glfw.KEY_EQUAL: "=",
              glfw.KEY_MINUS: "-", glfw.KEY_KP_ADD: "=", glfw.KEY_KP_SUBTRACT: "-"}
_KEY_NAMES.update({getattr(glfw, f"KEY_{c.upper()}"): c for c in "abcdefghijklmnopqrstuvwxyz"})
_KEY_NAMES.update({getattr(glfw, f"KEY_{d}"): str(d) for d in range(10)})


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _GlfwLoader:
    """Lets moderngl drive the current GLFW context: GL entry points come from GLFW (eglGetProcAddress)."""

    def __init__(self, window: Any) -> None:
        self.window = window

    def load_opengl_function(self, name: str) -> int:
        return glfw.get_proc_address(name) or 0

    def load(self, name: str) -> int:
        return self.load_opengl_function(name)

    def release(self) -> None:
        pass

    def __enter__(self) -> None:
        glfw.make_context_current(self.window)

    def __exit__(self, *exc: object) -> None:
        pass


class WindowSurface:
    """A GLFW window (visible, or hidden for screenshots) with an EGL GL 3.3 context and ImGui on GLFW."""

    def __init__(self, size: tuple[int, int], title: str, visible: bool) -> None:
        library = getattr(getattr(glfw, "library", None), "_name", None)
        expected = os.environ.get("PYGLFW_LIBRARY")
        if expected and library and Path(library).resolve() != Path(expected).resolve():
            raise RuntimeError(f"pyGLFW loaded {library}, not imgui_bundle's {expected}: import imgui_bundle "
                               "before glfw (the viewer's modules do)")
        if not glfw.init():
            raise RuntimeError(f"GLFW could not initialise (DISPLAY={os.environ.get('DISPLAY')!r}); use "
                               "--screenshot for headless EGL rendering")
        try:
            glfw.default_window_hints()
            glfw.window_hint(glfw.CONTEXT_CREATION_API, glfw.EGL_CONTEXT_API)
            glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
            glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
            glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
            glfw.window_hint(glfw.VISIBLE, glfw.TRUE if visible else glfw.FALSE)
            self.window = glfw.create_window(size[0], size[1], title, None, None)
            if not self.window:
                raise RuntimeError("GLFW could not open a window with an EGL OpenGL 3.3 context")
            self.address = ctypes.cast(self.window, ctypes.c_void_p).value
            glfw.make_context_current(self.window)
            self.gl = moderngl.create_context(context=_GlfwLoader(self.window))
            glfw.swap_interval(0)
            imgui.backends.glfw_init_for_opengl(self.address, False)
            imgui.backends.opengl3_init("#version 330")
        except BaseException:
            glfw.terminate()
            raise

    @property
    def size(self) -> tuple[int, int]:
        return glfw.get_framebuffer_size(self.window)

    def make_current(self) -> None:
        glfw.make_context_current(self.window)

    def new_frame(self) -> None:
        imgui.backends.opengl3_new_frame()
        imgui.backends.glfw_new_frame()

    def present(self, presenter: Presenter) -> None:
        presenter.blit_to_screen()
        glfw.swap_buffers(self.window)

    def close(self) -> None:
        self.make_current()
        imgui.backends.opengl3_shutdown()
        imgui.backends.glfw_shutdown()
        self.gl.release()
        glfw.destroy_window(self.window)
        glfw.terminate()


class HeadlessSurface:
    """No window: the frame is drawn with glmip's own EGL context into its offscreen framebuffer."""

    def __init__(self, context: glmip.Context, size: tuple[int, int]) -> None:
        self.context = context
        self.gl = context.gl
        self._size = size
        self._last = time.perf_counter()
        imgui.backends.opengl3_init("#version 330")

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def make_current(self) -> None:
        self.context.make_current()

    def new_frame(self) -> None:
        io = imgui.get_io()
        io.display_size = self._size
        now = time.perf_counter()
        io.delta_time = max(1e-4, now - self._last)
        self._last = now
        imgui.backends.opengl3_new_frame()

    def present(self, presenter: Presenter) -> None:
        pass

    def close(self) -> None:
        self.make_current()
        imgui.backends.opengl3_shutdown()


class Viewer:
    """The LOD viewer on `image` (default glmip's bundled picture); `step()` handles input and draws
    when something changed, `render()` draws now, `screenshot()` reads the last frame back.

    A path to a whole-slide image (see `slide_scene.open_slide`) opens a `SlideScene` instead: original and
    tissue-heat modes only (others fall back to original), zoom up to past 1:1 on any slide size."""

    def __init__(self, image: Any = None, *, size: tuple[int, int] = (1280, 800), window: bool | None = None,
                 visible: bool = True, device: int | None = None, srgb: bool = False, clip_model: str | None = None,
                 screenshot_dir: str | Path = ".", **state: Any) -> None:
        if len(size) != 2 or min(size) < 64:
            raise ValueError(f"the viewer needs a frame of at least 64x64 pixels, got {size}")
        if window is None:
            window = display_available()
        self.screenshot_dir = Path(screenshot_dir)
        self.context = glmip.Context(device=device)
        self.surface: WindowSurface | HeadlessSurface | None = None
        self.presenter: Presenter | None = None
        self.scene: Scene | SlideScene | None = None
        imgui.create_context()
        imgui.get_io().set_ini_filename(None)  # no imgui.ini in the user's folder
        try:
            slide = open_slide(self.context, image)
            if slide is not None:
                self.scene = SlideScene(slide)
            else:
                self.scene = Scene(self.context, glmip.DEFAULT_IMAGE if image is None else image,
                                   method=state.get("method", "hardware"), srgb=srgb, clip_model=clip_model)
            self.state = ViewState(image_size=self.scene.image_size, frame_size=tuple(size), **state)
            if isinstance(self.scene, SlideScene):
                self.state.max_zoom, self.state.show_marker = self.scene.max_zoom, False
                if self.state.mode not in SLIDE_MODES:
                    self.state.mode = Mode.ORIGINAL
            self.controls = Controls(self.state, self.scene.levels)
            self.surface = WindowSurface(size, "glmip view", visible) if window else HeadlessSurface(self.context, size)
            self.presenter = Presenter(self.surface.gl)
            if isinstance(self.surface, WindowSurface):
                self._install_callbacks(self.surface)
        except BaseException:
            self.close()
            raise
        self.figures = Figures()
        self.frames_drawn = 0
        self._pending = SETTLE_FRAMES + 1
        self._saved = 0

    # -- input ----------------------------------------------------------------------------
    def _install_callbacks(self, surface: WindowSurface) -> None:
        """GLFW events go to ImGui first; the view gets those ImGui does not want."""
        window, address, backends = surface.window, surface.address, imgui.backends

        pointer = list(glfw.get_cursor_pos(window))  # as of the events handled so far, not the server's now

        def cursor(_, x: float, y: float) -> None:
            pointer[:] = (x, y)
            backends.glfw_cursor_pos_callback(address, x, y)
            self._pending = max(self._pending, 1)
            if self.controls.pointer(x, y) and not imgui.get_io().want_capture_mouse:
                self.invalidate()

        def button(_, which: int, action: int, mods: int) -> None:
            backends.glfw_mouse_button_callback(address, which, action, mods)
            self.invalidate()
            if which == glfw.MOUSE_BUTTON_LEFT and not (action == glfw.PRESS and imgui.get_io().want_capture_mouse):
                self.controls.button(action == glfw.PRESS, *pointer)

        def scroll(_, dx: float, dy: float) -> None:
            backends.glfw_scroll_callback(address, dx, dy)
            self.invalidate()
            if not imgui.get_io().want_capture_mouse:
                self.controls.scroll(*pointer, dy)

        def key(_, code: int, scancode: int, action: int, mods: int) -> None:
            backends.glfw_key_callback(address, code, scancode, action, mods)
            self.invalidate()
            if action != glfw.RELEASE and not imgui.get_io().want_capture_keyboard and code in _KEY_NAMES:
                self.controls.key(_KEY_NAMES[code])

        def char(_, codepoint: int) -> None:
            backends.glfw_char_callback(address, codepoint)
            self.invalidate()

        def resize(_, width: int, height: int) -> None:
            self.invalidate()

        self._callbacks = (cursor, button, scroll, key, char, resize)  # GLFW keeps only weak references
        glfw.set_cursor_pos_callback(window, cursor)
        glfw.set_mouse_button_callback(window, button)
        glfw.set_scroll_callback(window, scroll)
        glfw.set_key_callback(window, key)
        glfw.set_char_callback(window, char)
        glfw.set_framebuffer_size_callback(window, resize)
        glfw.set_cursor_enter_callback(window, lambda _, entered: backends.glfw_cursor_enter_callback(address, entered))
        glfw.set_window_focus_callback(window, lambda _, focused: backends.glfw_window_focus_callback(address, focused))

    def invalidate(self) -> None:
        self._pending = SETTLE_FRAMES + 1

    # -- drawing --------------------------------------------------------------------------
    def render(self) -> float:
        """Compute what changed, draw the frame with its UI and present it; returns the frame time (ms)."""
        assert self.surface is not None and self.presenter is not None and self.scene is not None
        start = time.perf_counter()
        state = self.state
        size = self.surface.size
        if size[0] >= 1 and size[1] >= 1:
            state.frame_size = (int(size[0]), int(size[1]))
        frame = self.scene.frame(state)  # engine work, on glmip's EGL context
        self.surface.make_current()
        self.surface.new_frame()
        imgui.new_frame()
        self.figures.pyramid_bytes, self.figures.levels = self.scene.nbytes, self.scene.levels
        uploads = self.presenter.uploads
        self.controls.levels = self.scene.levels
        if build(state, frame, self.figures, self.scene.query_available):
            self.invalidate()
        imgui.render()
        self.presenter.draw(state, frame, imgui.get_draw_data())
        self._save_requested()
        self.surface.present(self.presenter)
        self.presenter.gl.finish()
        self.frames_drawn += 1
        self.figures.frame_ms = (time.perf_counter() - start) * 1e3
        if frame.engine_ms > CHANGE_MS or self.presenter.uploads != uploads:
            self.figures.change_ms, self.figures.engine_ms = self.figures.frame_ms, frame.engine_ms
        return self.figures.frame_ms

    def _save_requested(self) -> None:
        while self.state.screenshot_requests:
            path = self.state.screenshot_requests.pop(0)
            if not path:
                self._saved += 1
                path = str(self.screenshot_dir / f"glmip-view-{self._saved:03d}.png")
            pictures.save_png(self.presenter.read(), path)
            self.figures.message = f"saved {path}"

    def step(self, wait: bool = False) -> bool:
        """Handle pending input and draw if anything changed (or ImGui is settling); False once quitting.
        `wait` sleeps until an event (or a short timeout) when nothing needs drawing."""
        if isinstance(self.surface, WindowSurface):
            if wait and self._pending <= 0:
                glfw.wait_events_timeout(IDLE_WAIT_S)
            else:
                glfw.poll_events()
            if glfw.window_should_close(self.surface.window):
                self.state.quit = True
        if self.state.quit:
            return False
        if self._pending > 0 or self.state.screenshot_requests:
            self._pending -= 1
            self.render()
        return not self.state.quit

    def run(self) -> None:
        while self.step(wait=True):
            pass

    def screenshot(self, path: str | Path | None = None) -> np.ndarray:
        """The last drawn frame, (h, w, 3) uint8 with the UI; also written as PNG to `path` if given."""
        if self.frames_drawn == 0:
            self.render()
        assert self.presenter is not None
        self.surface.make_current()
        pixels = self.presenter.read()
        if path is not None:
            pictures.save_png(pixels, path)
        return pixels

    def settle(self) -> None:
        """Draw until ImGui's layout is stable (its first frames size the windows)."""
        for _ in range(SETTLE_FRAMES + 1):
            self.render()
        self._pending = 0

    # -- life cycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Release the window, the display's GL objects, the pyramid and the EGL context. Safe twice."""
        if self.presenter is not None and self.surface is not None:
            self.surface.make_current()
            self.presenter.close()
        self.presenter = None
        if self.surface is not None:
            self.surface.close()
            self.surface = None
        if imgui.get_current_context() is not None:
            imgui.destroy_context()
        if self.scene is not None:
            self.scene.close()
            self.scene = None
        if not self.context.closed:
            self.context.close()

    def __enter__(self) -> Viewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
