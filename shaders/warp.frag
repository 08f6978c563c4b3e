// One output pixel of a homography warp. The pixel centre gl_FragCoord.xy (framebuffer row 0 is the
// output's top row) goes through `homography` (output pixel -> input pixel, centres at i + 0.5) to uv;
// the rasterizer's derivatives of uv (dFdx/dFdy over the 2x2 pixel quad) give the footprint:
//   default:      texture(): the texture unit picks the level (and, with the sampler's anisotropy > 1,
//                 its own anisotropic footprint) from those derivatives;
//   BILINEAR:     level 0 only;
//   SHADER_ANISO: footprint assembly (footprint.glsl) on the same derivatives; with ZERO_BORDER it skips
//                 pixels whose footprint lies wholly outside the image (their result is exactly 0).
// A pixel whose source lies behind the projection centre (q.z <= 0) is 0.

#include "footprint.glsl"

uniform sampler2D image;
uniform mat3 homography;
uniform vec2 texture_size;     // level 0, texels
uniform float lod_bias;
uniform float max_anisotropy;  // SHADER_ANISO only

out vec4 colour;

void main() {
    vec3 q = homography * vec3(gl_FragCoord.xy, 1.0);
    vec2 uv = q.xy / (q.z * texture_size);
    vec2 grad_x = dFdx(uv);  // in uniform control flow: every pixel of the quad takes part
    vec2 grad_y = dFdy(uv);
#if defined(SHADER_ANISO)
    vec4 value = vec4(0.0);
#if defined(ZERO_BORDER)
    // Taps lie within P_max / 2 of uv; each trilinear tap at level log2(P_max / N) + bias reaches at most
    // two texels of the next level, each at most 2 * 2^level level-0 texels (odd sizes), i.e. 4 P_max 2^bias,
    // plus one level-0 texel when magnifying. A source beyond that reads only the zero border: skip it.
    float p_max = max(length(grad_x * texture_size), length(grad_y * texture_size));
    vec2 reach = ((0.5 + 4.0 * exp2(max(lod_bias, 0.0))) * p_max + 2.0) / texture_size;
    if (all(greaterThanEqual(uv, -reach)) && all(lessThanEqual(uv, 1.0 + reach)))
#endif
    value = footprint_assembly(image, uv, grad_x, grad_y, texture_size, max_anisotropy, lod_bias);
#elif defined(BILINEAR)
    vec4 value = textureLod(image, uv, 0.0);
#else
    vec4 value = texture(image, uv, lod_bias);
#endif
    colour = q.z > 0.0 ? value : vec4(0.0);
}
