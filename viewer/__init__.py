"""glmip's interactive LOD viewer (GLFW); built on glmip's public API only."""

# imgui_bundle first: importing it points pyGLFW at the GLFW library ImGui's GLFW backend links,
# so both drive the same windows (viewer.window checks this).
import imgui_bundle  # noqa: F401
