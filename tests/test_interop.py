"""CUDA-GL interop: device matching (EGL <-> CUDA), path choice, and the zero-copy bridge.

Two halves. The first runs everywhere, for real: the matching functions on device lists as EGL
reports them, the errors a machine without CUDA gives, the report `info()` gives. The second
needs an NVIDIA GL context and CUDA (the lent GPU machine, scripts/gpu-run.sh) and is skipped
elsewhere with that reason; on a machine that has both it fails, never skips, when interop does
not work.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

import glmip
from glmip.bridge import BridgePath, buffer_to_tensor, level_to_tensor, tensor_to_texture, texture_to_tensor
from glmip.gl import interop
from glmip.gl import raw as _gl
from glmip.gl.devices import default_device, is_nvidia, match_cuda_device, normalize_uuid
from glmip.gl.paths import cuda_gl_availability

UUID_A = "1f2e3d4c5b6a79880123456789abcdef"
UUID_B = "00112233445566778899aabbccddeeff"

# Device lists as _gl.egl_devices() reports them on the machines glmip meets.
MESA_ONLY = [{"index": 0, "extensions": ["EGL_MESA_device_software", "EGL_EXT_device_drm_render_node"]}]
MESA_THEN_TWO_GPUS = [
    {"index": 0, "extensions": ["EGL_MESA_device_software"], "renderer": "llvmpipe (LLVM 19.1.7, 256 bits)"},
    {"index": 1, "extensions": ["EGL_NV_device_cuda", "EGL_EXT_device_drm", "EGL_EXT_device_persistent_id"],
     "drm_file": "/dev/dri/card1", "driver": "nvidia", "uuid": UUID_A, "cuda_device": 0},
    {"index": 2, "extensions": ["EGL_NV_device_cuda", "EGL_EXT_device_drm", "EGL_EXT_device_persistent_id"],
     "drm_file": "/dev/dri/card2", "driver": "nvidia", "uuid": UUID_B, "cuda_device": 1},
]
NO_UUIDS = [{k: v for k, v in d.items() if k != "uuid"} for d in MESA_THEN_TWO_GPUS]


# -- matching, on EGL-style device lists -------------------------------------------------
def test_uuid_forms_normalise_to_hex():
    raw = bytes.fromhex(UUID_A)
    dashed = f"GPU-{UUID_A[:8]}-{UUID_A[8:12]}-{UUID_A[12:16]}-{UUID_A[16:20]}-{UUID_A[20:]}"
    for form in (raw, list(raw), dashed, dashed.upper(), UUID_A, type("CUuuid", (), {"bytes": list(raw)})()):
        assert normalize_uuid(form) == UUID_A, form
    for junk in (None, b"short", "GPU-not-a-uuid", [300] * 16):
        assert normalize_uuid(junk) is None


def test_default_prefers_nvidia_over_a_mesa_device_listed_first():
    assert default_device(MESA_THEN_TWO_GPUS) == 1
    assert default_device(MESA_ONLY) == 0
    assert default_device([]) == 0
    by_vendor_only = [MESA_ONLY[0], {"index": 1, "extensions": [], "vendor": "NVIDIA Corporation"}]
    assert default_device(by_vendor_only) == 1 and is_nvidia(by_vendor_only[1])
    assert not is_nvidia(MESA_THEN_TWO_GPUS[0])


def test_match_by_uuid_not_by_position_nor_ordinal():
    # CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is the second GPU, whose UUID is B; the ordinal
    # EGL reports (1) and the list position both say otherwise, the UUID decides.
    assert match_cuda_device(MESA_THEN_TWO_GPUS, 0, UUID_B) == 2
    assert match_cuda_device(MESA_THEN_TWO_GPUS, 0, bytes.fromhex(UUID_A)) == 1


def test_match_falls_back_to_egl_cuda_device_nv_without_uuids():
    assert match_cuda_device(NO_UUIDS, 1, UUID_B) == 2
    assert match_cuda_device(NO_UUIDS, 0, None) == 1


def test_no_match_lists_every_egl_device():
    with pytest.raises(ValueError, match=r"no EGL device matches CUDA device 3.*0: llvmpipe.*1: nvidia.*2: nvidia"):
        match_cuda_device(NO_UUIDS, 3, None)
    with pytest.raises(ValueError, match="no EGL device matches CUDA device 0.*EGL_CUDA_DEVICE_NV not exposed"):
        match_cuda_device(MESA_ONLY, 0, UUID_A)
    twice = [MESA_THEN_TWO_GPUS[1], {**MESA_THEN_TWO_GPUS[2], "uuid": UUID_A}]
    with pytest.raises(ValueError, match="2 EGL devices report the UUID"):
        match_cuda_device(twice, 0, UUID_A)
    with pytest.raises(TypeError, match="non-negative int"):
        match_cuda_device(MESA_THEN_TWO_GPUS, -1, None)


def test_availability_names_the_mismatch():
    nvidia = "NVIDIA Corporation"
    if torch.cuda.is_available() and interop_importable():
        ok, why = cuda_gl_availability(nvidia, 1, lambda: ([0], "GL on cuda:0"), "EGL device 1")
        assert not ok and "runs on CUDA device(s) [0], not on cuda:1" in why and "cuda_device=1" in why
    else:  # the reasons come first on a machine without CUDA or cuda-python
        ok, why = cuda_gl_availability(nvidia, 0, lambda: pytest.fail("must not ask GL when CUDA is missing"))
        assert not ok and ("CUDA" in why or "cuda-python" in why)
    ok, why = cuda_gl_availability("Mesa/X.org", 0, lambda: pytest.fail("must not ask GL on Mesa"))
    assert not ok and "not NVIDIA" in why


def interop_importable() -> bool:
    try:
        interop.runtime()
    except interop.InteropUnavailable:
        return False
    return True


# -- this machine, for real --------------------------------------------------------------
def test_egl_devices_report_uuids_as_hex():
    devices = _gl.egl_devices()
    for position, device in enumerate(devices):
        assert device["index"] == position
        if "uuid" in device:
            assert normalize_uuid(device["uuid"]) == device["uuid"]


def test_info_reports_the_chosen_device_and_cuda_mapping(ctx):
    info = ctx.info()
    assert info["egl_device"] == ctx.device and info["cuda_device"] is None
    assert [d["index"] for d in info["egl_devices"] if d["chosen"]] == ([ctx.device] if info["egl_devices"] else [])
    for device in info["egl_devices"]:
        assert {"uuid", "cuda_device", "nvidia"} <= set(device)
    if "NVIDIA" not in info["vendor"].upper():
        assert info["gl_cuda_devices"] is None and "not NVIDIA" in info["gl_cuda_devices_why"]
        assert ctx.interop_available(0) == (False, f"the GL vendor is {info['vendor']!r}, not NVIDIA")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda_device=0 asked for, but torch sees no CUDA device"):
        glmip.Context(cuda_device=0)
    with pytest.raises(ValueError, match="no CUDA device"):
        glmip.Context(device=0, cuda_device=0)
    with pytest.raises(TypeError, match="cuda_device must be"):
        glmip.Context(cuda_device=True)


def test_prefer_interop_is_a_clear_error_where_it_cannot_run(ctx):
    buffer = ctx.gl.buffer(np.arange(4, dtype=np.float32))
    try:
        with pytest.raises(ValueError, match="prefer='interop' moves data between GL and CUDA tensors"):
            buffer_to_tensor(buffer, (4,), prefer="interop")
        with pytest.raises(ValueError, match="prefer must be one of 'auto', 'interop', 'readback'"):
            buffer_to_tensor(buffer, (4,), prefer="zero-copy")
        assert buffer_to_tensor(buffer, (4,), prefer="readback").path is BridgePath.READBACK
    finally:
        buffer.release()
    with ctx.pyramid(np.zeros((8, 8, 4), np.uint8)) as p:
        with pytest.raises(ValueError, match="prefer='interop'"):
            level_to_tensor(p, 0, prefer="interop")
    with pytest.raises(ValueError, match="prefer='interop'"):
        tensor_to_texture(ctx, torch.zeros(4, 4, 4, dtype=torch.uint8), prefer="interop")


def test_cuda_error_names_code_and_hint():
    assert interop.check((0,), "x") is None and interop.check((0, 7), "x") == 7
    assert interop.check((0, 1, 2), "x") == (1, 2)
    with pytest.raises(interop.CudaError, match=r"cudaGraphicsGLRegisterBuffer\(buffer 3\) failed with CUDA error "
                                                r"304 .*GL-side error.*device mismatch") as caught:
        interop.check((304, None), "cudaGraphicsGLRegisterBuffer(buffer 3)")
    assert caught.value.code == 304


@pytest.mark.skipif(interop_importable(), reason="checks the error of a machine without cuda-python")
def test_missing_cuda_python_is_a_clear_error():
    with pytest.raises(interop.InteropUnavailable, match="needs cuda-python"):
        interop.runtime()


# -- on an NVIDIA GL context with CUDA ----------------------------------------------------
NVIDIA_EGL = any(is_nvidia(d) for d in _gl.egl_devices())
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and NVIDIA_EGL),
                               reason="needs an NVIDIA GL context and CUDA; none on this machine")


@pytest.fixture(scope="module")
def cuda_ctx():
    with glmip.Context(cuda_device=0) as context:
        available, why = context.interop_available(0)
        assert available, f"NVIDIA EGL and CUDA are both here, yet interop is not available: {why}"
        yield context


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_gpu
def test_gpu_context_matches_cuda_device(cuda_ctx):
    info = cuda_ctx.info()
    print("GPU context:", {k: info[k] for k in ("renderer", "egl_device", "cuda_device", "gl_cuda_devices")},
          info["egl_devices"])
    assert info["cuda_device"] == 0 and info["gl_cuda_devices"] is not None and 0 in info["gl_cuda_devices"]
    chosen = next(d for d in info["egl_devices"] if d["chosen"])
    assert chosen["nvidia"]
    torch_uuid = normalize_uuid(getattr(torch.cuda.get_device_properties(0), "uuid", None))
    if chosen["uuid"] is not None and torch_uuid is not None:
        assert chosen["uuid"] == torch_uuid, "EGL's device UUID and torch's CUDA UUID differ"
    with glmip.Context() as default:
        assert default.info()["egl_devices"][default.device]["nvidia"], "Context() must pick the NVIDIA device"


@needs_gpu
def test_gpu_buffer_bit_equal_to_readback(cuda_ctx):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2**32, 3 * 257 * 4 + 64, dtype=np.uint32)
    buffer = cuda_ctx.gl.buffer(data)
    try:
        for dtype in (torch.float32, torch.uint8, torch.int64, torch.float16):
            shape = (3, 257 * 4 * 4 // dtype.itemsize)
            zero = buffer_to_tensor(buffer, shape, dtype, device="cuda", offset=64, prefer="interop")
            host = buffer_to_tensor(buffer, shape, dtype, offset=64, prefer="readback")
            assert zero.path is BridgePath.CUDA_GL and zero.tensor.is_cuda and host.path is BridgePath.READBACK
            assert torch.equal(zero.tensor.cpu().view(torch.uint8), host.tensor.view(torch.uint8))
        out = torch.full((16,), -1.0, device="cuda")
        assert buffer_to_tensor(buffer, (16,), out=out).tensor is out  # auto takes interop into `out`
        assert torch.equal(out.cpu(), buffer_to_tensor(buffer, (16,)).tensor)
    finally:
        buffer.release()


@needs_gpu
def test_gpu_tokens_bit_equal_to_readback(cuda_ctx):
    image = np.random.default_rng(1).integers(0, 256, (97, 61, 4), dtype=np.uint8)
    with cuda_ctx.pyramid(image, method="box") as p:
        layout = glmip.allocate(np.random.default_rng(2).random((8, 8)), budget=40, patch=8, image_size=(61, 97))
        host = p.tokens(layout)
        device = p.tokens(layout, out=torch.empty(host.shape, device="cuda"))
        assert device.is_cuda and torch.equal(device.cpu(), host)


@needs_gpu
@pytest.mark.parametrize("dtype, channels", [("uint8", 4), ("uint16", 1), ("float32", 2), ("uint8", 3)])
def test_gpu_levels_bit_equal_to_readback(cuda_ctx, dtype, channels):
    from conftest import random_image

    image = random_image(np.random.default_rng(3), 45, 77, channels, dtype)
    with cuda_ctx.pyramid(image, method="box") as p:
        for level in range(p.levels):
            host = level_to_tensor(p, level, prefer="readback").tensor
            auto = level_to_tensor(p, level, device="cuda")
            assert torch.equal(auto.tensor.cpu(), host)
            if channels == 3:  # CUDA cannot register RGB textures: auto reads back, interop says why
                assert auto.path is BridgePath.PINNED_READBACK
                with pytest.raises(ValueError, match="3-channel"):
                    level_to_tensor(p, level, device="cuda", prefer="interop")
            else:
                assert auto.path is BridgePath.CUDA_GL


@needs_gpu
def test_gpu_rendered_image_bit_equal_to_readback(cuda_ctx):
    gl = cuda_ctx.gl
    program = gl.program(
        vertex_shader="#version 450\nin vec2 p; out vec2 uv; void main() { uv = p; gl_Position = vec4(p, 0, 1); }",
        fragment_shader="#version 450\nin vec2 uv; out vec4 c; void main() { c = vec4(uv * 0.5 + 0.5, fract(uv.x * "
                        "uv.y * 37.0), 1); }")
    vbo = gl.buffer(np.array([-1, -1, 3, -1, -1, 3], np.float32))
    vao = gl.vertex_array(program, [(vbo, "2f", "p")])
    target = gl.texture((131, 67), 4)
    fbo = gl.framebuffer([target])
    try:
        fbo.use()
        vao.render()
        host = texture_to_tensor(cuda_ctx, target, prefer="readback")
        zero = texture_to_tensor(cuda_ctx, target, device="cuda", prefer="interop")
        assert zero.path is BridgePath.CUDA_GL and torch.equal(zero.tensor.cpu(), host.tensor)
        assert host.tensor.float().std() > 10, "the picture was rendered"
    finally:
        for obj in (fbo, target, vao, vbo, program):
            obj.release()


@needs_gpu
@pytest.mark.parametrize("dtype, channels", [(torch.uint8, 4), (torch.uint16, 1), (torch.float16, 2),
                                             (torch.float32, 4)])
def test_gpu_tensor_to_texture_device_to_device(cuda_ctx, dtype, channels):
    source = (torch.rand(23, 41, channels, device="cuda") * (255 if dtype == torch.uint8 else 1000)).to(dtype)
    texture = tensor_to_texture(cuda_ctx, source, prefer="interop")
    try:
        back = np.frombuffer(texture.read(alignment=1), dtype=str(dtype).removeprefix("torch."))
        np.testing.assert_array_equal(back.reshape(23, 41, channels), source.cpu().numpy())
    finally:
        texture.release()


@needs_gpu
def test_gpu_ten_thousand_map_cycles_leak_nothing(cuda_ctx):
    buffer = cuda_ctx.gl.buffer(np.arange(16384, dtype=np.float32))
    out = torch.empty(16384, device="cuda")
    try:
        with interop.GLBufferResource(buffer, flags="read_only") as resource:
            for _ in range(100):  # warm-up: driver and allocator caches
                resource.copy_to(out)
            torch.cuda.synchronize()
            gc.collect()
            before = (torch.cuda.memory_allocated(), interop.registered_count(), _rss_bytes(),
                      torch.cuda.mem_get_info()[0])
            for _ in range(10_000):
                resource.copy_to(out)
            torch.cuda.synchronize()
            gc.collect()
            after = (torch.cuda.memory_allocated(), interop.registered_count(), _rss_bytes(),
                     torch.cuda.mem_get_info()[0])
        assert torch.equal(out.cpu(), torch.arange(16384, dtype=torch.float32))
        assert after[:2] == before[:2], f"torch allocation / registrations grew: {before[:2]} -> {after[:2]}"
        assert after[2] - before[2] < 16 * 2**20, f"host RSS grew {(after[2] - before[2]) / 2**20:.1f} MiB"
        assert before[3] - after[3] < 16 * 2**20, f"free GPU memory fell {(before[3] - after[3]) / 2**20:.1f} MiB"
        registered = interop.registered_count()
        for _ in range(1000):  # the one-shot path: register, map, copy, unmap, unregister
            buffer_to_tensor(buffer, (16384,), out=out, prefer="interop")
        assert interop.registered_count() == registered
    finally:
        buffer.release()
    assert interop.registered_count() == 0


@needs_gpu
def test_gpu_errors_are_clear(cuda_ctx):
    cuda_ctx.gl  # noqa: B018 - make the context current
    with pytest.raises(interop.CudaError, match="cudaGraphicsGLRegisterBuffer.*CUDA error"):
        interop.GLBufferResource(987654)  # not a GL buffer
    assert interop.registered_count() == 0
    buffer = cuda_ctx.gl.buffer(reserve=64)
    try:
        with interop.GLBufferResource(buffer) as resource:
            with resource.map(), pytest.raises(RuntimeError, match="already mapped"):
                with resource.map():
                    pass
            with pytest.raises(ValueError, match="do not fit the mapped GL buffer of 64 bytes"):
                resource.copy_to(torch.empty(32, device="cuda"))
            with pytest.raises(ValueError, match="contiguous CUDA tensor"):
                resource.copy_to(torch.empty(4))
    finally:
        buffer.release()


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a device mismatch needs two CUDA devices")
def test_gpu_device_mismatch_is_a_clear_error(cuda_ctx):
    buffer = cuda_ctx.gl.buffer(reserve=64)
    try:
        with pytest.raises(ValueError, match=r"not on cuda:1.*Context\(cuda_device=1\)"):
            buffer_to_tensor(buffer, (16,), device="cuda:1", prefer="interop")
        assert buffer_to_tensor(buffer, (16,), device="cuda:1").path is BridgePath.PINNED_READBACK
    finally:
        buffer.release()
