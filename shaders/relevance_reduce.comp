// One step up the relevance pyramid: each coarse texel gathers its (up to) 2x2 finer texels:
// the area-weighted mean, the maximum, and the summed in-image area. Grids halve rounding up,
// so a quadtree cell of any level is exactly one texel.
layout(local_size_x = 8, local_size_y = 8) in;

layout(std430, binding = 0) readonly buffer Fine { vec4 fine[]; };      // mean, max, area, 0
layout(std430, binding = 1) writeonly buffer Coarse { vec4 coarse[]; };

uniform ivec2 fine_size;
uniform ivec2 coarse_size;

void main() {
    ivec2 g = ivec2(gl_GlobalInvocationID.xy);
    if (any(greaterThanEqual(g, coarse_size))) return;
    float mass = 0.0;
    float area = 0.0;
    float peak = 0.0;
    for (int dy = 0; dy < 2; ++dy) {
        for (int dx = 0; dx < 2; ++dx) {
            ivec2 f = 2 * g + ivec2(dx, dy);
            if (any(greaterThanEqual(f, fine_size))) continue;
            vec4 t = fine[f.y * fine_size.x + f.x];
            mass += t.x * t.z;
            area += t.z;
            peak = max(peak, t.y);
        }
    }
    coarse[g.y * coarse_size.x + g.x] = vec4(area > 0.0 ? mass / area : 0.0, peak, area, 0.0);
}
