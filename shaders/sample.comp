// Samples the pyramid's texture at N points, one invocation a point.
// LOD_SOURCE_LOD: level given per point (textureLod); LOD_SOURCE_GRAD: uv gradients per point
// (textureGrad, where the sampler's anisotropy acts); SHADER_ANISO: footprint assembly in the
// shader from the gradients: up to max_anisotropy trilinear taps along the major axis at the
// level of the minor axis (as EXT_texture_filter_anisotropic describes).
layout(local_size_x = 64) in;
#include "common.glsl"

uniform sampler2D image;
uniform uint point_count;
uniform float lod_bias;
uniform float max_anisotropy;  // SHADER_ANISO only
uniform vec2 texture_size;     // level 0, texels

layout(std430, binding = 0) readonly buffer Points { vec2 uv[]; };
#if defined(LOD_SOURCE_LOD)
layout(std430, binding = 1) readonly buffer Lods { float lod[]; };
#elif defined(LOD_SOURCE_GRAD) || defined(SHADER_ANISO)
layout(std430, binding = 1) readonly buffer Gradients { vec4 grad[]; };  // (du/dx, dv/dx, du/dy, dv/dy)
#endif
layout(std430, binding = 2) writeonly buffer Samples { float samples[]; };  // CHANNELS per point

#include "footprint.glsl"

void main() {
    uint i = flat_invocation_index();
    if (i >= point_count) return;
    vec2 p = uv[i];
#if defined(LOD_SOURCE_LOD)
    vec4 value = textureLod(image, p, lod[i] + lod_bias);
#elif defined(LOD_SOURCE_GRAD)
    float scale = exp2(lod_bias);  // scaling the footprint by 2^b moves its level by b
    vec4 value = textureGrad(image, p, grad[i].xy * scale, grad[i].zw * scale);
#elif defined(SHADER_ANISO)
    vec4 value = footprint_assembly(image, p, grad[i].xy, grad[i].zw, texture_size, max_anisotropy, lod_bias);
#else
    vec4 value = texture(image, p);
#endif
    for (int c = 0; c < CHANNELS; ++c) samples[i * uint(CHANNELS) + uint(c)] = value[c];
}
