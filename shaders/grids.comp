// The dense (or masked) patch grids of several mip levels of the images of one batch array texture,
// in one dispatch, one invocation a cell (a loop over its texels: on llvmpipe a third of the time of
// one invocation a texel, which pays an integer division and a table read per texel). Cell k
// names its source (layer, level, x0, y0: its top-left texel in the level, (0, 0) the image's top-left)
// and its place in the output (base, the float index of its channel-0 top-left sample; stride_c and
// stride_y, the floats between channels and rows; its width | height << 16, the texels it writes).
// Tokens are cells of patch x patch written as (C, P, P) blocks; level images are tiles of a (C, H, W)
// image. Texels past the level's edge (a patch that does not divide the level, a smaller
// image of a mixed batch, a padding cell placed far outside) are written as 0, by an explicit test: GL
// leaves an out-of-range texelFetch undefined (llvmpipe happens to return 0; other drivers need not).
// texelFetch reads the stored texel exactly: unorm normalised to [0, 1], sRGB decoded, float as is.
layout(local_size_x = 64) in;
#include "common.glsl"

uniform sampler2DArray images;
uniform uint cell_count;

// two rows a cell: (layer, level, x0, y0), (base, stride_c, stride_y, w | h << 16)
layout(std430, binding = 0) readonly buffer Cells { uvec4 cells[]; };
layout(std430, binding = 2) writeonly buffer Samples { float samples[]; };

void main() {
    uint k = flat_invocation_index();
    if (k >= cell_count) return;
    uvec4 source = cells[2u * k];
    uvec4 target = cells[2u * k + 1u];
    int level = int(source.y);
    ivec2 size = textureSize(images, level).xy;
    ivec2 first = ivec2(source.zw);
    int width = int(target.w & 0xffffu);
    int height = int(target.w >> 16);
    for (int y = 0; y < height; ++y) {
        uint at = target.x + uint(y) * target.z;
        for (int x = 0; x < width; ++x) {
            vec4 value = vec4(0.0);
            if (first.y + y < size.y && first.x + x < size.x)
                value = texelFetch(images, ivec3(first.x + x, first.y + y, int(source.x)), level);
            for (int c = 0; c < CHANNELS; ++c) samples[at + uint(x) + uint(c) * target.y] = value[c];
        }
    }
}
