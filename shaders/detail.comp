// One level of the detail (distortion) pyramid: per allocation cell, the energy lost by representing the
// cell one mip level coarser. For every texel of mip level `fine_level` whose centre lies in the cell
// (column and row ranges given per cell in `Bounds`), the squared difference between the texel and
// level fine_level + 1 upsampled bilinearly at its centre (GL's rule: texel centres at (i + 0.5) / w,
// clamp to edge), summed over the CHANNELS channels, times the texel's area in level-0 pixels.
// texelFetch decodes sRGB texels, so an sRGB pyramid is compared in linear light.
// Every layer of an array texture in one dispatch: work-group z is layer first_layer + z, its cells
// the z-th (grid_size) block of the level's output.
layout(local_size_x = 8, local_size_y = 8) in;

uniform sampler2DArray image;
uniform int first_layer;
uniform int fine_level;
uniform ivec2 fine_size;    // texels of level fine_level
uniform ivec2 coarse_size;  // texels of level fine_level + 1
uniform ivec2 grid_size;    // cells of this allocation level
uniform int column_first;   // Bounds index of this level's grid_size.x + 1 column bounds
uniform int row_first;      // Bounds index of this level's grid_size.y + 1 row bounds
uniform int out_first;      // Energy index of this level's first cell
uniform float texel_area;   // level-0 pixels a fine texel covers

layout(std430, binding = 0) readonly buffer Bounds { int bounds[]; };
layout(std430, binding = 1) writeonly buffer Energy { float energy[]; };

float squared(vec4 d) {
    float total = d.r * d.r;
#if CHANNELS >= 2
    total += d.g * d.g;
#endif
#if CHANNELS >= 3
    total += d.b * d.b;
#endif
#if CHANNELS >= 4
    total += d.a * d.a;
#endif
    return total;
}

void main() {
    ivec2 g = ivec2(gl_GlobalInvocationID.xy);
    int z = int(gl_GlobalInvocationID.z);
    if (any(greaterThanEqual(g, grid_size))) return;
    int layer = first_layer + z;
    int i0 = bounds[column_first + g.x];
    int i1 = bounds[column_first + g.x + 1];
    int j0 = bounds[row_first + g.y];
    int j1 = bounds[row_first + g.y + 1];
    int coarse_level = fine_level + 1;
    float total = 0.0;
    for (int j = j0; j < j1; ++j) {
        float y = float(2 * j + 1) * float(coarse_size.y) / (2.0 * float(fine_size.y)) - 0.5;
        float y_floor = floor(y);
        float b = y - y_floor;
        int y0 = clamp(int(y_floor), 0, coarse_size.y - 1);
        int y1 = clamp(int(y_floor) + 1, 0, coarse_size.y - 1);
        for (int i = i0; i < i1; ++i) {
            float x = float(2 * i + 1) * float(coarse_size.x) / (2.0 * float(fine_size.x)) - 0.5;
            float x_floor = floor(x);
            float a = x - x_floor;
            int x0 = clamp(int(x_floor), 0, coarse_size.x - 1);
            int x1 = clamp(int(x_floor) + 1, 0, coarse_size.x - 1);
            vec4 top = mix(texelFetch(image, ivec3(x0, y0, layer), coarse_level),
                           texelFetch(image, ivec3(x1, y0, layer), coarse_level), a);
            vec4 bottom = mix(texelFetch(image, ivec3(x0, y1, layer), coarse_level),
                              texelFetch(image, ivec3(x1, y1, layer), coarse_level), a);
            vec4 fine = texelFetch(image, ivec3(i, j, layer), fine_level);
            total += squared(fine - mix(top, bottom, b));
        }
    }
    energy[out_first + (z * grid_size.y + g.y) * grid_size.x + g.x] = total * texel_area;
}
