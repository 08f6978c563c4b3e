// One separable pass of a mip reduction: float RGBA texels resampled along one axis, for every
// layer of a batch at once (layer = work-group z; layers lie one after another in both buffers).
// FILTER_BOX: area-weighted mean over the destination texel's footprint, so odd sizes
//             weigh the 3 source texels a destination covers (as vk_compute_mipmaps does).
// FILTER_LANCZOS: Lanczos-LANCZOS_A windowed sinc scaled to the destination's spacing,
//             clamp-to-edge, weights normalised to sum 1.
layout(local_size_x = 16, local_size_y = 16) in;

uniform ivec2 source_size;
uniform ivec2 destination_size;  // equals source_size except along `axis`
uniform int axis;                // 0: along x (rows), 1: along y (columns)

layout(std430, binding = 0) readonly buffer Source { vec4 source[]; };
layout(std430, binding = 1) writeonly buffer Destination { vec4 destination[]; };

const float PI = 3.14159265358979;

float sinc(float x) {
    return abs(x) < 1e-6 ? 1.0 : sin(PI * x) / (PI * x);
}

vec4 fetch(ivec2 p, int along_axis_index, int layer) {
    p[axis] = along_axis_index;
    return source[(layer * source_size.y + p.y) * source_size.x + p.x];
}

void main() {
    ivec2 p = ivec2(gl_GlobalInvocationID.xy);
    int layer = int(gl_GlobalInvocationID.z);
    if (any(greaterThanEqual(p, destination_size))) return;
    int n_source = source_size[axis];
    int n_destination = destination_size[axis];
    int i = p[axis];
    vec4 total = vec4(0.0);
    float weight_sum = 0.0;
#if defined(FILTER_BOX)
    float lo = float(i * n_source) / float(n_destination);
    float hi = float((i + 1) * n_source) / float(n_destination);
    for (int m = int(floor(lo)); float(m) < hi; ++m) {
        float w = min(hi, float(m + 1)) - max(lo, float(m));
        total += w * fetch(p, m, layer);
        weight_sum += w;
    }
#elif defined(FILTER_LANCZOS)
    float scale = float(n_source) / float(n_destination);
    float centre = (float(i) + 0.5) * scale;
    float radius = float(LANCZOS_A) * scale;
    for (int m = int(floor(centre - radius)); m <= int(ceil(centre + radius)); ++m) {
        float t = (float(m) + 0.5 - centre) / scale;
        if (abs(t) >= float(LANCZOS_A)) continue;
        float w = sinc(t) * sinc(t / float(LANCZOS_A));
        total += w * fetch(p, clamp(m, 0, n_source - 1), layer);
        weight_sum += w;
    }
#else
#error "define FILTER_BOX or FILTER_LANCZOS"
#endif
    destination[(layer * destination_size.y + p.y) * destination_size.x + p.x] = total / weight_sum;
}
