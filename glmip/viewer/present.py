"""The display side: draws a `Frame` and the UI into an offscreen framebuffer of any moderngl context.

The same drawing serves the window (its GLFW context; the framebuffer is then blitted to the
screen) and headless screenshots (glmip's own EGL context), so both show identical pixels.
Textures are uploaded once per picture key; a pan or zoom only redraws quads.
"""

from __future__ import annotations

from collections import OrderedDict

import moderngl
import numpy as np
from imgui_bundle import imgui

from .scene import Frame, Picture
from .state import Rect, ViewState
from .tilt import comparison_split

__all__ = ["tilt_origins", "Presenter"]

VERTEX_SHADER = """
#version 330
uniform vec2 frame_size;  // pixels
uniform vec4 rect;        // x0, y0, x1, y1 in pixels, y down
in vec2 corner;           // (0, 0) top-left .. (1, 1) bottom-right
out vec2 uv;
void main() {
    vec2 p = mix(rect.xy, rect.zw, corner);
    uv = corner;  // texture row 0 is the picture's top
    gl_Position = vec4(2.0 * p.x / frame_size.x - 1.0, 1.0 - 2.0 * p.y / frame_size.y, 0.0, 1.0);
}
"""

FRAGMENT_SHADER = """
#version 330
uniform sampler2D picture;
in vec2 uv;
out vec4 colour;
void main() { colour = texture(picture, uv); }
"""

CLEAR_COLOUR = (0.09, 0.09, 0.10, 1.0)
TEXTURE_CACHE = 6  # pictures kept on the display side, so flipping between modes re-uploads nothing


def tilt_origins(state: ViewState) -> tuple[tuple[float, float], tuple[float, float]]:
    """Top-left corners of the two tilted-plane views (trilinear first) in the image area."""
    area, (w, h) = state.area, state.image_size
    _, (dx, dy) = comparison_split((int(area.width), int(area.height)), w / h, state.tilt)
    return (area.x0, area.y0), (area.x0 + dx, area.y0 + dy)


class Presenter:
    """Owns the display GL objects on one moderngl context; `draw` a frame, `read` it back."""

    def __init__(self, gl: moderngl.Context) -> None:
        self.gl = gl
        self.program = gl.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        corners = np.array([0, 0, 1, 0, 0, 1, 1, 1], np.float32)
        self.vbo = gl.buffer(corners)
        self.vao = gl.vertex_array(self.program, [(self.vbo, "2f", "corner")])
        self.framebuffer: moderngl.Framebuffer | None = None
        self.textures: OrderedDict[tuple, moderngl.Texture] = OrderedDict()
        self.uploads = 0  # pictures uploaded so far: lets tests check what a change invalidated

    def ensure_size(self, size: tuple[int, int]) -> moderngl.Framebuffer:
        if self.framebuffer is None or self.framebuffer.size != size:
            if self.framebuffer is not None:
                for attachment in self.framebuffer.color_attachments:
                    attachment.release()
                self.framebuffer.release()
            colour = self.gl.renderbuffer(size, 4)
            self.framebuffer = self.gl.framebuffer(color_attachments=[colour])
        return self.framebuffer

    def texture(self, picture: Picture) -> moderngl.Texture:
        """The picture's texture, uploaded (with mipmaps for minified display) only when new."""
        texture = self.textures.get(picture.key)
        if texture is not None:
            self.textures.move_to_end(picture.key)
            return texture
        pixels = np.ascontiguousarray(picture.pixels)
        h, w, c = pixels.shape
        texture = self.gl.texture((w, h), c, pixels, alignment=1)
        if picture.one_to_one:  # texel centres on pixel centres
            texture.filter = (moderngl.NEAREST, moderngl.NEAREST)
        else:
            texture.build_mipmaps()
            texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.NEAREST if picture.nearest else moderngl.LINEAR)
        texture.repeat_x = texture.repeat_y = False
        self.uploads += 1
        self.textures[picture.key] = texture
        while len(self.textures) > TEXTURE_CACHE:
            _, old = self.textures.popitem(last=False)
            old.release()
        return texture

    def _quad(self, picture: Picture, rect: Rect, blend: bool = False) -> None:
        texture = self.texture(picture)
        texture.use(0)
        self.program["picture"] = 0
        self.program["rect"] = (rect.x0, rect.y0, rect.x1, rect.y1)
        if blend:
            self.gl.enable(moderngl.BLEND)
            self.gl.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        self.vao.render(moderngl.TRIANGLE_STRIP)
        if blend:
            self.gl.disable(moderngl.BLEND)

    def draw(self, state: ViewState, frame: Frame, draw_data: imgui.ImDrawData | None) -> None:
        """The image area (pictures at the view transform, clipped to it), then the UI's draw data."""
        width, height = state.frame_size
        target = self.ensure_size((width, height))
        target.use()
        target.viewport = (0, 0, width, height)
        target.clear(*CLEAR_COLOUR)
        self.program["frame_size"] = (float(width), float(height))
        area = state.area
        target.scissor = (int(area.x0), int(height - area.y1), int(area.width), int(area.height))
        if frame.tilt is not None:
            for picture, (x0, y0) in zip(frame.tilt, tilt_origins(state), strict=True):
                h, w = picture.pixels.shape[:2]
                self._quad(picture, Rect(x0, y0, x0 + w, y0 + h))
        else:
            rect = state.image_rect
            if frame.base is not None:
                u0, v0, u1, v1 = frame.base.uv
                self._quad(frame.base, Rect(rect.x0 + u0 * rect.width, rect.y0 + v0 * rect.height,
                                            rect.x0 + u1 * rect.width, rect.y0 + v1 * rect.height))
            if frame.overlay is not None:
                self._quad(frame.overlay, rect, blend=True)
        target.scissor = None
        if draw_data is not None:
            imgui.backends.opengl3_render_draw_data(draw_data)

    def read(self) -> np.ndarray:
        """The last drawn frame as (h, w, 3) uint8, row 0 the top."""
        assert self.framebuffer is not None, "nothing drawn yet"
        width, height = self.framebuffer.size
        data = self.framebuffer.read(components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)[::-1].copy()

    def blit_to_screen(self) -> None:
        assert self.framebuffer is not None
        self.gl.copy_framebuffer(self.gl.screen, self.framebuffer)

    def close(self) -> None:
        for texture in self.textures.values():
            texture.release()
        self.textures.clear()
        if self.framebuffer is not None:
            for attachment in self.framebuffer.color_attachments:
                attachment.release()
            self.framebuffer.release()
            self.framebuffer = None
        self.vao.release()
        self.vbo.release()
        self.program.release()
