// Every token's patch x patch sample grid in one dispatch, one invocation a sample.
// Token k covers size_k level-0 pixels a side around (cx_k, cy_k) (pixels, (0, 0) the image's
// top-left corner); its samples sit at the centres of a patch x patch grid over that square,
// spaced size_k / patch = 2^level_k pixels, and are read trilinearly at level_k (+ bias).
// Output layout: (N, CHANNELS, patch, patch) floats, ready for a patch embedding.
// SHADER_ANISO: footprint assembly with the grid spacing as the footprint (a square footprint
// gives one tap, so it equals trilinear; kept so every filter runs through one path).
layout(local_size_x = 64) in;
#include "common.glsl"

uniform sampler2D image;
uniform uint token_count;
uniform int patch_size;
uniform vec2 texture_size;  // level 0, texels
uniform float lod_bias;
uniform float max_anisotropy;

layout(std430, binding = 0) readonly buffer Tokens { vec4 tokens[]; };  // cx, cy, size, level
layout(std430, binding = 2) writeonly buffer Samples { float samples[]; };

#include "footprint.glsl"

void main() {
    uint i = flat_invocation_index();
    uint per_token = uint(patch_size * patch_size);
    if (i >= token_count * per_token) return;
    uint k = i / per_token;
    uint s = i % per_token;
    vec2 cell = vec2(float(int(s) % patch_size), float(int(s) / patch_size));
    vec4 token = tokens[k];
    vec2 uv = (token.xy + ((cell + 0.5) / float(patch_size) - 0.5) * token.z) / texture_size;
#if defined(SHADER_ANISO)
    vec2 step_uv = vec2(token.z / float(patch_size)) / texture_size;
    vec4 value = footprint_assembly(image, uv, vec2(step_uv.x, 0.0), vec2(0.0, step_uv.y), texture_size,
                                    max_anisotropy, lod_bias);
#else
    vec4 value = textureLod(image, uv, token.w + lod_bias);
#endif
    for (int c = 0; c < CHANNELS; ++c) samples[(k * uint(CHANNELS) + uint(c)) * per_token + s] = value[c];
}
