// The dense (or masked) patch grids of several mip levels of the images of one batch array texture,
// in one dispatch, one invocation a texel. The work is cut into cells of tile x tile texels; cell k
// names its source (layer, level, x0, y0: its top-left texel in the level, (0, 0) the image's top-left)
// and its place in the output (base, the float index of its channel-0 top-left sample; stride_c and
// stride_y, the floats between channels and rows; its width | height << 16, the part of the tile it
// writes). Tokens are cells of patch x patch written as (C, P, P) blocks; level images are tiles of a
// (C, H, W) image. Texels past the level's edge (a patch that does not divide the level, a smaller
// image of a mixed batch, a padding cell placed far outside) are written as 0.
// texelFetch reads the stored texel exactly: unorm normalised to [0, 1], sRGB decoded, float as is.
layout(local_size_x = 64) in;
#include "common.glsl"

uniform sampler2DArray images;
uniform uint cell_count;
uniform int tile;

layout(std430, binding = 0) readonly buffer Cells { uvec4 cells[]; };  // (layer, level, x0, y0), (base, stride_c, stride_y, w | h << 16)
layout(std430, binding = 2) writeonly buffer Samples { float samples[]; };

void main() {
    uint i = flat_invocation_index();
    uint per_cell = uint(tile * tile);
    uint k = i / per_cell;
    if (k >= cell_count) return;
    uint s = i % per_cell;
    uvec2 offset = uvec2(s % uint(tile), s / uint(tile));
    uvec4 source = cells[2u * k];
    uvec4 target = cells[2u * k + 1u];
    if (offset.x >= (target.w & 0xffffu) || offset.y >= (target.w >> 16)) return;
    int level = int(source.y);
    ivec2 texel = ivec2(source.zw + offset);
    ivec2 size = textureSize(images, level).xy;
    vec4 value = vec4(0.0);
    if (texel.x < size.x && texel.y < size.y) value = texelFetch(images, ivec3(texel, int(source.x)), level);
    uint at = target.x + offset.y * target.z + offset.x;
    for (int c = 0; c < CHANNELS; ++c) samples[at + uint(c) * target.y] = value[c];
}
