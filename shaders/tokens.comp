// Every token of a batch of images, each as a patch x patch sample grid, in one dispatch, one
// invocation a sample. Image b is bound to images[b]; its samples occupy invocations
// [first_b, first_b + count_b * patch^2), first_b a multiple of the work-group size, so every work
// group reads one image only and the sampler index is dynamically uniform, as GLSL requires. The
// sampler is picked by a switch over constant indices (IMAGES <= 16 cases), because llvmpipe
// crashes on a sampler array indexed by a value read from a buffer, or by a loop index.
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

#if defined(SHADER_ANISO)
#define SAMPLE(image) footprint_assembly(image, uv, vec2(step_uv.x, 0.0), vec2(0.0, step_uv.y), texture_size, \
                                         max_anisotropy, lod_bias)
#else
#define SAMPLE(image) textureLod(image, uv, lod + lod_bias)
#endif

vec4 sample_image(uint b, vec2 uv, float lod, vec2 step_uv, vec2 texture_size) {
    vec4 value = vec4(0.0);
    switch (b) {
#if IMAGES > 0
        case 0u: value = SAMPLE(images[0]); break;
#endif
#if IMAGES > 1
        case 1u: value = SAMPLE(images[1]); break;
#endif
#if IMAGES > 2
        case 2u: value = SAMPLE(images[2]); break;
#endif
#if IMAGES > 3
        case 3u: value = SAMPLE(images[3]); break;
#endif
#if IMAGES > 4
        case 4u: value = SAMPLE(images[4]); break;
#endif
#if IMAGES > 5
        case 5u: value = SAMPLE(images[5]); break;
#endif
#if IMAGES > 6
        case 6u: value = SAMPLE(images[6]); break;
#endif
#if IMAGES > 7
        case 7u: value = SAMPLE(images[7]); break;
#endif
#if IMAGES > 8
        case 8u: value = SAMPLE(images[8]); break;
#endif
#if IMAGES > 9
        case 9u: value = SAMPLE(images[9]); break;
#endif
#if IMAGES > 10
        case 10u: value = SAMPLE(images[10]); break;
#endif
#if IMAGES > 11
        case 11u: value = SAMPLE(images[11]); break;
#endif
#if IMAGES > 12
        case 12u: value = SAMPLE(images[12]); break;
#endif
#if IMAGES > 13
        case 13u: value = SAMPLE(images[13]); break;
#endif
#if IMAGES > 14
        case 14u: value = SAMPLE(images[14]); break;
#endif
#if IMAGES > 15
        case 15u: value = SAMPLE(images[15]); break;
#endif
    }
    return value;
}

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
    vec2 step_uv = vec2(token.z / float(patch_size)) / texture_size;
    vec4 value = sample_image(b, uv, token.w, step_uv, texture_size);
    for (int c = 0; c < CHANNELS; ++c) samples[(k * uint(CHANNELS) + uint(c)) * per_token + s] = value[c];
}
