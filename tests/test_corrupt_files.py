"""Damaged and foreign files: each kind of corruption raises `glmip.errors.CorruptFileError` naming the file,
the member at fault and the reason (never an OSError, EOFError, KeyError or UnpicklingError from inside)."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

import glmip
from glmip.errors import CorruptFileError, GlmipError
from glmip.token_batch import TokenBatch


def saved_batch(tmp_path) -> tuple[TokenBatch, object]:
    rng = np.random.default_rng(0)
    layout = glmip.TokenLayout(cx=rng.uniform(0, 64, 3), cy=rng.uniform(0, 48, 3), size=np.full(3, 8.0),
                               level=np.zeros(3), patch=8, image_size=(64, 48))
    batch = TokenBatch.from_parts([torch.rand(3, 3, 8, 8)], [layout])
    path = tmp_path / "batch.pt"
    batch.save(path)
    return batch, path


def rewrite(path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def test_corrupt_file_error_is_a_value_error_and_a_glmip_error_that_pickles():
    error = CorruptFileError("a.pt", "layouts[0].cx", "missing")
    assert isinstance(error, ValueError) and isinstance(error, GlmipError)
    assert str(error) == "a.pt: layouts[0].cx: missing"
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.member, again.reason) == ("a.pt", "layouts[0].cx", "missing")


CORRUPTIONS = {
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[:200]), "archive", "truncated"),
    "empty": (lambda path: path.write_bytes(b""), "file", "empty"),
    "garbage": (lambda path: path.write_bytes(b"\x00not a zip at all" * 50), "archive", "not a torch.save"),
    "foreign pickle": (lambda path: path.write_bytes(pickle.dumps({"a": re.compile("x")})), "pickle",
                       "objects other than tensors"),
    "foreign torch file": (lambda path: torch.save({"tokens": torch.zeros(1)}, path), "format",
                           "not a saved glmip.TokenBatch"),
    "not a dict": (lambda path: torch.save([1, 2], path), "format", "got 'list'"),
    "newer version": (lambda path: rewrite(path, lambda s: s.update(version=99)), "version", "99"),
    "missing tokens": (lambda path: rewrite(path, lambda s: s.pop("tokens")), "tokens", "missing"),
    "missing layouts": (lambda path: rewrite(path, lambda s: s.pop("layouts")), "layouts", "missing"),
    "missing cx": (lambda path: rewrite(path, lambda s: s["layouts"][0].pop("cx")), re.escape("layouts[0].cx"),
                   "missing"),
    "tokens of a wrong type": (lambda path: rewrite(path, lambda s: s.update(tokens=[1.0, 2.0])), "tokens",
                               "must be a tensor, got list"),
    "integer tokens": (lambda path: rewrite(path, lambda s: s.update(tokens=torch.zeros(3, 3, 8, 8).byte())),
                       "tokens", "float"),
    "layouts of a wrong type": (lambda path: rewrite(path, lambda s: s.update(layouts={"a": 1})), "layouts",
                                "must be a list"),
    "layout of a wrong type": (lambda path: rewrite(path, lambda s: s.update(layouts=[3])),
                               re.escape("layouts[0]"), "must be a dict"),
    "patch of a wrong type": (lambda path: rewrite(path, lambda s: s["layouts"][0].update(patch="8")),
                              re.escape("layouts[0].patch"), "must be an int"),
    "image_size of a wrong length": (lambda path: rewrite(path, lambda s: s["layouts"][0].update(image_size=[64])),
                                     re.escape("layouts[0].image_size"), "two ints"),
    "token count mismatch": (lambda path: rewrite(path, lambda s: s.update(tokens=torch.zeros(5, 3, 8, 8))),
                             "layouts", "hold 3 tokens but tokens has 5"),
    "layout arrays of mismatched length": (
        lambda path: rewrite(path, lambda s: s["layouts"][0].update(cy=torch.zeros(2, dtype=torch.float64))),
        "tokens and layouts", "must match"),
    "extra of a wrong type": (lambda path: rewrite(path, lambda s: s.update(extra=[1])), "extra", "dict"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_corruption_of_a_token_file_is_named(tmp_path, kind):
    _, path = saved_batch(tmp_path)
    corrupt, member, reason = CORRUPTIONS[kind]
    corrupt(path)
    with pytest.raises(CorruptFileError, match=f"{re.escape(str(path))}: {member}: .*{reason}") as caught:
        TokenBatch.load(path)
    assert caught.value.path == str(path)


def test_a_missing_token_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such TokenBatch file"):
        TokenBatch.load(tmp_path / "nothing.pt")


def test_a_corrupt_slide_tile_is_a_corrupt_file_error(tmp_path):
    """A slide tile whose compressed bytes are damaged: SlideReadError, a CorruptFileError naming the tile."""
    tifffile = pytest.importorskip("tifffile")
    from glmip.slides import SlideReadError

    path = tmp_path / "slide.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), tile=(64, 64),
                     compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[1]
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    with glmip.Context() as ctx, ctx.slide(path, tile=64) as slide:
        assert slide.read(0, (0, 0, 64, 64)).shape == (64, 64, 3)  # the other tiles stay readable
        with pytest.raises(CorruptFileError, match=r"slide.tif: tile \(column 1, row 0\) of level 0 .*: is corrupt") \
                as caught:
            slide.read(0, (64, 0, 128, 64))
        assert isinstance(caught.value, SlideReadError) and caught.value.member.startswith("tile (column 1")


def tiled_tiff(path) -> bytes:
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(1)
    tifffile.imwrite(path, rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), tile=(64, 64), compression="zlib",
                     photometric="rgb")
    return path.read_bytes()


SLIDE_CORRUPTIONS = {
    "empty": (lambda data: b"", "header", "not a slide tiffslide can open"),
    "cut inside the header": (lambda data: data[:6], "header", "not a slide tiffslide can open"),
    "another format": (lambda data: open(glmip.DEFAULT_IMAGE, "rb").read(), "header", "not a TIFF"),
    "truncated tiles": (lambda data: data[:len(data) // 2], r"tile \(column \d, row \d\) of level 0",
                        "truncated|is corrupt"),
}


@pytest.mark.parametrize("kind", list(SLIDE_CORRUPTIONS))
def test_each_corruption_of_a_slide_is_named(ctx, tmp_path, kind):
    from glmip.slides import SlideReadError

    path = tmp_path / "slide.tif"
    corrupt, member, reason = SLIDE_CORRUPTIONS[kind]
    path.write_bytes(corrupt(tiled_tiff(path)))
    with pytest.raises(SlideReadError, match=f"{re.escape(str(path))}: {member}.*: .*({reason})") as caught:
        with ctx.slide(path, tile=64) as slide:
            slide.read(0)
    assert isinstance(caught.value, CorruptFileError) and caught.value.path == str(path)


def test_a_slide_cut_inside_a_tile_says_truncated(ctx, tmp_path):
    from glmip.slides import SlideReadError

    path = tmp_path / "slide.tif"
    data = tiled_tiff(path)
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    last = int(np.argmax(offsets))
    path.write_bytes(data[:offsets[last] + counts[last] // 2])  # the last tile's bytes end halfway
    with ctx.slide(path, tile=64) as slide:
        with pytest.raises(SlideReadError, match=r"tile \(column 3, row 3\) of level 0 .*: the file ends \d+ bytes "
                                                 r"before this tile's end \(truncated\)"):
            slide.read(0)


IMAGE_CORRUPTIONS = {
    "empty": (lambda data: b"", "header", "not a format Pillow reads"),
    "not an image": (lambda data: b"hello" * 100, "header", "not a format Pillow reads"),
    "truncated": (lambda data: data[:len(data) // 3], "image data", "truncated or damaged"),
}


@pytest.mark.parametrize("kind", list(IMAGE_CORRUPTIONS))
def test_each_corruption_of_an_image_is_named(tmp_path, kind):
    from glmip.image import read_image_file

    path = tmp_path / "picture.png"
    corrupt, member, reason = IMAGE_CORRUPTIONS[kind]
    path.write_bytes(corrupt(glmip.DEFAULT_IMAGE.read_bytes()))
    with pytest.raises(CorruptFileError, match=f"{re.escape(str(path))}: {member}: .*{reason}"):
        read_image_file(path)


def test_a_damaged_16_bit_png_chunk_is_named(tmp_path):
    png = pytest.importorskip("png")
    from glmip.image import read_image_file

    path = tmp_path / "deep.png"
    with open(path, "wb") as file:
        png.Writer(8, 8, greyscale=False, bitdepth=16).write(file, np.zeros((8, 24), np.uint16).tolist())
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start:start + 8] = b"\x00" * 8  # the compressed pixels, their CRC now wrong
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"{re.escape(str(path))}: (PNG chunks|image data): "):
        read_image_file(path)
