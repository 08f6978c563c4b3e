"""glmip's interactive LOD viewer (GLFW + Dear ImGui), built on glmip's public API only.

Installed with the `viewer` extra (`pip install 'glmip[viewer]'`: glfw, imgui-bundle); headless
users of glmip do not need it. `glmip view` is its command-line front.
"""

try:
    # imgui_bundle first: importing it points pyGLFW at the GLFW library ImGui's GLFW backend links,
    # so both drive the same windows (glmip.viewer.window checks this).
    import imgui_bundle  # noqa: F401
except ImportError as error:
    raise ImportError("glmip's viewer needs the viewer extra: pip install 'glmip[viewer]' (glfw, imgui-bundle); "
                      f"{error}") from error

from .app import run, view_state

__all__ = ["run", "view_state"]
