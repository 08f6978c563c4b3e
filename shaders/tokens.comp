// Every token of a batch of images, each as a patch x patch sample grid, in one dispatch, one
// invocation a sample. Image b is bound to images[b]; its samples occupy invocations
// [first_b, first_b + count_b * patch^2), first_b a multiple of the work-group size, so every work
// group reads one image only and the sampler index is dynamically uniform, as GLSL requires.
// Token k covers size_k level-0 pixels a side around (cx_k, cy_k) (pixels, (0, 0) the image's
// top-left corner); its samples sit at the centres of a patch x patch grid over that square,
// spaced size_k / patch = 2^level_k pixels, and are read trilinearly at level_k (+ bias).
// Output layout: (sum of N_b, CHANNELS, patch, patch) floats, images in order, ready for a patch
// embedding.
// SHADER_ANISO: footprint assembly with the grid spacing as the footprint (a square footprint
// gives one tap, so it equals trilinear; kept so every filter runs through one path).
layout(local_size_x = 64) in;
#include "common.glsl"

uniform sampler2D images[IMAGES];
uniform uint group_count;
uniform int patch_size;
uniform float lod_bias;
uniform float max_anisotropy;

layout(std430, binding = 0) readonly buffer Tokens { vec4 tokens[]; };  // cx, cy, size, level
layout(std430, binding = 2) writeonly buffer Samples { float samples[]; };
layout(std430, binding = 3) readonly buffer GroupImage { uint group_image[]; };  // image of each work group
layout(std430, binding = 4) readonly buffer ImageRange { uvec4 image_range[]; };  // first invocation, first token, count
layout(std430, binding = 5) readonly buffer ImageSize { vec4 image_size[]; };  // level-0 width, height (texels)

#include "footprint.glsl"

void main() {
    uint i = flat_invocation_index();
    uint group = i / gl_WorkGroupSize.x;
    if (group >= group_count) return;
    uint b = group_image[group];
    uvec4 range = image_range[b];
    uint per_token = uint(patch_size * patch_size);
    uint local = i - range.x;
    if (local >= range.z * per_token) return;
    uint k = range.y + local / per_token;
    uint s = local % per_token;
    vec2 texture_size = image_size[b].xy;
    vec2 cell = vec2(float(int(s) % patch_size), float(int(s) / patch_size));
    vec4 token = tokens[k];
    vec2 uv = (token.xy + ((cell + 0.5) / float(patch_size) - 0.5) * token.z) / texture_size;
#if defined(SHADER_ANISO)
    vec2 step_uv = vec2(token.z / float(patch_size)) / texture_size;
    vec4 value = footprint_assembly(images[b], uv, vec2(step_uv.x, 0.0), vec2(0.0, step_uv.y), texture_size,
                                    max_anisotropy, lod_bias);
#else
    vec4 value = textureLod(images[b], uv, token.w + lod_bias);
#endif
    for (int c = 0; c < CHANNELS; ++c) samples[(k * uint(CHANNELS) + uint(c)) * per_token + s] = value[c];
}
