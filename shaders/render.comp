// The LOD-composited ("foveated") image: every output pixel reads its level from the LOD map
// (bilinear, at the pixel's centre) and samples the pyramid trilinearly at that level, so
// neighbouring pixels at neighbouring levels blend without seams. `region` crops the image
// (uv), so a zoomed-in view renders only what it shows.
layout(local_size_x = 16, local_size_y = 16) in;

uniform sampler2D image;
uniform sampler2D lod_map;
uniform ivec2 size;
uniform vec4 region;  // the part of the image the output covers: u0, v0, u1, v1
uniform float lod_bias;

layout(std430, binding = 0) writeonly buffer Colour { vec4 colour[]; };
layout(std430, binding = 1) writeonly buffer Lod { float lod_used[]; };

void main() {
    ivec2 p = ivec2(gl_GlobalInvocationID.xy);
    if (any(greaterThanEqual(p, size))) return;
    vec2 uv = mix(region.xy, region.zw, (vec2(p) + 0.5) / vec2(size));
    float lod = textureLod(lod_map, uv, 0.0).r + lod_bias;
    uint i = uint(p.y * size.x + p.x);
    colour[i] = textureLod(image, uv, lod);
    lod_used[i] = clamp(lod, 0.0, float(textureQueryLevels(image) - 1));
}
