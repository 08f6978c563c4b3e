// Built-in saliency that needs no weights: centre-surround contrast on the image's own pyramid
// (after Itti, Koch and Niebur). At each output pixel, an intensity and two colour-opponent
// features are read trilinearly at every centre level c and surround level c + d; saliency is the
// sum over the pairs of the distance between centre and surround features. Every image of an
// array texture in one dispatch: work-group z is the image, its map the z-th (size) block of the output.
layout(local_size_x = 8, local_size_y = 8) in;
#include "common.glsl"

uniform sampler2DArray image;  // the batch's array texture; work-group z reads layer first_layer + z
uniform ivec2 size;  // output map (width, height)
uniform int first_layer;
uniform int centre_first;
uniform int centre_count;
uniform int delta_first;
uniform int delta_count;

layout(std430, binding = 0) writeonly buffer Saliency { float saliency[]; };

vec3 features(vec4 c) {
#if CHANNELS >= 3
    return vec3((c.r + c.g + c.b) / 3.0, c.r - c.g, c.b - 0.5 * (c.r + c.g));
#else
    return vec3(c.r, 0.0, 0.0);
#endif
}

void main() {
    ivec2 g = ivec2(gl_GlobalInvocationID.xy);
    int z = int(gl_GlobalInvocationID.z);
    if (any(greaterThanEqual(g, size))) return;
    vec2 uv = (vec2(g) + 0.5) / vec2(size);
    float layer = float(first_layer + z);
    float total = 0.0;
    for (int c = centre_first; c < centre_first + centre_count; ++c) {
        vec3 centre = features(textureLod(image, vec3(uv, layer), float(c)));
        for (int d = delta_first; d < delta_first + delta_count; ++d) {
            total += distance(centre, features(textureLod(image, vec3(uv, layer), float(c + d))));
        }
    }
    saliency[(z * size.y + g.y) * size.x + g.x] = total;
}
