"""Turns what users pass as an image into one validated numpy `HxWxC` array.

Convention:
    numpy arrays are `HxW` or `HxWxC`; torch tensors are `CxHxW`, `HxWxC`, `HxW` or
    `1xCxHxW` (a 3-D tensor whose first and last dimensions could both be channels is read
    as `CxHxW`, torch's own layout); C is 1..4; row 0 is the image's top.
    dtypes: uint8, uint16 (unorm), float32 (any finite value).
    files: 16-bit PNGs keep their 16 bits (decoded with pypng, as PIL reads RGB(A) only as 8 bits);
    EXIF orientation is applied, so row 0 is the top of the picture as it is meant to be seen;
    files over `MAX_PIXELS` pixels are refused from their header, before decoding.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError

__all__ = ["as_image_array", "read_image_file", "MAX_PIXELS"]

# Largest image (width x height) glmip reads, from a file or an array; over it a ValueError comes
# before any decode or copy (the decompression-bomb check). The largest texture GL allows on
# common devices is 16384 x 16384. Raise it by assignment or pass `max_pixels=` to the readers.
MAX_PIXELS = 16384 * 16384

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIL_LIMIT_LOCK = threading.Lock()

ACCEPTED_DTYPES = ("uint8", "uint16", "float32")
ACCEPTED_KINDS = "a numpy array (HxWxC), a torch tensor (CxHxW or HxWxC), a PIL image or a file path"

# PIL modes glmip reads as they are, and what the rest are converted to first.
_PIL_DIRECT = {"L", "LA", "RGB", "RGBA", "F", "I;16"}
_PIL_CONVERT = {"P": "RGBA", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
                "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA", "La": "LA"}


def _from_pil(image: Any) -> np.ndarray:
    mode = image.mode
    if mode in _PIL_CONVERT:
        image = image.convert(_PIL_CONVERT[mode])
    elif mode in ("I", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"32-bit integer PIL image (mode {mode!r}) has values outside 0..65535; "
                             "convert it to 'F' or uint16 first")
        return array.astype(np.uint16)
    elif mode not in _PIL_DIRECT:
        raise TypeError(f"PIL image mode {mode!r} is not supported; convert it to L, LA, RGB, RGBA, I;16 or F")
    array = np.asarray(image)
    return array.astype(np.uint16) if mode == "I;16" else array


def _from_torch(tensor: Any) -> np.ndarray:
    if tensor.device.type == "meta":
        raise TypeError("a meta tensor holds no data; pass a CPU or CUDA tensor")
    t = tensor.detach().cpu()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"a 4-D tensor must be 1xCxHxW (one image), got shape {tuple(t.shape)}")
        t = t[0]
    if t.ndim == 3:
        if 1 <= t.shape[0] <= 4:
            t = t.permute(1, 2, 0)
        elif not 1 <= t.shape[2] <= 4:
            raise ValueError(f"a 3-D tensor must be CxHxW or HxWxC with C in 1..4, got shape {tuple(t.shape)}")
    elif t.ndim != 2:
        raise ValueError(f"a tensor image must have 2, 3 or 4 dimensions, got shape {tuple(t.shape)}")
    name = str(t.dtype).removeprefix("torch.")
    if name not in ACCEPTED_DTYPES:
        raise TypeError(f"image dtype torch.{name} is not supported; use one of {', '.join(ACCEPTED_DTYPES)}")
    return t.numpy()  # a strided view: as_image_array checks the size before it copies


def _png_16bit_colour(path: Path) -> bool:
    """Whether `path` is a PNG of 16-bit RGB, RGBA or grey+alpha (what PIL reduces to 8 bits)."""
    with open(path, "rb") as file:
        header = file.read(26)
    return len(header) == 26 and header[:8] == _PNG_SIGNATURE and header[24] == 16 and header[25] in (2, 4, 6)


def _read_png16(path: Path) -> np.ndarray:
    import png  # pypng: pure Python, keeps 16-bit samples

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = int(info["planes"])
    array = np.empty((height, width * planes), np.uint16)
    for y, row in enumerate(rows):
        array[y] = row
    return array.reshape(height, width, planes)


def _orient_deep_png(array: np.ndarray, orientation: int) -> np.ndarray:
    """A 16-bit colour PNG's pixels (HxWxC, from pypng) turned as EXIF `orientation` (1..8) says, plane by plane
    through `PIL.ImageOps.exif_transpose`: PIL holds 16-bit samples only as one-channel images ("I;16"), so the
    planes go through it one at a time and are stacked again."""
    from PIL import Image, ImageOps

    planes = []
    for channel in range(array.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(array[:, :, channel]))
        plane.getexif()[0x0112] = orientation  # exif_transpose reads the orientation from the image's EXIF
        planes.append(np.asarray(ImageOps.exif_transpose(plane)))
    return np.stack(planes, axis=2)


def read_image_file(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """The image in file `path` as `HxWxC` (before `as_image_array`'s checks): 16-bit PNGs kept at
    16 bits, EXIF orientation applied. Raises ValueError naming the path and the reason for a
    missing or oversized (over `max_pixels`, default `MAX_PIXELS`) file, and its subclass
    `glmip.errors.CorruptFileError` (file, member, reason) for one that is damaged or not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {str(path)!r}")
    try:
        with _PIL_LIMIT_LOCK:  # glmip's own limit replaces PIL's bomb check while the header is read
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                opened = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with opened:
            width, height = opened.size
            if width * height > limit:
                raise ValueError(f"cannot read {str(path)!r}: its header says {width}x{height} = {width * height} "
                                 f"pixels, over the limit of {limit} (a decompression-bomb guard); pass "
                                 f"max_pixels= or set glmip.image.MAX_PIXELS to read it")
            orientation = int(opened.getexif().get(0x0112, 1))
            if _png_16bit_colour(path):
                array = _read_png16(path)
                if orientation != 1:
                    array = _orient_deep_png(array, orientation)
            else:
                opened.load()
                array = _from_pil(ImageOps.exif_transpose(opened) if orientation != 1 else opened)
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise CorruptFileError(path, "image data", f"cannot read it as an image: {error}") from None
    except UnidentifiedImageError as error:
        raise CorruptFileError(path, "header", f"cannot read it as an image: not a format Pillow reads "
                                               f"({error})") from None
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise CorruptFileError(path, "image data", f"cannot read it as an image: truncated or damaged ("
                                                   f"{type(error).__name__}: {error})") from None
    except Exception as error:  # pypng's FormatError/ChunkError and other decoder failures
        if type(error).__module__ != "png":
            raise
        raise CorruptFileError(path, "PNG chunks", f"cannot read it as a PNG ({type(error).__name__}: "
                                                   f"{error})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def as_image_array(image: Any, max_side: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """`image` as a C-contiguous `HxWxC` numpy array, validated (see the module's convention).

    Raises TypeError for unsupported kinds or dtypes and ValueError for bad shapes, empty
    images, NaN or infinite values, sides over `max_side` (a device's texture size) or more
    than `max_pixels` pixels (default `MAX_PIXELS`); sizes are checked before any copy.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(image, (str, os.PathLike)):
        array = read_image_file(image, limit)
    elif type(image).__module__.startswith("PIL.") and hasattr(image, "mode"):
        array = _from_pil(image)
    elif type(image).__module__.startswith("torch") and hasattr(image, "detach"):
        array = _from_torch(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass {ACCEPTED_KINDS}")

    if array.dtype.name not in ACCEPTED_DTYPES:
        raise TypeError(f"image dtype {array.dtype} is not supported; use one of {', '.join(ACCEPTED_DTYPES)}"
                        + (" (e.g. array.astype(np.float32))" if array.dtype.kind == "f" else ""))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"an image must be HxW or HxWxC, got shape {array.shape}")
    if not 1 <= array.shape[2] <= 4:
        hint = " (for CxHxW data, transpose to HxWxC)" if 1 <= array.shape[0] <= 4 else ""
        raise ValueError(f"an image must have 1 to 4 channels in its last axis, got shape {array.shape}{hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {array.shape})")
    height, width = array.shape[:2]
    if max_side is not None and (width > max_side or height > max_side):
        raise ValueError(f"image of {width}x{height} exceeds this device's maximum texture size "
                         f"{max_side}x{max_side}; downscale or crop it (tiling is not supported yet)")
    if width * height > limit:
        raise ValueError(f"image of {width}x{height} = {width * height} pixels is over the limit of {limit}; "
                         "set glmip.image.MAX_PIXELS (or pass max_pixels=) to accept it")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"the float image holds {bad} NaN or infinite value(s); only finite values are accepted")
    return np.ascontiguousarray(array)
