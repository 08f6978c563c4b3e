// The warp's quad: two triangles (a 4-vertex strip, no vertex buffer) covering the whole framebuffer.
// The fragment shader maps each pixel centre through the homography itself (warp.frag).

void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));  // (0,0) (1,0) (0,1) (1,1)
    gl_Position = vec4(corner * 2.0 - 1.0, 0.0, 1.0);
}
