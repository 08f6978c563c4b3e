"""EXIF orientation: every file path (8-bit through `PIL.ImageOps.exif_transpose`, 16-bit grey through it too,
16-bit colour PNGs plane by plane) turns the pixels as the EXIF table says, for all 8 orientations."""

from __future__ import annotations

import io

import numpy as np
import png
import pytest
from PIL import Image

from glmip.image import as_image_array


def exif_reference(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The picture as meant to be seen, from the EXIF 2.32 table (tag 0x0112): where the stored row 0 and
    column 0 belong. Written with numpy's rotations, independent of Pillow and of glmip."""
    return {
        1: lambda a: a,
        2: np.fliplr,                       # row 0 on top, column 0 on the right: mirrored
        3: lambda a: np.rot90(a, 2),        # row 0 at the bottom, column 0 on the right: turned half round
        4: np.flipud,                       # row 0 at the bottom, column 0 on the left: flipped
        5: lambda a: a.swapaxes(0, 1),      # row 0 on the left, column 0 on top: transposed
        6: lambda a: np.rot90(a, -1),       # row 0 on the right, column 0 on top: a quarter turn clockwise
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # row 0 on the right, column 0 at the bottom: transverse
        8: lambda a: np.rot90(a, 1),        # row 0 on the left, column 0 at the bottom: a quarter turn back
    }[orientation](stored)


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def deep_png_with_exif(path, pixels: np.ndarray, orientation: int) -> None:
    """A 16-bit RGB(A) PNG (pypng: PIL cannot write one) with an eXIf chunk before its image data."""
    buffer = io.BytesIO()
    mode = {3: "RGB;16", 4: "RGBA;16"}[pixels.shape[2]]
    png.from_array(pixels.reshape(pixels.shape[0], -1), mode).write(buffer)
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    payload = exif_bytes(orientation).removeprefix(b"Exif\x00\x00")  # PNG's eXIf holds the TIFF block alone
    chunks.insert(1, (b"eXIf", payload))
    with open(path, "wb") as file:
        png.write_chunks(file, chunks)


ORIENTATIONS = range(1, 9)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_8_bit_files_turn_as_exif_says(tmp_path, orientation, mode):
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    path = tmp_path / "turned.png"
    Image.fromarray(stored[..., 0] if channels == 1 else stored, mode).save(path, exif=exif_bytes(orientation))
    got = as_image_array(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, exif_reference(stored, orientation))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_8_bit_jpeg_turns_as_exif_says(tmp_path, orientation):
    """JPEG, where orientation tags live in practice: flat 8 x 8 colour blocks, compared by their means (the
    lossy round trip blurs their edges; a wrong turn moves whole blocks)."""
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)
    stored[:8, 16:] = (0, 255, 0)
    stored[8:, :8] = (0, 0, 255)
    path = tmp_path / "turned.jpg"
    Image.fromarray(stored).save(path, exif=exif_bytes(orientation), quality=95, subsampling=0)
    got, expected = as_image_array(path), exif_reference(stored, orientation)
    assert got.shape == expected.shape

    def block_means(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0] // 8, 8, a.shape[1] // 8, 8, 3).mean(axis=(1, 3))

    assert np.abs(block_means(got) - block_means(expected)).max() < 8


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_16_bit_grey_png_turns_and_keeps_16_bits(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 65536, (5, 7), dtype=np.uint16)
    path = tmp_path / "turned.png"
    Image.fromarray(stored).save(path, exif=exif_bytes(orientation))
    got = as_image_array(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[..., 0], exif_reference(stored, orientation))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_png_turns_and_keeps_16_bits(tmp_path, orientation, channels):
    stored = np.random.default_rng(orientation).integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    path = tmp_path / "turned.png"
    deep_png_with_exif(path, stored, orientation)
    assert Image.open(path).getexif().get(0x0112) == orientation  # the chunk is where PIL finds it
    got = as_image_array(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, exif_reference(stored, orientation))
