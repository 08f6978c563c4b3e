// Anisotropic filtering done in the shader: footprint assembly.
// The pixel's footprint in level-0 texels has axes d_x = grad_x * size and d_y = grad_y * size.
// With P_max and P_min their lengths, N = min(ceil(P_max / P_min - 1e-3), max_anisotropy) trilinear
// taps spread evenly along the major axis, each at level log2(P_max / N) + bias, are averaged.
// A round footprint (N = 1) is one trilinear tap at log2(P_max): what textureGrad does. (The 1e-3
// keeps a ratio of 1 + float rounding at one tap.) `footprint_assembly` reads a 2-D texture,
// `footprint_assembly_layer` one layer of an array texture; both take their taps from `footprint`.

struct Footprint {
    vec2 major;  // the major axis in uv
    float lod;
    int taps;
};

Footprint footprint(vec2 grad_x, vec2 grad_y, vec2 size, float max_anisotropy, float bias) {
    float length_x = length(grad_x * size);
    float length_y = length(grad_y * size);
    float p_max = max(length_x, length_y);
    float p_min = min(length_x, length_y);
    float n = p_min > 0.0 ? min(ceil(p_max / p_min - 1e-3), max_anisotropy) : (p_max > 0.0 ? max_anisotropy : 1.0);
    n = max(n, 1.0);
    return Footprint(length_x >= length_y ? grad_x : grad_y, log2(max(p_max / n, 1e-30)) + bias, int(n));
}

vec4 footprint_assembly(sampler2D tex, vec2 uv, vec2 grad_x, vec2 grad_y, vec2 size,
                        float max_anisotropy, float bias) {
    Footprint f = footprint(grad_x, grad_y, size, max_anisotropy, bias);
    vec4 total = vec4(0.0);
    for (int k = 0; k < f.taps; ++k) {
        float t = (float(k) + 0.5) / float(f.taps) - 0.5;
        total += textureLod(tex, uv + f.major * t, f.lod);
    }
    return total / float(f.taps);
}

vec4 footprint_assembly_layer(sampler2DArray tex, vec2 uv, float layer, vec2 grad_x, vec2 grad_y, vec2 size,
                              float max_anisotropy, float bias) {
    Footprint f = footprint(grad_x, grad_y, size, max_anisotropy, bias);
    vec4 total = vec4(0.0);
    for (int k = 0; k < f.taps; ++k) {
        float t = (float(k) + 0.5) / float(f.taps) - 0.5;
        total += textureLod(tex, vec3(uv + f.major * t, layer), f.lod);
    }
    return total / float(f.taps);
}
