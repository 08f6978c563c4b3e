// Every token of the images of one batch array texture, each as a patch x patch sample grid, in one
// dispatch, one invocation a sample. The images are layers of `images` (one size, one format);
// token k names its layer and its output row, so tokens of several arrays (images of other sizes)
// interleave in one output in the caller's image order.
// Token k covers size_k level-0 pixels a side around (cx_k, cy_k) (pixels, (0, 0) the image's
// top-left corner); its samples sit at the centres of a patch x patch grid over that square,
// spaced size_k / patch = 2^level_k pixels, and are read trilinearly at level_k (+ bias).
// Output layout: (rows, CHANNELS, patch, patch) floats, ready for a patch embedding.
// SHADER_ANISO: footprint assembly with the grid spacing as the footprint (a square footprint
// gives one tap, so it equals trilinear; kept so every filter runs through one path).
layout(local_size_x = 64) in;
#include "common.glsl"

uniform sampler2DArray images;
uniform uint token_count;
uniform uint token_offset;  // this array's first row in `tokens` and `targets` (a batch's tokens, grouped by array)
uniform int patch_size;
uniform float lod_bias;
uniform float max_anisotropy;
uniform vec2 texture_size;  // level-0 width, height (texels) of every layer

layout(std430, binding = 0) readonly buffer Tokens { vec4 tokens[]; };  // cx, cy, size, level
layout(std430, binding = 1) readonly buffer Targets { uvec2 targets[]; };  // layer, output row
layout(std430, binding = 2) writeonly buffer Samples { float samples[]; };

#include "footprint.glsl"

void main() {
    uint i = flat_invocation_index();
    uint per_token = uint(patch_size * patch_size);
    uint k = i / per_token;
    if (k >= token_count) return;
    uint s = i % per_token;
    uvec2 target = targets[token_offset + k];
    vec2 cell = vec2(float(int(s) % patch_size), float(int(s) / patch_size));
    vec4 token = tokens[token_offset + k];
    vec2 uv = (token.xy + ((cell + 0.5) / float(patch_size) - 0.5) * token.z) / texture_size;
    float layer = float(target.x);
#if defined(SHADER_ANISO)
    vec2 step_uv = vec2(token.z / float(patch_size)) / texture_size;
    vec4 value = footprint_assembly_layer(images, uv, layer, vec2(step_uv.x, 0.0), vec2(0.0, step_uv.y),
                                          texture_size, max_anisotropy, lod_bias);
#else
    vec4 value = textureLod(images, vec3(uv, layer), token.w + lod_bias);
#endif
    for (int c = 0; c < CHANNELS; ++c) samples[(target.y * uint(CHANNELS) + uint(c)) * per_token + s] = value[c];
}
