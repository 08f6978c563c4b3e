// Level 0 of the pyramid's texture -> float RGBA texels (row-major, row 0 = image top).
// texelFetch normalises unorm formats and decodes sRGB formats to linear light.
layout(local_size_x = 16, local_size_y = 16) in;

uniform sampler2D source_texture;
uniform ivec2 size;

layout(std430, binding = 0) writeonly buffer Destination { vec4 destination[]; };

void main() {
    ivec2 p = ivec2(gl_GlobalInvocationID.xy);
    if (any(greaterThanEqual(p, size))) return;
    destination[p.y * size.x + p.x] = texelFetch(source_texture, p, 0);
}
