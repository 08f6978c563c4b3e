"""`glmip.tokenize`: a batch of images in, one `TokenBatch` out — the path training code takes.

Each image becomes a GPU pyramid; its relevance (a map, one map for all, a callable on the
pyramid such as `glmip.saliency`, or uniform) is allocated into a `TokenLayout` within the
budget; the tokens of every image are sampled together (`glmip.sampling.tokens_batch`: one
dispatch binds up to 16 pyramids) into one packed tensor.

Convention:
    images keep their order: image b's tokens are rows cu_seqlens[b]:cu_seqlens[b+1] of
    `TokenBatch.tokens`; sizes may differ, channel count and dtype may not (one batch, one
    tensor); a `BxCxHxW` tensor is B images of CxHxW.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .allocate import ClassBudgets, allocate_batch
from .context import Context
from .image import as_image_array
from .sampling import tokens_batch

if TYPE_CHECKING:
    from .token_batch import TokenBatch

__all__ = ["tokenize", "as_image_list"]


def as_image_list(images: Any) -> list[np.ndarray]:
    """`images` (a list of anything `Context.pyramid` takes, or a BxCxHxW torch tensor / BxHxWxC
    numpy array) as validated `HxWxC` arrays of one channel count and dtype."""
    if hasattr(images, "ndim") and getattr(images, "ndim", 0) == 4:
        images = list(images)
    elif isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of images or a BxCxHxW tensor, got {type(images).__name__}; "
                        "wrap a single image in a list")
    if len(images) == 0:
        raise ValueError("an empty batch: pass at least one image")
    arrays = [as_image_array(image) for image in images]
    first = arrays[0]
    for index, array in enumerate(arrays[1:], start=1):
        if array.shape[2] != first.shape[2] or array.dtype != first.dtype:
            raise ValueError(f"image {index} has {array.shape[2]} channel(s) of {array.dtype}, image 0 has "
                             f"{first.shape[2]} of {first.dtype}; one batch holds one channel count and dtype "
                             "(convert them, or tokenize them in separate batches)")
    return arrays


def _relevance_per_image(relevance: Any, count: int) -> list[Any]:
    if relevance is None or callable(relevance):
        return [relevance] * count
    if isinstance(relevance, (list, tuple)):
        if len(relevance) != count:
            raise ValueError(f"got {len(relevance)} relevance maps for {count} images; pass one per image, one map "
                             "for all, a callable (pyramid) -> map, or None for uniform")
        return list(relevance)
    if hasattr(relevance, "ndim") and relevance.ndim in (2, 3):
        return [relevance] * count
    raise TypeError(f"relevance must be a map, a list of maps, a callable (pyramid) -> map or None, got "
                    f"{type(relevance).__name__}")


def tokenize(images: Any, relevance: Any = None, budget: int = 256, patch: int = 16, *,
             context: Context | None = None, classes: ClassBudgets | None = None, method: str = "hardware",
             filter: str = "trilinear", device: Any = "cpu", srgb: bool = False) -> TokenBatch:
    """Tokenize a batch of images: for each, a budget of square tokens placed by its relevance,
    sampled patch x patch at their own levels, all packed into one `TokenBatch`.

    images: a list of anything `Context.pyramid` takes (arrays, tensors, PIL images, paths; sizes
    may differ) or a BxCxHxW tensor. relevance: a list of maps (one per image, any resolution),
    one map for all, a callable `(pyramid) -> map` (e.g. `glmip.saliency`), or None (uniform).
    budget, patch, classes: as `glmip.allocate`. method, srgb: the pyramid filter. filter:
    "trilinear" or "anisotropic". device: where the tokens go. context: a `glmip.Context` to use
    (one is made and closed for this call when None; pass one for repeated calls).
    """
    arrays = as_image_list(images)
    sources = _relevance_per_image(relevance, len(arrays))
    own_context = context is None
    ctx = Context() if own_context else context
    pyramids = []
    try:
        for array in arrays:
            pyramids.append(ctx.pyramid(array, method=method, srgb=srgb))
        maps = [np.ones((1, 1), np.float32) if source is None else source(pyramid) if callable(source) else source
                for source, pyramid in zip(sources, pyramids, strict=True)]
        layouts = allocate_batch(maps, budget, patch, image_sizes=[(p.width, p.height) for p in pyramids],
                                 classes=classes, context=ctx)
        tokens = tokens_batch(pyramids, layouts, patch, filter)
    finally:
        for pyramid in pyramids:
            pyramid.close()
        if own_context:
            ctx.close()
    from .token_batch import TokenBatch

    return TokenBatch.from_packed(tokens, layouts).to(device)
