"""glmip's interactive LOD viewer (GLFW); built on glmip's public API only."""
