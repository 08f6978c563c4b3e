"""`TokenStream`: batches in, `TokenBatch`es out on the training device, the next batch prepared while
this one is tokenized — the documented way to feed a training loop from the main process.

    stream = TokenStream(loader, Tokenizer(budget=256, patch=16, out_device="cuda"))
    for batch, labels in stream:          # the loader yields (images, labels) or images
        loss = model(batch).loss(labels)

What overlaps with what:
    - a worker thread pulls batch k+1 from the source (a DataLoader, a generator, a list) and decodes
      and conforms it (`prepare_images`: paths, PIL images and arrays; tensors pass as they are) while
      the calling thread tokenizes batch k. PIL's decoders and numpy copies release the GIL.
    - batch k+1's upload and mip build are issued to the GL queue before batch k's relevance,
      allocation and token read-back, so the GPU builds the next pyramid while the host allocates
      the current one; batch k's pyramid is released as soon as its tokens are read.
    GL calls stay on the calling thread (a GL context is current on one thread); the worker never
    touches the Context.

Convention:
    An item of the source is a batch: a list of images (paths, arrays, PIL images, tensors), a BxHxWxC
    array or a BxCxHxW tensor (host or CUDA: a CUDA tensor goes into the GL array device to device),
    or a pair (batch, labels) whose labels are handed back beside the TokenBatch untouched. Batches
    come out in the source's order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..limits import positive_int
from .tokenizer import Tokenizer, prepare_images

__all__ = ["TokenStream"]

MAX_PREFETCH = 8
_DONE = object()


class _Failure:
    """An exception raised on the worker thread, re-raised on the caller's at the batch it belongs to."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2


def _prepared(images: Any, channels: int | None) -> Any:
    """A batch ready for `ctx.pyramids`: stacked arrays and tensors as they are, lists decoded and conformed."""
    if isinstance(images, np.ndarray) or hasattr(images, "detach"):
        return images
    return prepare_images(images, channels)


class TokenStream:
    """Iterate `source`'s batches as `TokenBatch`es (or `(TokenBatch, labels)` for `(images, labels)` items),
    tokenized with `tokenizer`'s settings on the calling thread, `prefetch` batches prepared ahead.

    source: any iterable of batches (see the module's Convention); iterated once per `iter()`.
    tokenizer: a `glmip.data.Tokenizer` (budget, patch, relevance, method, filter, out_device, ...).
    prefetch: batches decoded ahead of the one being tokenized (1..8); memory holds prefetch + 2 batches.
    """

    def __init__(self, source: Iterable[Any], tokenizer: Tokenizer, *, prefetch: int = 2) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a glmip.data.Tokenizer, got {type(tokenizer).__name__}")
        if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
            raise TypeError(f"source must be an iterable of batches (a DataLoader, a list, a generator), got "
                            f"{type(source).__name__}")
        prefetch = positive_int(prefetch, "prefetch")
        if prefetch > MAX_PREFETCH:
            raise ValueError(f"prefetch must be 1..{MAX_PREFETCH} batches, got {prefetch}")
        self.source = source
        self.tokenizer = tokenizer
        self.prefetch = prefetch

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in self.source:
                images, labels = item if _is_pair(item) else (item, None)
                ready = (_prepared(images, self.tokenizer.channels), labels, _is_pair(item))
                while not stop.is_set():
                    try:
                        out.put(ready, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised there at this point of the stream
            out.put(_Failure(error))
            return
        out.put(_DONE)

    def __iter__(self) -> Iterator[Any]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(ready, stop), name="glmip-token-stream", daemon=True)
        worker.start()
        pending = staged = None  # (PyramidBatch, labels, paired): the batch to tokenize next, the one after it
        try:
            while True:
                item = ready.get()
                if item is not _DONE and not isinstance(item, _Failure):
                    staged = (self.tokenizer.stage(item[0]), item[1], item[2])
                if pending is not None:
                    finishing, pending = pending, None
                    yield self._finish(*finishing)
                if isinstance(item, _Failure):  # raised where its batch would have come, after the good ones
                    raise item.error
                pending, staged = staged, None
                if pending is None:
                    return
        finally:
            stop.set()
            for held in (pending, staged):
                if held is not None:
                    held[0].close()
            worker.join(timeout=5)

    def _finish(self, batch: Any, labels: Any, paired: bool) -> Any:
        with batch:
            tokens = self.tokenizer.finish(batch)
        return (tokens, labels) if paired else tokens

    def __repr__(self) -> str:
        return f"TokenStream({type(self.source).__name__}, {self.tokenizer!r}, prefetch={self.prefetch})"
