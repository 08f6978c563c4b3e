// One output pixel of a homography warp. The pixel centre gl_FragCoord.xy (framebuffer row 0 is the
// output's top row) goes through `homography` (output pixel -> input pixel, centres at i + 0.5) to uv;
// the rasterizer's derivatives of uv (dFdx/dFdy over the 2x2 pixel quad) give the footprint:
//   default:      texture(): the texture unit picks the level (and, with the sampler's anisotropy > 1,
//                 its own anisotropic footprint) from those derivatives;
//   BILINEAR:     level 0 only;
//   SHADER_ANISO: footprint assembly (footprint.glsl) on the same derivatives.
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
    vec4 value = footprint_assembly(image, uv, grad_x, grad_y, texture_size, max_anisotropy, lod_bias);
#elif defined(BILINEAR)
    vec4 value = textureLod(image, uv, 0.0);
#else
    vec4 value = texture(image, uv, lod_bias);
#endif
    colour = q.z > 0.0 ? value : vec4(0.0);
}
