"""`glmip.tokenize`: a batch of images in, one `TokenBatch` out — the path training code takes.

The batch is the unit: same-size images share one GPU array texture (one upload, one mip build);
relevance is built per batch (uniform and one shared map once, a list of maps in one dispatch
chain per resolution); one allocation covers the batch (images with one shared relevance are
allocated once); one dispatch per distinct image size samples every token into the context's
token buffer, which reaches `device` in one transfer. `PyramidBatch` is the handle to keep when
the same images are sampled more than once.

Convention:
    images keep their order: image b's tokens are rows cu_seqlens[b]:cu_seqlens[b+1] of
    `TokenBatch.tokens`; sizes may differ, channel count and dtype may not (one batch, one
    tensor); a `BxCxHxW` tensor is B images of CxHxW (a CUDA tensor stays on its device).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .allocate import ClassBudgets, allocate_batch
from .context import Context
from .detail import Criterion, detail_pyramid
from .limits import MAX_PATCH, check_context, positive_int
from .relevance import batch_relevance_pyramids

if TYPE_CHECKING:
    from .pyramid import PyramidBatch
    from .token_batch import TokenBatch

__all__ = ["tokenize", "tokenize_pyramids", "check_token_settings", "thread_context"]

_contexts = threading.local()


def thread_context() -> Context:
    """This thread's cached `glmip.Context` for calls made without one (made on first use, kept for
    the thread's life, remade if it was closed), so repeated `tokenize` calls reuse one context and
    its persistent buffers instead of creating and destroying a GL context each time."""
    ctx = getattr(_contexts, "context", None)
    if ctx is None or ctx.closed:
        ctx = Context()
        _contexts.context = ctx
    return ctx


def tokenize(images: Any, relevance: Any = None, budget: int = 256, patch: int = 16, *,
             context: Context | None = None, classes: ClassBudgets | None = None, method: str = "hardware",
             filter: str = "trilinear", device: Any = "cpu", srgb: bool = False,
             criterion: str | Criterion = "relevance") -> TokenBatch:
    """Tokenize a batch of images: for each, a budget of square tokens placed by its relevance,
    sampled patch x patch at their own levels, all packed into one `TokenBatch` on `device`.

    images: a list of anything `Context.pyramid` takes (arrays, tensors, PIL images, paths; sizes
    may differ), a BxCxHxW tensor (CPU or CUDA) or a BxHxWxC array. relevance: a list of maps (one
    per image, any resolution), one map for all, a callable `(pyramid) -> map` (e.g.
    `glmip.saliency`; called once per image), or None (uniform). budget, patch, classes: as
    `glmip.allocate`. criterion: "relevance" (split where relevance stands out, `glmip.allocate`'s
    default rule) or "detail" (split where relevance x the detail a coarser token would lose is largest:
    the batch's detail pyramids, `glmip.detail.detail_pyramid`, one dispatch chain per array texture,
    go to `glmip.allocate_batch(detail=...)`; with relevance None, the content-only quadtree).
    method, srgb: the pyramid filter (the detail pyramid is measured on it, in linear light when srgb).
    filter: "trilinear" or "anisotropic".
    device: where the tokens go ('cpu' or a CUDA device). context: a `glmip.Context` to use (default:
    this thread's cached one, see `thread_context`).
    """
    if context is not None:
        check_context(context)
    criterion = check_token_settings(budget, patch, filter, device, criterion)
    ctx = thread_context() if context is None else context
    with ctx.pyramids(images, method=method, srgb=srgb) as batch:
        return tokenize_pyramids(batch, relevance, budget, patch, classes=classes, filter=filter, device=device,
                                 criterion=criterion)


def check_token_settings(budget: int, patch: int, filter: str, device: Any,
                         criterion: str | Criterion = "relevance") -> Criterion:
    """`tokenize`'s checks on its settings alone (ValueError/TypeError naming the value), before any work;
    the parsed criterion."""
    from .bridge import check_destination
    from .sampling import Filter, parse_enum

    for name, value in (("budget", budget), ("patch", patch)):
        positive_int(value, name)
    if patch > MAX_PATCH:
        raise ValueError(f"patch {patch} is over the limit of {MAX_PATCH} samples a side; "
                         "raise glmip.limits.MAX_PATCH to go past it")
    if parse_enum(Filter, filter, "filter") not in (Filter.TRILINEAR, Filter.ANISOTROPIC):
        raise ValueError(f"tokens are sampled with 'trilinear' or 'anisotropic', got {filter!r}")
    parsed = Criterion.parse(criterion)
    check_destination(None, (0,), device)
    return parsed


def tokenize_pyramids(batch: PyramidBatch, relevance: Any = None, budget: int = 256, patch: int = 16, *,
                      classes: ClassBudgets | None = None, filter: str = "trilinear", device: Any = "cpu",
                      criterion: str | Criterion = "relevance") -> TokenBatch:
    """`tokenize`'s work after the pyramids: relevance (and detail, with criterion "detail"), one
    allocation and one token dispatch per array for a `PyramidBatch` already built (by `ctx.pyramids`),
    which stays open for the caller to sample again or close. Arguments as `tokenize`."""
    from .pyramid import PyramidBatch
    from .token_batch import TokenBatch

    if not isinstance(batch, PyramidBatch):
        raise TypeError(f"batch must be a glmip.PyramidBatch (ctx.pyramids(images)), got {type(batch).__name__}")
    criterion = check_token_settings(budget, patch, filter, device, criterion)
    ctx = batch.context
    pyramids = batch_relevance_pyramids(relevance, batch.image_sizes, patch, ctx, batch=batch)
    details = detail_pyramid(batch, patch) if criterion is Criterion.DETAIL else None
    layouts = allocate_batch(pyramids, budget, patch, classes=classes, detail=details)
    tokens = batch.tokens(layouts, patch, filter, device=device)
    return TokenBatch.from_sampled(tokens, layouts)
