"""glmip's GL layer: the EGL context, devices, texel formats, the shader loader, program
dispatch and binding scopes, and the GL ↔ CUDA path policy and interop.

Stages above it (`glmip.pyramid`, `glmip.sampling`, `glmip.relevance`, `glmip.bridge`, ...)
import from here; nothing here imports a stage.
"""

from __future__ import annotations

from .context import GLContext

__all__ = ["GLContext"]
