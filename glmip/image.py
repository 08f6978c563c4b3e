"""Turns what users pass as an image into one validated numpy `HxWxC` array.

Convention:
    numpy arrays are `HxW` or `HxWxC`; torch tensors are `CxHxW`, `HxWxC`, `HxW` or
    `1xCxHxW` (a 3-D tensor whose first and last dimensions could both be channels is read
    as `CxHxW`, torch's own layout); C is 1..4; row 0 is the image's top.
    dtypes: uint8, uint16 (unorm), float32 (any finite value).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["as_image_array"]

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
    return t.contiguous().numpy()


def as_image_array(image: Any) -> np.ndarray:
    """`image` as a C-contiguous `HxWxC` numpy array, validated (see the module's convention).

    Raises TypeError for unsupported kinds or dtypes and ValueError for bad shapes, empty
    images, and NaN or infinite values.
    """
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image file not found: {str(path)!r}")
        try:
            with Image.open(path) as opened:
                opened.load()
                array = _from_pil(opened)
        except UnidentifiedImageError as error:
            raise ValueError(f"cannot read {str(path)!r} as an image: {error}") from None
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
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"the float image holds {bad} NaN or infinite value(s); only finite values are accepted")
    return np.ascontiguousarray(array)
