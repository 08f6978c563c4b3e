// One step up the relevance pyramid: each coarse texel gathers its (up to) 2x2 finer texels:
// the area-weighted mean, the maximum, and the summed in-image area. Grids halve rounding up,
// so a quadtree cell of any level is exactly one texel. Every level of a batch lives in one buffer:
// level k of image z at texel offset level_k_first + z * (level k's texels); work-group z is the image.
layout(local_size_x = 8, local_size_y = 8) in;

layout(std430, binding = 1) buffer Levels { vec4 levels[]; };  // mean, max, area, 0

uniform ivec2 fine_size;
uniform ivec2 coarse_size;
uniform int fine_first;    // texel offset of the fine level's first image
uniform int coarse_first;  // texel offset of the coarse level's first image

void main() {
    ivec2 g = ivec2(gl_GlobalInvocationID.xy);
    int layer = int(gl_GlobalInvocationID.z);
    if (any(greaterThanEqual(g, coarse_size))) return;
    int fine_base = fine_first + layer * fine_size.x * fine_size.y;
    float mass = 0.0;
    float area = 0.0;
    float peak = 0.0;
    for (int dy = 0; dy < 2; ++dy) {
        for (int dx = 0; dx < 2; ++dx) {
            ivec2 f = 2 * g + ivec2(dx, dy);
            if (any(greaterThanEqual(f, fine_size))) continue;
            vec4 t = levels[fine_base + f.y * fine_size.x + f.x];
            mass += t.x * t.z;
            area += t.z;
            peak = max(peak, t.y);
        }
    }
    levels[coarse_first + (layer * coarse_size.y + g.y) * coarse_size.x + g.x] = vec4(area > 0.0 ? mass / area : 0.0, peak, area, 0.0);
}
