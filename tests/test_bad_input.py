"""Every bad input of issue 15 part B answered: a ValueError/TypeError or a glmip error, checked
before anything is allocated, with no GL error left behind (the `ctx` fixture checks that)."""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import glmip
from glmip import bridge, limits
from glmip.errors import ClosedError, WrongThreadError
from glmip.image import as_image_array

IMAGE = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


@pytest.fixture
def pyramid(ctx):
    with ctx.pyramid(IMAGE) as p:
        yield p


def in_thread(function):
    """Run `function` on a new thread; return what it returned or raised."""
    box: dict[str, object] = {}

    def run():
        try:
            box["result"] = function()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            box["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box


# -- threads ----------------------------------------------------------------------------
@pytest.mark.parametrize("use", [
    lambda p: p.sample(np.full((4, 2), 0.5), lod=0.0),
    lambda p: p.sample(np.full((4, 2), 0.5), lod=0.0, out="torch"),
    lambda p: p.level(0),
    lambda p: p.render(np.zeros((2, 2))),
    lambda p: glmip.saliency(p),
])
def test_a_pyramid_used_from_another_thread_raises_instead_of_zeros(pyramid, use):
    box = in_thread(lambda: use(pyramid))
    assert isinstance(box.get("error"), WrongThreadError), box


def test_a_pyramid_created_on_another_thread_raises(ctx):
    box = in_thread(lambda: ctx.pyramid(IMAGE))
    assert isinstance(box.get("error"), WrongThreadError), box
    # The context still works on its own thread (no cached limit of 0, no broken state).
    assert ctx.max_texture_size >= 1024
    with ctx.pyramid(IMAGE) as p:
        assert np.array_equal(p.level(0), IMAGE)


def test_close_from_another_thread_leaves_the_context_usable_by_its_owner():
    with glmip.Context() as own:
        p = own.pyramid(IMAGE)
        box = in_thread(p.close)
        assert isinstance(box.get("error"), WrongThreadError), box
        assert np.array_equal(p.level(0), IMAGE)  # nothing half-closed
        p.close()
        with pytest.raises(ClosedError):
            p.level(0)


def live_textures(context, names: int = 4096) -> int:
    """How many of the first `names` texture names are live in `context` (glIsTexture)."""
    import ctypes

    from glmip.gl.raw import _proc

    context.make_current()
    is_texture = _proc("glIsTexture", ctypes.c_ubyte, ctypes.c_uint)
    return sum(bool(is_texture(name)) for name in range(1, names))


def test_200_create_close_cycles_leave_no_live_textures():
    with glmip.Context() as own:
        before = live_textures(own)
        in_use = own.live_textures
        for _ in range(200):
            p = own.pyramid(IMAGE[:4, :4])
            assert p.array.name != 0
            p.close()
        # one array texture of this shape stays, kept by the context for the next batch of the shape
        assert live_textures(own) == before + 1 and own.live_textures == in_use


# -- sizes over the stated limits: refused at once, nothing allocated ---------------------
def timed(function):
    start = time.perf_counter()
    try:
        function()
    finally:
        assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("call, match", [
    (lambda p: glmip.saliency(p, size=(100000, 100000)), "over the limit"),
    (lambda p: p.render(np.zeros((2, 2)), size=(100000, 100000)), "over the limit"),
    (lambda p: p.render(np.full((2, 20000), 4.0)), "maximum texture size"),
    (lambda p: p.tokens(glmip.allocate(np.ones((8, 8)), budget=4, patch=4), patch=100000), "MAX_PATCH"),
    (lambda p: p.tokens(glmip.allocate(np.ones((8, 8)), budget=4, patch=4), patch=2**40), "MAX_PATCH"),
    (lambda p: glmip.gaze((200000, 200000), (0.5, 0.5)), "over the limit"),
    (lambda p: glmip.relevance_pyramid(np.ones((4, 4)), 1, image_size=(10**6, 10**6)), "base grid"),
])
def test_oversized_requests_fail_fast(pyramid, call, match):
    with pytest.raises(ValueError, match=match):
        timed(lambda: call(pyramid))


def test_an_oversized_zero_stride_view_is_refused_before_any_copy():
    view = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))
    with pytest.raises(ValueError, match="over the limit"):
        timed(lambda: as_image_array(view))
    tensor = torch.zeros(1, 1, 3, dtype=torch.uint8).expand(20000, 20000, 3)
    with pytest.raises(ValueError, match="over the limit"):
        timed(lambda: as_image_array(tensor))


def test_a_view_over_the_texture_size_is_refused_by_the_pyramid(ctx):
    side = ctx.max_texture_size + 1
    view = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (1, side, 1))
    with pytest.raises(ValueError, match="maximum texture size"):
        timed(lambda: ctx.pyramid(view))


def test_the_compute_build_limit_is_checked_before_allocating(ctx):
    limit = limits.max_storage_bytes(ctx) // 16
    side = min(ctx.max_texture_size, int(np.sqrt(limit)) + 1)
    if side * side <= limit:
        pytest.skip(f"this device's compute path reaches its texture size {ctx.max_texture_size}")
    view = np.broadcast_to(np.zeros((1, 1, 4), np.uint8), (side, side, 4))
    for method in ("box", "lanczos"):
        with pytest.raises(ValueError, match=r"compute path builds at most \d+ pixels.*method='hardware'"):
            timed(lambda method=method: ctx.pyramid(view, method=method))


def test_tensor_to_texture_over_the_texture_size_raises(ctx):
    with pytest.raises(ValueError, match="maximum texture size"):
        bridge.tensor_to_texture(ctx, torch.rand(ctx.max_texture_size + 1, 1, 1))


def test_a_closed_pyramid_raises_before_allocating(ctx):
    p = ctx.pyramid(IMAGE)
    p.close()
    for call in (lambda: glmip.saliency(p, size=(4096, 4096)), lambda: p.sample(np.zeros((1, 2))),
                 lambda: p.render(np.zeros((2, 2))), lambda: p.level(0), lambda: bridge.level_to_tensor(p, 0)):
        with pytest.raises(ClosedError):
            call()


def test_a_closed_context_raises_closed_error():
    context = glmip.Context()
    context.close()
    with pytest.raises(ClosedError):
        context.pyramid(IMAGE)
    with pytest.raises(ClosedError):
        glmip.relevance_pyramid(np.ones((4, 4)), 2, context=context)


# -- silently accepted before -------------------------------------------------------------
@pytest.mark.parametrize("call, error", [
    (lambda p: p.render(np.zeros((2, 2)), lod_bias=float("nan")), ValueError),
    (lambda p: p.render(np.zeros((2, 2)), size=(1.5, 2)), TypeError),
    (lambda p: glmip.gaze((64, 64), (0.5, 0.5), radius=float("nan")), ValueError),
    (lambda p: glmip.gaze((64, 64), (0.5, 0.5), radius=1e-30), ValueError),
    (lambda p: glmip.gaze((10.5, 4), (0.5, 0.5)), TypeError),
    (lambda p: glmip.gaze((0, 4), (0.5, 0.5)), ValueError),
    (lambda p: p.tokens(glmip.allocate(np.ones((8, 8)), budget=4, patch=4), patch=1.7), TypeError),
    (lambda p: p.sample(np.full((2, 2), 0.5), lod="1"), TypeError),
    (lambda p: p.sample(np.full((2, 2), 0.5), lod=["a", "b"]), TypeError),
    (lambda p: p.sample(np.full((2, 2), 0.5), lod=0.0, lod_bias=float("nan")), ValueError),
    (lambda p: p.sample("uv"), TypeError),
    (lambda p: glmip.relevance_pyramid(np.ones((4, 4)), 2, image_size=(0, 0)), ValueError),
    (lambda p: glmip.relevance_pyramid(np.ones((4, 4)), 2.5), TypeError),
    (lambda p: glmip.saliency(p, size=(10.5, 4)), TypeError),
    (lambda p: glmip.saliency(p, centres=(100,)), ValueError),
])
def test_bad_values_are_refused(pyramid, call, error):
    with pytest.raises(error):
        call(pyramid)


def test_buffer_to_tensor_refuses_fractional_shapes_and_released_buffers(ctx):
    buffer = ctx.gl.buffer(reserve=64)
    try:
        with pytest.raises(TypeError, match="non-negative int"):
            bridge.buffer_to_tensor(buffer, (2.5, 2))
        with pytest.raises(TypeError, match="moderngl.Buffer"):
            bridge.buffer_to_tensor("buffer", (2, 2))
    finally:
        buffer.release()
    with pytest.raises(ValueError, match="released"):
        bridge.buffer_to_tensor(buffer, (2, 2))


# -- wrong types ----------------------------------------------------------------------------
def test_wrong_typed_objects_raise_type_error(ctx, pyramid):
    with pytest.raises(TypeError, match="glmip.Context"):
        glmip.relevance_pyramid(np.ones((4, 4)), 2, context="ctx")
    with pytest.raises(TypeError, match="TokenLayout"):
        pyramid.tokens(None)
    with pytest.raises(TypeError, match="glmip.Pyramid"):
        glmip.saliency("pyramid")
    with pytest.raises(TypeError, match="glmip.Context"):
        bridge.tensor_to_texture("ctx", torch.rand(2, 2, 1))


def test_meta_tensors_raise_type_error(ctx, pyramid):
    meta = torch.empty(3, 8, 8, device="meta")
    with pytest.raises(TypeError, match="meta"):
        ctx.pyramid(meta)
    with pytest.raises(TypeError, match="meta"):
        bridge.tensor_to_texture(ctx, meta)
    with pytest.raises(TypeError, match="meta"):
        pyramid.sample(torch.empty(4, 2, device="meta"))


# -- image files ------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def test_a_16_bit_rgb_png_keeps_16_bits(tmp_path):
    import png

    pixels = np.random.default_rng(1).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    png.from_array(pixels.reshape(6, 27), "RGB;16").save(str(path))
    assert Image.open(path).mode == "RGB"  # what PIL alone would give: 8 bits
    read = as_image_array(path)
    assert read.dtype == np.uint16 and np.array_equal(read, pixels)


def test_a_16_bit_rgba_png_keeps_16_bits(tmp_path):
    import png

    pixels = np.random.default_rng(2).integers(0, 65536, (5, 3, 4), dtype=np.uint16)
    path = tmp_path / "deep.png"
    png.from_array(pixels.reshape(5, 12), "RGBA;16").save(str(path))
    assert np.array_equal(as_image_array(path), pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.png"
    image.save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.array_equal(as_image_array(path), expected)
    if orientation in (5, 6, 7, 8):
        assert as_image_array(path).shape[:2] == (7, 5)


def good_png(tmp_path) -> bytes:
    path = tmp_path / "good.png"
    Image.fromarray(IMAGE).save(path)
    return path.read_bytes()


def test_a_truncated_png_is_a_value_error_naming_the_path(tmp_path):
    path = tmp_path / "truncated.png"
    path.write_bytes(good_png(tmp_path)[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        as_image_array(path)


def test_a_png_with_a_bad_crc_is_a_value_error(tmp_path):
    data = bytearray(good_png(tmp_path))
    data[29] ^= 0xFF  # a byte of IHDR's CRC
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="crc.png"):
        as_image_array(path)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    side = 100000
    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"bomb.png.*100000x100000.*MAX_PIXELS"):
        timed(lambda: as_image_array(path))
    small = tmp_path / "small.png"
    Image.fromarray(IMAGE).save(small)
    with pytest.raises(ValueError, match="max_pixels"):
        as_image_array(small, max_pixels=100)
    assert as_image_array(small, max_pixels=IMAGE.shape[0] * IMAGE.shape[1]).shape == IMAGE.shape


# -- the command line: never a traceback ---------------------------------------------------------
def cli(capsys, *args: str) -> tuple[int, str, str]:
    from glmip.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def small_png(tmp_path) -> str:
    path = tmp_path / "small.png"
    Image.fromarray(IMAGE).save(path)
    return str(path)


def test_cli_corrupt_input_is_an_error_message(tmp_path, capsys):
    path = tmp_path / "broken.png"
    path.write_bytes(good_png(tmp_path)[:100])
    for command in ("build", "render", "tokens"):
        code, _, err = cli(capsys, command, str(path), "-o", str(tmp_path / "out.png"))
        assert code == 2 and "broken.png" in err and "Traceback" not in err, err


def test_cli_unwritable_output_is_an_error_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, "build", small_png(tmp_path), "-o", str(blocker / "sheet.png"))
    assert code == 2 and "cannot write" in err, err


def test_cli_render_of_a_float_tiff_writes_a_16_bit_png(tmp_path, capsys):
    values = np.random.default_rng(3).random((20, 30), dtype=np.float32)
    tiff = tmp_path / "float.tiff"
    Image.fromarray(values, mode="F").save(tiff)
    out = tmp_path / "render.png"
    code, _, err = cli(capsys, "render", str(tiff), "--method", "box", "-o", str(out))
    assert code == 0, err
    import png

    width, height, _, info = png.Reader(filename=str(out)).read()
    assert (width, height, info["bitdepth"]) == (30, 20, 16)


def test_cli_refuses_a_fractional_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(capsys, "render", small_png(tmp_path), "--size", "1.5x2")
    assert exit_info.value.code == 2
    assert "two positive ints" in capsys.readouterr().err


def test_cli_clip_model_without_transformers_is_an_error_message(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    model = tmp_path / "clip"
    model.mkdir()
    code, _, err = cli(capsys, "render", small_png(tmp_path), "--query", "a cup", "--clip-model", str(model),
                       "-o", str(tmp_path / "out.png"))
    assert code == 2 and "transformers" in err and "Traceback" not in err, err


def test_cli_info_json_into_a_closed_pipe_exits_quietly():
    """`glmip info --json | head`: the reader closes the pipe before glmip writes (the context takes
    far longer to make than the close), so every write meets EPIPE."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "glmip.cli", "info", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_cli_build_prints_the_capability_report_only_with_verbose(tmp_path, capsys):
    code, out, err = cli(capsys, "build", small_png(tmp_path), "-o", str(tmp_path / "sheet.png"))
    assert code == 0 and "renderer" not in out and "wrote" in out, err
    code, out, err = cli(capsys, "build", small_png(tmp_path), "-v", "-o", str(tmp_path / "sheet.png"))
    assert code == 0 and "renderer" in out, err


@pytest.mark.parametrize("command", ["info", "build", "render", "tokens", "view"])
def test_cli_every_subcommand_accepts_device(command, capsys):
    from glmip.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--device", "0", "--help"])
    assert exit_info.value.code == 0
    assert "--device" in capsys.readouterr().out


def test_overlay_blends_in_uint8_within_one_lsb_of_float():
    from glmip.pictures import overlay

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (300, 17, 3), dtype=np.uint8)  # more rows than one strip
    colours = rng.integers(0, 256, (300, 17, 3), dtype=np.uint8)
    for alpha in (0.0, 0.25, 0.55, 1.0):
        reference = np.floor((1 - alpha) * image.astype(np.float64) + alpha * colours + 0.5)
        got = overlay(image, colours, alpha)
        assert got.dtype == np.uint8 and np.abs(got - reference).max() <= 1


def test_overlay_memory_is_bounded_to_strips():
    import tracemalloc

    from glmip.pictures import overlay

    image = np.zeros((2048, 2048, 3), np.uint8)
    colours = np.zeros((2048, 2048, 3), np.uint8)
    tracemalloc.start()
    overlay(image, colours, 0.25)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result_bytes = image.nbytes
    # The result plus a few uint16 strips; the float64 version needed 8 x 3 x the image (over 300 MiB).
    assert peak < result_bytes + 4 * 2 * 3 * 2048 * 256, peak


def test_reconstruct_refuses_nan_tokens_and_oversized_outputs():
    from glmip.reconstruct import reconstruct

    layout = glmip.allocate(np.ones((8, 8)), budget=4, patch=4)
    tokens = torch.rand(len(layout), 3, 4, 4)
    tokens[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reconstruct(tokens, layout)
    with pytest.raises(ValueError, match="over the limit"):
        timed(lambda: reconstruct(torch.rand(len(layout), 3, 4, 4), layout, size=(100000, 100000)))


# -- allocation, class budgets and the embedding (checks added after the allocator and nn landed) --------
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"min_level": 100}, ValueError, "min_level 100 is over 30"),
    ({"patch": 2**40}, ValueError, "over the limit of 1024"),
    ({"context": "ctx"}, TypeError, "context must be a glmip.Context"),
    ({"image_size": (0, 0)}, ValueError, "two positive ints"),
    ({"image_size": (10.5, 4)}, ValueError, "two positive ints"),
])
def test_allocate_refuses_bad_arguments_before_any_work(kwargs, error, match):
    with pytest.raises(error, match=match):
        glmip.allocate(np.ones((4, 4), np.float32), budget=16, **{"patch": 4, **kwargs})


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"relevant": 5}, TypeError, "relevant must be a \\(min, max\\) pair"),
    ({"background": "16-64"}, TypeError, "background must be a \\(min, max\\) pair"),
    ({"threshold": float("nan")}, ValueError, "threshold must be within"),
    ({"threshold": "high"}, TypeError, "threshold must be a number"),
])
def test_class_budgets_refuse_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        glmip.ClassBudgets(**kwargs)


def test_the_embedding_refuses_nan_meta_and_foreign_layouts():
    from glmip.nn import LodPatchEmbed

    layout = glmip.allocate(np.ones((2, 2), np.float32), budget=4, patch=4, image_size=(16, 16))
    embed = LodPatchEmbed(dim=8, patch=4)
    n = len(layout)
    with pytest.raises(ValueError, match="NaN or infinite"):
        embed([torch.full((n, 3, 4, 4), float("nan"))], [layout])
    with pytest.raises(TypeError, match="meta tensor"):
        embed([torch.empty((n, 3, 4, 4), device="meta")], [layout])
    with pytest.raises(TypeError, match="layout must be a glmip.TokenLayout"):
        embed([torch.zeros((n, 3, 4, 4))], ["layout"])
