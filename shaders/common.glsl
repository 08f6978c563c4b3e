// Shared helpers for glmip's compute shaders; include after the `layout(local_size_...)` line.

// Flat invocation index of a 1-D job dispatched as a 2-D grid of work groups
// (a grid is needed once the job exceeds 65535 groups in x).
uint flat_invocation_index() {
    uint group = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    return group * (gl_WorkGroupSize.x * gl_WorkGroupSize.y) + gl_LocalInvocationIndex;
}

float linear_to_srgb(float v) {
    v = clamp(v, 0.0, 1.0);
    return v <= 0.0031308 ? 12.92 * v : 1.055 * pow(v, 1.0 / 2.4) - 0.055;
}
