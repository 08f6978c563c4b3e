// The relevance pyramid's base level: one texel per finest token cell (`cell` x `cell` image
// pixels), holding the exact area mean of the relevance map over the cell's in-image pixels,
// the largest relevance texel the cell touches, and the cell's in-image area in pixels.
// The relevance map (any resolution) is stretched over the image; row 0 is the top.
// A batch runs in one dispatch: work-group z is the image; its map and its cells lie one after
// another (maps: layer-major, map_size each; cells: layer-major at the start of `Levels`).
layout(local_size_x = 8, local_size_y = 8) in;

layout(std430, binding = 0) readonly buffer Relevance { float relevance[]; };
layout(std430, binding = 1) writeonly buffer Levels { vec4 cells[]; };  // mean, max, area, 0

uniform ivec2 map_size;    // relevance map, texels (width, height)
uniform ivec2 image_size;  // level 0 of the image, pixels
uniform ivec2 grid_size;   // cells
uniform int cell;          // pixels a side

void main() {
    ivec2 g = ivec2(gl_GlobalInvocationID.xy);
    int layer = int(gl_GlobalInvocationID.z);
    if (any(greaterThanEqual(g, grid_size))) return;
    int map_first = layer * map_size.x * map_size.y;
    ivec2 q0 = g * cell;
    ivec2 q1 = min((g + 1) * cell, image_size);
    // Texels overlapping the cell, in exact integer arithmetic (float edges would let a texel that
    // only touches the cell in)
    ivec2 i0 = (q0 * map_size) / image_size;
    ivec2 i1 = (q1 * map_size + image_size - 1) / image_size;
    vec2 p0 = vec2(q0);
    vec2 p1 = vec2(q1);
    vec2 r0 = p0 * vec2(map_size) / vec2(image_size);
    vec2 r1 = p1 * vec2(map_size) / vec2(image_size);
    float total = 0.0;
    float weight = 0.0;
    float peak = 0.0;
    for (int y = i0.y; y < i1.y; ++y) {
        float wy = min(r1.y, float(y + 1)) - max(r0.y, float(y));
        for (int x = i0.x; x < i1.x; ++x) {
            float wx = min(r1.x, float(x + 1)) - max(r0.x, float(x));
            float v = relevance[map_first + y * map_size.x + x];
            total += wx * wy * v;
            weight += wx * wy;
            peak = max(peak, v);
        }
    }
    vec2 extent = p1 - p0;
    cells[(layer * grid_size.y + g.y) * grid_size.x + g.x] = vec4(weight > 0.0 ? total / weight : 0.0, peak, extent.x * extent.y, 0.0);
}
