// Float RGBA texels -> the packed bytes of a texture level (tight rows, CHANNELS per texel),
// one 32-bit word per invocation, ready to upload through a pixel-unpack buffer.
// FORMAT_UNORM8 (optionally SRGB: colour channels encoded to sRGB), FORMAT_UNORM16, FORMAT_FLOAT32.
layout(local_size_x = 256) in;
#include "common.glsl"  // after the layout: it reads gl_WorkGroupSize

uniform uint element_count;  // texels * CHANNELS

layout(std430, binding = 0) readonly buffer Source { vec4 source[]; };
layout(std430, binding = 1) writeonly buffer Destination { uint destination[]; };

#if defined(FORMAT_UNORM8)
const uint ELEMENTS_PER_WORD = 4u;
const uint BITS = 8u;
const float SCALE = 255.0;
#elif defined(FORMAT_UNORM16)
const uint ELEMENTS_PER_WORD = 2u;
const uint BITS = 16u;
const float SCALE = 65535.0;
#elif defined(FORMAT_FLOAT32)
const uint ELEMENTS_PER_WORD = 1u;
#else
#error "define FORMAT_UNORM8, FORMAT_UNORM16 or FORMAT_FLOAT32"
#endif

void main() {
    uint word_index = flat_invocation_index();
    uint first = word_index * ELEMENTS_PER_WORD;
    if (first >= element_count) return;
    uint word = 0u;
    for (uint k = 0u; k < ELEMENTS_PER_WORD; ++k) {
        uint e = first + k;
        if (e >= element_count) break;
        uint channel = e % uint(CHANNELS);
        float v = source[e / uint(CHANNELS)][channel];
#if defined(FORMAT_FLOAT32)
        word = floatBitsToUint(v);
#else
#if SRGB
        if (channel < 3u) v = linear_to_srgb(v);
#endif
        uint q = uint(floor(clamp(v, 0.0, 1.0) * SCALE + 0.5));
        word |= q << (BITS * k);
#endif
    }
    destination[word_index] = word;
}
