"""Bad input on the newer surfaces (slides, warps, TokenBatch, maps, the slide/warp/tokens CLI): each answered
with a ValueError/TypeError or a documented glmip error naming the value, before any work, GL_NO_ERROR after;
the CLI exits 2 with one line and checks its outputs can be written before it works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glmip
from glmip import bridge
from glmip.cli import main
from glmip.errors import ClosedError
from glmip.token_batch import TokenBatch

tifffile = pytest.importorskip("tifffile")


def write_tiff(path, pixels: np.ndarray):
    grey = pixels.ndim == 2 or pixels.shape[2] == 1
    tifffile.imwrite(path, pixels, tile=(64, 64), photometric="minisblack" if grey else "rgb")
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input-slides")
    rng = np.random.default_rng(0)
    return {"rgb": write_tiff(folder / "small.tif", rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),
            "u16grey": write_tiff(folder / "u16grey.tif", rng.integers(0, 65536, (200, 300), dtype=np.uint16)),
            "f32grey": write_tiff(folder / "f32grey.tif", rng.random((200, 300), dtype=np.float32))}


@pytest.fixture
def pyramid(ctx):
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with ctx.pyramid(image, method="box") as p:
        yield p


def small_batch(pyramid) -> TokenBatch:
    layout = glmip.allocate(glmip.gaze((64, 64), (0.5, 0.5)), 8, 8, image_size=(64, 64))
    return TokenBatch.from_parts([pyramid.tokens(layout)], [layout])


# -- slides ---------------------------------------------------------------------------------
def test_slide_refuses_a_layout_made_for_another_image(ctx, slides):
    other = glmip.allocate(glmip.gaze((1000, 1000), (0.5, 0.5)), 32, 16, image_size=(1000, 1000))
    with ctx.slide(slides["rgb"]) as slide:
        with pytest.raises(ValueError, match=r"made for an image of \(1000, 1000\).*this slide is 300x200"):
            slide.tokens(other)
        with pytest.raises(TypeError, match="layout must be a glmip.TokenLayout.*got NoneType"):
            slide.tokens(None)
        good = slide.allocate(slide.tissue(), 16)
        short = glmip.TokenLayout(good.cx, good.cy[:-1], good.size, good.level, good.patch, good.image_size)
        with pytest.raises(ValueError, match="1-D of one length"):
            slide.tokens(short)
        with pytest.raises(TypeError, match="CPU or CUDA torch tensor, got meta"):
            slide.tokens(good, out=torch.empty((len(good), 3, 16, 16), device="meta"))
        with pytest.raises(TypeError, match="lod_bias must be a number, got 'x'"):
            slide.tokens(good, lod_bias="x")


def test_slide_read_refuses_a_float_box(ctx, slides):
    with ctx.slide(slides["rgb"]) as slide:
        with pytest.raises(TypeError, match=r"box must be \(x0, y0, x1, y1\), four ints.*10.5"):
            slide.read(0, (0, 0, 10.5, 10))
        with pytest.raises(TypeError, match="four ints"):
            slide.read(0, "0,0,5,5")
        assert slide.read(0, (0, 0, 10, 10)).shape == (10, 10, 3)


def test_slide_sample_checks_its_numbers(ctx, slides):
    uv = np.random.default_rng(2).random((5, 2)).astype(np.float32)
    grad = np.full((5, 2, 2), 0.01, np.float32)
    with ctx.slide(slides["rgb"]) as slide:
        with pytest.raises(TypeError, match="lod must be a number.*'1'"):
            slide.sample(uv, "1")
        with pytest.raises(ValueError, match="lod must be finite.*nan"):
            slide.sample(uv, np.nan)
        with pytest.raises(ValueError, match=r"one value per point \(5\), got shape \(3,\)"):
            slide.sample(uv, np.zeros(3))
        with pytest.raises(TypeError, match="lod_bias must be a number, got 'x'"):
            slide.sample(uv, 1.0, lod_bias="x")
        with pytest.raises(ValueError, match="anisotropy must be finite, got nan"):
            slide.sample(uv, grad=grad, filter="anisotropic", anisotropy=float("nan"))
        with pytest.raises(TypeError, match="a meta tensor"):
            slide.sample(uv, torch.zeros(5, device="meta"))
        assert slide.sample(uv, torch.full((5,), 1.5)).shape == (5, 3)


def test_slide_render_refuses_a_string_region(ctx, slides):
    with ctx.slide(slides["rgb"]) as slide:
        with pytest.raises(TypeError, match="region must be four numbers.*'abcd'"):
            slide.render(region="abcd")
        with pytest.raises(TypeError, match="region must be four numbers"):
            slide.render(region="0011")
        with pytest.raises(TypeError, match="max_level must be a number"):
            slide.render(relevance=slide.tissue(), max_level="3", size=(8, 8))


def test_slide_cache_sizes_are_checked_for_arrays_too(ctx):
    image = np.zeros((64, 64, 3), np.uint8)
    for name, value, error in (("cache_bytes", -1, ValueError), ("cache_bytes", "big", TypeError),
                               ("gl_cache_bytes", -1, ValueError), ("cache_bytes", 1.5, TypeError)):
        with pytest.raises(error, match=f"{name} must be a non-negative int"):
            ctx.slide(image, **{name: value})


def test_slide_tissue_treats_nan_pixels_as_background(ctx, tmp_path):
    pixels = np.random.default_rng(3).random((128, 128), dtype=np.float32)
    pixels[:, :40] = np.nan
    with ctx.slide(write_tiff(tmp_path / "nan.tif", pixels)) as slide:
        tissue = slide.tissue()
    assert tissue.shape == (128, 128) and not tissue[:, :40].any() and tissue[:, 40:].any()
    assert not glmip.slides.tissue_mask(np.full((4, 4, 1), np.nan, np.float32)).any()


def test_a_closed_slide_raises_closed_error(ctx, slides):
    slide = ctx.slide(slides["rgb"])
    slide.close()
    for call in (lambda: slide.sample(np.zeros((1, 2)), 0.0), lambda: slide.read(0), slide.thumbnail,
                 lambda: slide.render(size=(4, 4))):
        with pytest.raises(ClosedError, match="Slide is closed"):
            call()


# -- warps -----------------------------------------------------------------------------------
def test_warp_refuses_a_meta_out_tensor(pyramid):
    with pytest.raises(TypeError, match="CPU or CUDA torch tensor, got meta"):
        pyramid.warp(np.eye(3), (8, 8), out=torch.empty((1, 3, 8, 8), device="meta"))


def test_warp_is_scale_free_in_the_matrix(pyramid):
    plain = pyramid.warp(np.diag([2.0, 2.0, 1.0]), (16, 16), filter="trilinear")
    huge = pyramid.warp(np.diag([2.0, 2.0, 1.0]) * 1e150, (16, 16), filter="trilinear")
    torch.testing.assert_close(huge, plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="singular"):
        pyramid.warp(np.diag([1e300, 1e-300, 1.0]), (8, 8))


def test_warp_output_limit_holds_for_one_channel(ctx):
    with ctx.pyramid(np.zeros((64, 64, 1), np.uint8), method="box") as grey:
        with pytest.raises(ValueError, match="the warp's output 16384x16384 is 268435456 pixels, over the limit"):
            grey.warp(np.eye(3), (16384, 16384))


def test_warp_checks_the_size_before_the_matrix(pyramid):
    wide = glmip.tilt_homography((64, 64), (20000, 20), 30)
    with pytest.raises(ValueError, match="framebuffer limit"):
        pyramid.warp(wide, (20000, 20))
    assert pyramid.warp(glmip.tilt_homography((64, 64), (4000, 4), 30), (4000, 4)).shape == (1, 3, 4, 4000)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"tilt": float("nan")}, ValueError, "tilt .* must be finite"),
    ({"tilt": "30"}, TypeError, "tilt .* must be a number"),
    ({"tilt": 30, "zoom": float("inf")}, ValueError, "zoom must be finite"),
    ({"tilt": 30, "pan": (1.0,)}, TypeError, "pan must be"),
])
def test_tilt_homography_checks_its_numbers(kwargs, error, match):
    with pytest.raises(error, match=match):
        glmip.tilt_homography((64, 64), (32, 32), **kwargs)


# -- TokenBatch ------------------------------------------------------------------------------
def test_token_batch_to_a_dtype_converts_features_only(pyramid):
    half = small_batch(pyramid).to(torch.float16)
    assert half.tokens.dtype == torch.float16 and half.cu_seqlens.dtype == torch.int32
    assert half.levels.dtype == half.centres.dtype == half.sizes.dtype == torch.float32
    assert small_batch(pyramid).to("cpu", torch.bfloat16).tokens.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="floating torch dtype"):
        small_batch(pyramid).to(torch.int64)
    with pytest.raises(ValueError, match="must name a torch device.*'xyz'"):
        small_batch(pyramid).to("xyz")
    with pytest.raises(TypeError, match="device must be"):
        small_batch(pyramid).to(1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_token_batch_to_cuda_without_cuda_says_so(pyramid):
    with pytest.raises(ValueError, match="no CUDA device"):
        small_batch(pyramid).to("cuda")


def test_token_batch_methods_refuse_numpy_and_bad_values(pyramid, tmp_path):
    batch = small_batch(pyramid)
    n = batch.tokens.shape[0]
    with pytest.raises(TypeError, match="packed must be a torch tensor.*ndarray"):
        batch.pad(np.zeros((n, 3)))
    with pytest.raises(TypeError, match="packed must be a torch tensor.*ndarray"):
        batch.nested(np.zeros((n, 3)))
    with pytest.raises(TypeError, match="value .* must be a number, got 'x'"):
        batch.pad(batch.tokens, None, "x")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike.*123"):
        batch.save(123)
    missing = tmp_path / "missing" / "t.pt"
    with pytest.raises(ValueError, match="folder .*missing' does not exist"):
        batch.save(missing)
    assert not missing.parent.exists()


def test_token_batch_extra_travels_with_the_file(pyramid, tmp_path):
    batch = small_batch(pyramid)
    ids = np.arange(batch.tokens.shape[0], dtype=np.int64) % 3
    with pytest.raises(ValueError, match="one row per token"):
        batch.with_extra(region=ids[:-1])
    tagged = batch.with_extra(region=ids)
    tagged.save(tmp_path / "t.pt")
    loaded = TokenBatch.load(tmp_path / "t.pt").to(torch.float16)
    assert loaded.extra["region"].dtype == torch.int64 and loaded.extra["region"].tolist() == ids.tolist()


def test_naflex_normalises_with_the_models_mean_and_std(pyramid):
    batch = small_batch(pyramid)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raw, normalised = batch.naflex(mean=0, std=1)["patches"], batch.naflex(mean=mean, std=std)["patches"]
    channel = torch.arange(raw.shape[-1]) % 3  # channels last: channel fastest
    expected = (raw - torch.tensor(mean)[channel]) / torch.tensor(std)[channel]
    valid = batch.valid()
    torch.testing.assert_close(normalised[valid], expected[valid], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="naflex needs the model's normalisation"):
        batch.naflex(mean=mean)
    with pytest.raises(ValueError, match=r"mean must be one finite float or 3 \(one per channel\)"):
        batch.naflex(mean=(0.5, 0.5), std=(0.5,))
    with pytest.raises(ValueError, match="all > 0"):
        batch.naflex(mean=mean, std=(0.2, 0.0, 0.2))


# -- maps, relevance, bridge -----------------------------------------------------------------
def test_maps_refuse_strings_and_meta_tensors(pyramid):
    with pytest.raises(TypeError, match="max_level must be a number, got '3'"):
        glmip.lod_map(np.random.default_rng(0).random((4, 4)), max_level="3")
    with pytest.raises(TypeError, match="gamma must be a number"):
        glmip.lod_map(np.ones((4, 4)), gamma=None)
    meta = torch.empty((4, 4), device="meta")
    with pytest.raises(TypeError, match="relevance map is a meta tensor"):
        glmip.lod_map(meta)
    with pytest.raises(TypeError, match="LOD map is a meta tensor"):
        pyramid.render(meta)
    with pytest.raises(TypeError, match="relevance map is a meta tensor"):
        pyramid.render(relevance=meta)


def test_relevance_calls_name_bad_arguments(pyramid):
    with pytest.raises(TypeError, match="centres must be a tuple of consecutive ints, got None"):
        glmip.saliency(pyramid, centres=None)
    with pytest.raises(TypeError, match=r"image_size must be \(width, height\).*\(5,\)"):
        glmip.relevance_pyramid(np.ones((4, 4)), 8, image_size=(5,))


def test_texture_to_tensor_refuses_what_is_not_a_texture(ctx, pyramid):
    with pytest.raises(TypeError, match="moderngl.Texture.*got str"):
        bridge.texture_to_tensor(ctx, "tex")
    with pytest.raises(TypeError, match="moderngl.Texture.*got Pyramid"):
        bridge.texture_to_tensor(ctx, pyramid)


# -- the command line --------------------------------------------------------------------------
def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()][-1]


def test_cli_warp_answers_huge_matrices_and_sizes(tmp_path, capsys):
    out = tmp_path / "w.png"
    code = main(["warp", "--matrix", "1e300,0,0,0,1e300,0,0,0,1e300", "--size", "16x16", "-o", str(out)])
    assert code == 0 and out.exists()  # the identity, scaled
    line = one_line_error(capsys, main(["warp", "--matrix", "1e300,0,0,0,1e-300,0,0,0,1", "-o", str(out)]))
    assert "singular" in line
    line = one_line_error(capsys, main(["warp", "--tilt", "30", "--size", "20000x20", "-o", str(out)]))
    assert "framebuffer limit" in line and "singular" not in line


@pytest.mark.parametrize("command", [["tokens", "--budget", "8"], ["warp", "--tilt", "30", "--size", "8x8"]])
def test_cli_checks_its_outputs_before_working(tmp_path, capsys, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    picture = tmp_path / "out.png"
    extra = ["--save-tokens", str(blocker / "t.pt")] if command[0] == "tokens" else []
    line = one_line_error(capsys, main([*command, *extra, "-o", str(picture if extra else blocker / "w.png")]))
    assert "a-file" in line and "cannot make its folder" in line
    assert not picture.exists()  # refused before the work, not after


def test_cli_tokens_save_tokens_creates_its_folder_and_refuses_huge_budgets(tmp_path, capsys):
    saved = tmp_path / "new" / "t.pt"
    assert main(["tokens", "--budget", "8", "--save-tokens", str(saved), "-o", str(tmp_path / "l.png")]) == 0
    assert len(TokenBatch.load(saved).layouts) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["tokens", "--budget", "100000000000000000000"])
    assert exit_.value.code == 2 and "--budget must be within 1..2147483647" in capsys.readouterr().err


def test_cli_slide_tokens_writes_a_token_batch_with_region_ids(slides, tmp_path, capsys):
    saved = tmp_path / "slide.pt"
    assert main(["slide", "tokens", str(slides["rgb"]), "--budget", "16", "--region", "128", "--save-tokens",
                 str(saved), "-o", str(tmp_path / "l.png")]) == 0
    batch = TokenBatch.load(saved)
    assert batch.image_sizes == ((300, 200),) and batch.tokens.shape[1:] == (3, 16, 16)
    region = batch.extra["region"]
    assert region.dtype == torch.int64 and region.shape == (batch.tokens.shape[0],) and 0 <= region.min()
    assert region.max() < 6  # 3 x 2 regions of 128 px over 300 x 200
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    line = one_line_error(capsys, main(["slide", "tokens", str(slides["rgb"]), "--budget", "16", "--save-tokens",
                                        str(blocked / "t.pt"), "-o", str(tmp_path / "never.png")]))
    assert "--save-tokens" in line and not (tmp_path / "never.png").exists()


@pytest.mark.parametrize("kind", ["u16grey", "f32grey"])
def test_cli_slide_commands_take_grey_slides(slides, tmp_path, kind):
    assert main(["slide", "render", str(slides[kind]), "--size", "64x48", "-o", str(tmp_path / "r.png")]) == 0
    assert main(["slide", "tokens", str(slides[kind]), "--budget", "16", "-o", str(tmp_path / "t.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "t.png").mode == "RGB" and Image.open(tmp_path / "r.png").size == (64, 48)


def test_cli_slide_render_refuses_a_region_outside_the_slide(slides, tmp_path, capsys):
    line = one_line_error(capsys, main(["slide", "render", str(slides["rgb"]), "--region", "0,0,1e300,5",
                                        "-o", str(tmp_path / "r.png")]))
    assert "not a box inside the slide's level 0 (0,0,300,200)" in line
