// Level 0 of every layer of a batch's array texture -> float RGBA texels (layer, row, column;
// row 0 = image top), one layer per work-group z. texelFetch normalises unorm formats and
// decodes sRGB formats to linear light.
layout(local_size_x = 16, local_size_y = 16) in;

uniform sampler2DArray source_texture;
uniform ivec2 size;
uniform int first_layer;  // the array layer of work-group z = 0

layout(std430, binding = 0) writeonly buffer Destination { vec4 destination[]; };

void main() {
    ivec2 p = ivec2(gl_GlobalInvocationID.xy);
    int layer = int(gl_GlobalInvocationID.z);
    if (any(greaterThanEqual(p, size))) return;
    destination[(layer * size.y + p.y) * size.x + p.x] = texelFetch(source_texture, ivec3(p, first_layer + layer), 0);
}
