"""Turns what users pass as a batch of images into same-shape groups, each one block of memory.

A group is what one GL array texture holds: images of one (height, width, channels, dtype), in a
single `(n, H, W, C)` block, on the host (numpy) or on a CUDA device (torch) — uploaded with one
call, whatever n is. Everything is validated before anything is allocated on the GPU.

Convention:
    a 4-D numpy array is `BxHxWxC`; a 4-D torch tensor is `BxCxHxW` (torch's layout; any memory
    format, channels-last included, is read by its logical shape); a list holds single images
    (anything `glmip.image.as_image_array` reads, or CUDA tensors `CxHxW`/`1xCxHxW`). One batch
    holds one channel count and one dtype; sizes may differ (one group per size). Image b of the
    input is `groups[g].indices[i]` for exactly one (g, i); groups keep the input order inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .image import ACCEPTED_DTYPES, as_image_array

__all__ = ["ImageGroup", "group_images"]


@dataclass(frozen=True)
class ImageGroup:
    """Same-shape images of a batch in one block: `pixels` is a C-contiguous numpy array or CUDA
    torch tensor of shape (n, height, width, channels); `indices` (n,) int64 are their places in
    the input batch."""

    pixels: Any
    indices: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self.pixels.shape)  # type: ignore[return-value]

    @property
    def dtype_name(self) -> str:
        return str(self.pixels.dtype).removeprefix("torch.")

    @property
    def on_cuda(self) -> bool:
        return not isinstance(self.pixels, np.ndarray)


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _check_block(shape: tuple[int, ...], dtype_name: str, where: str, max_side: int) -> None:
    """Checks of a (n, H, W, C) block's geometry and dtype, before any copy."""
    if dtype_name not in ACCEPTED_DTYPES:
        raise TypeError(f"{where}: dtype {dtype_name} is not supported; use one of {', '.join(ACCEPTED_DTYPES)}")
    n, height, width, channels = shape
    if not 1 <= channels <= 4:
        raise ValueError(f"{where}: images must have 1 to 4 channels, got shape {shape}")
    if n == 0:
        raise ValueError(f"{where}: an empty batch; pass at least one image")
    if height == 0 or width == 0:
        raise ValueError(f"{where}: an empty image (shape {shape})")
    if width > max_side or height > max_side:
        raise ValueError(f"{where}: images of {width}x{height} exceed this device's maximum texture size "
                         f"{max_side}x{max_side}; downscale or crop them, or open them as a glmip.Slide")


def _tensor_block(tensor: Any, where: str, max_side: int) -> Any:
    """A 4-D torch tensor `BxCxHxW` as a contiguous `BxHxWxC` block: numpy for CPU tensors, a CUDA
    tensor for CUDA ones (the permutation runs on the device)."""
    import torch

    if tensor.device.type == "meta":
        raise TypeError(f"{where} is a meta tensor, which holds no data; pass a CPU or CUDA tensor")
    if tensor.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{where} is on {tensor.device}; glmip takes CPU or CUDA tensors")
    if tensor.ndim != 4 or not 1 <= tensor.shape[1] <= 4:
        raise ValueError(f"{where} must be BxCxHxW with C in 1..4, got shape {tuple(tensor.shape)}")
    b, c, h, w = (int(v) for v in tensor.shape)
    _check_block((b, h, w, c), str(tensor.dtype).removeprefix("torch."), where, max_side)
    block = tensor.detach().permute(0, 2, 3, 1)
    if tensor.is_floating_point() and not bool(torch.isfinite(block).all()):
        raise ValueError(f"{where} holds NaN or infinite values; only finite values are accepted")
    if tensor.device.type == "cuda":
        return block.contiguous()
    return np.ascontiguousarray(block.numpy())


def _array_block(array: np.ndarray, where: str, max_side: int) -> np.ndarray:
    if array.ndim != 4:
        raise ValueError(f"{where} must be BxHxWxC, got shape {array.shape}")
    _check_block(array.shape, array.dtype.name, where, max_side)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{where} holds NaN or infinite values; only finite values are accepted")
    return np.ascontiguousarray(array)


def _single(image: Any, index: int, max_side: int) -> Any:
    """One list item as an HxWxC block: a numpy array, or a CUDA tensor kept on its device."""
    where = f"image {index}"
    if _is_torch(image) and image.device.type == "cuda":
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"{where}: a CUDA tensor image must be CxHxW or 1xCxHxW, got shape {tuple(image.shape)}")
        return _tensor_block(image[None], where, max_side)[0]
    try:
        return as_image_array(image, max_side=max_side)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None


def group_images(images: Any, max_side: int, max_layers: int,
                 check: Callable[[tuple[int, int, int, int], str], None] | None = None
                 ) -> tuple[list[ImageGroup], int]:
    """`images` as same-shape groups of at most `max_layers` images each, and the batch size B.

    Raises TypeError/ValueError naming the image for anything unreadable, a mix of channel counts,
    dtypes or CUDA devices, sizes over `max_side`; `check(shape (n, H, W, C), dtype name)` runs on
    every group before its images are copied into one block (a caller's own limits, say); nothing is
    allocated on the GPU before this returns.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        _check_block(images.shape, images.dtype.name, "the batch array", max_side)
        if check is not None:
            check(images.shape, images.dtype.name)
        blocks = [(_array_block(images, "the batch array", max_side), np.arange(images.shape[0]))]
        count = images.shape[0]
    elif _is_torch(images) and images.ndim == 4:
        if check is not None and images.device.type != "meta" and 1 <= images.shape[1] <= 4:
            b, c, h, w = (int(v) for v in images.shape)
            check((b, h, w, c), str(images.dtype).removeprefix("torch."))
        blocks = [(_tensor_block(images, "the batch tensor", max_side), np.arange(images.shape[0]))]
        count = int(images.shape[0])
    elif isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of images, a BxCxHxW tensor or a BxHxWxC array, got "
                        f"{type(images).__name__}; wrap a single image in a list")
    else:
        if len(images) == 0:
            raise ValueError("an empty batch: pass at least one image")
        singles = [_single(image, index, max_side) for index, image in enumerate(images)]
        count = len(singles)
        first = singles[0]
        first_kind = (first.shape[2], str(first.dtype).removeprefix("torch."),
                      None if isinstance(first, np.ndarray) else str(first.device))
        by_shape: dict[tuple[Any, ...], list[int]] = {}
        for index, single in enumerate(singles):
            kind = (single.shape[2], str(single.dtype).removeprefix("torch."),
                    None if isinstance(single, np.ndarray) else str(single.device))
            if kind != first_kind:
                raise ValueError(f"image {index} has {kind[0]} channel(s) of {kind[1]}"
                                 f"{' on ' + kind[2] if kind[2] else ' on the host'}, image 0 has {first_kind[0]} of "
                                 f"{first_kind[1]}{' on ' + first_kind[2] if first_kind[2] else ' on the host'}; one "
                                 "batch holds one channel count, dtype and device (convert them, or use separate "
                                 "batches)")
            by_shape.setdefault(tuple(single.shape), []).append(index)
        blocks = []
        for shape, members in by_shape.items():
            if check is not None:
                check((len(members), *shape), first_kind[1])
            if isinstance(first, np.ndarray):
                block = np.stack([singles[i] for i in members])
            else:
                import torch

                block = torch.stack([singles[i] for i in members])
            blocks.append((block, np.asarray(members, np.int64)))
    groups = []
    for block, indices in blocks:
        for start in range(0, len(indices), max_layers):
            groups.append(ImageGroup(block[start:start + max_layers], np.asarray(indices[start:start + max_layers],
                                                                                  np.int64)))
    return groups, int(count)
