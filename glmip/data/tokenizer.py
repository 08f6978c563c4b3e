"""`Tokenizer`: `glmip.tokenize` as a picklable object for data pipelines (DataLoader workers, Ray actors).

A Tokenizer holds only settings. Its GL `Context` (and a query's CLIP model) is made lazily in the
process that first calls it and is dropped on pickling, so a copy sent to a `fork` or `spawn` worker
makes its own there; a Context inherited through fork is never touched (it would raise
`glmip.ForkedContextError`): the tokenizer compares `os.getpid()` with the pid that made its Context.

On NVIDIA, when torch sees CUDA, the Context is made on the EGL device that *is* this process's
current CUDA device (`Context(cuda_device=torch.cuda.current_device())`, matched by UUID), so a
worker or Ray actor given one GPU through `CUDA_VISIBLE_DEVICES` renders on that GPU. That path has
not run on a GPU yet.

Convention:
    Images go through `prepare_images`: decoded (paths through `glmip.image.as_image_array`, PIL,
    EXIF-rotated when image.py does it), then brought to one channel count and dtype (`conform`),
    because `glmip.tokenize` holds one channel count and dtype per batch.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import limits
from ..allocate import ClassBudgets
from ..context import Context
from ..detail import Criterion
from ..image import as_image_array
from ..pyramid import PyramidMethod
from ..relevance import gaze, saliency
from ..sampling import Filter, parse_enum
from ..tokenize import tokenize, tokenize_pyramids

if TYPE_CHECKING:
    from ..pyramid import PyramidBatch

__all__ = ["Tokenizer", "Gaze", "Query", "conform", "prepare_images", "relevance_name"]

RELEVANCE_WORDS = ("uniform", "saliency")
_DTYPE_RANK = {"uint8": 0, "uint16": 1, "float32": 2}
_UNORM_MAX = {"uint8": 255, "uint16": 65535}
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")
TOKEN_FILTERS = (Filter.TRILINEAR, Filter.ANISOTROPIC)  # what glmip.sampling.tokens_batch samples with
# A TokenBatch counts tokens in int32 (cu_seqlens), so no budget above this can be honoured.
MAX_BUDGET = 2**31 - 1


@dataclass(frozen=True)
class Gaze:
    """Relevance peaking at a gaze point (x, y) in uv ([0, 1]², (0, 0) top-left), Gaussian of sigma
    `radius` x the image's larger side (`glmip.gaze`)."""

    x: float
    y: float
    radius: float = 0.12

    def __post_init__(self) -> None:
        for name in ("x", "y", "radius"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"the gaze {name} must be a real number, got {value!r} ({type(value).__name__})")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"a gaze point is uv in [0, 1]^2, got ({self.x}, {self.y})")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"the gaze radius must be a finite positive fraction of the larger side, got "
                             f"{self.radius}")


@dataclass(frozen=True)
class Query:
    """Relevance of each region to `text` under a user-supplied CLIP-style model (`glmip.query_relevance`):
    `model` is a local transformers directory (loaded once per process, never downloaded) or a model
    object / `glmip.ClipScorer` (pickled with the tokenizer)."""

    text: str
    model: Any
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"a query needs a non-empty text, got {self.text!r}")
        if self.model is None:
            raise ValueError("a query needs a CLIP-style model: a local transformers directory or a model object "
                             "(glmip never downloads one)")
        if isinstance(self.model, (str, Path)) and not Path(self.model).is_dir():
            raise ValueError(f"the query model must be a local directory saved by transformers, got {self.model!r}")


def _refuse(name: str, value: Any) -> Any:
    raise TypeError(f"{name} must be a string, got {value!r} ({type(value).__name__})")


def _check_out_device(device: Any) -> None:
    """`out_device` must name a torch device this process has ("cpu", "cuda", "cuda:1", a torch.device)."""
    if not isinstance(device, str) and type(device).__name__ != "device":
        raise TypeError(f"out_device must be a device name such as 'cpu' or 'cuda:0', got {device!r}")
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"out_device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"out_device {device!r} needs CUDA, which this torch build or machine does not have")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"out_device must be a CPU or CUDA device, got {device!r}")


def relevance_name(relevance: Any) -> str:
    """A short description of a relevance spec, for manifests and messages."""
    if relevance is None or isinstance(relevance, str):
        return relevance or "uniform"
    if isinstance(relevance, Gaze):
        return f"gaze {relevance.x:g},{relevance.y:g} radius {relevance.radius:g}"
    if isinstance(relevance, Query):
        return f"query {relevance.text!r}"
    return "map"


def _check_relevance(relevance: Any) -> Any:
    if relevance is None:
        return "uniform"
    if isinstance(relevance, str):
        if relevance not in RELEVANCE_WORDS:
            raise ValueError(f"relevance must be 'uniform', 'saliency', a glmip.data.Gaze, a glmip.data.Query or a "
                             f"map (h, w), got {relevance!r}")
        return relevance
    if isinstance(relevance, (Gaze, Query)):
        return relevance
    if isinstance(relevance, np.ndarray):
        from ..maps import as_relevance

        return as_relevance(relevance)
    raise TypeError(f"relevance must be 'uniform', 'saliency', a glmip.data.Gaze, a glmip.data.Query or a float "
                    f"(h, w) numpy map, got {type(relevance).__name__}")


def conform(array: np.ndarray, channels: int | None, dtype: str | None) -> np.ndarray:
    """`array` (H, W, C) with `channels` channels and dtype `dtype` (None: keep it).

    Convention (channels): 1 -> 3/4 repeats the grey; 2 (grey + alpha) -> 3 drops the alpha, -> 4
    repeats the grey and keeps the alpha; 3 -> 4 adds an opaque alpha; 4 -> 3 drops the alpha
    (no compositing); 3/4 -> 1/2 takes ITU-R 601 luma (PIL's "L"), rounded for integer dtypes.
    Convention (dtype): uint8 -> uint16 multiplies by 257 and ints -> float32 divide by 255 / 65535,
    so the normalised values glmip samples stay the same; narrowing is refused.
    """
    if not isinstance(array, np.ndarray) or array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise ValueError(f"conform takes an (H, W, C) numpy image with C in 1..4, got "
                         f"{getattr(array, 'shape', type(array).__name__)}")
    if array.dtype.name not in _DTYPE_RANK:
        raise TypeError(f"image dtype {array.dtype} is not one of {', '.join(_DTYPE_RANK)}")
    if dtype is not None and dtype not in _DTYPE_RANK:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPE_RANK)} or None, got {dtype!r}")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)
                                 or not 1 <= channels <= 4):
        raise ValueError(f"channels must be 1..4 or None, got {channels!r}")
    have = array.shape[2]
    if dtype is not None and array.dtype.name != dtype:
        source = array.dtype.name
        if _DTYPE_RANK[dtype] < _DTYPE_RANK[source]:
            raise ValueError(f"cannot narrow a {source} image to {dtype}; glmip widens only (uint8 < uint16 < float32)")
        array = (array.astype(np.uint16) * 257 if dtype == "uint16"
                 else array.astype(np.float32) / np.float32(_UNORM_MAX[source]))
    if channels is None or channels == have:
        return np.ascontiguousarray(array)
    colour = array[..., :1].repeat(3, axis=2) if have <= 2 else array[..., :3]
    alpha = array[..., have - 1:] if have in (2, 4) else None
    if channels <= 2:
        if have <= 2:
            grey = array[..., :1]
        else:
            luma = colour.astype(np.float64) @ _LUMA
            grey = (np.rint(luma) if array.dtype.kind == "u" else luma).astype(array.dtype)[..., None]
        parts = [grey] + ([] if channels == 1 else [alpha if alpha is not None else _opaque(array)])
    else:
        parts = [colour] + ([] if channels == 3 else [alpha if alpha is not None else _opaque(array)])
    return np.ascontiguousarray(np.concatenate(parts, axis=2))


def _opaque(array: np.ndarray) -> np.ndarray:
    value = _UNORM_MAX.get(array.dtype.name, 1.0)
    return np.full(array.shape[:2] + (1,), value, array.dtype)


def prepare_images(images: Sequence[Any], channels: int | None = 3) -> list[np.ndarray]:
    """Decode and conform a batch: every image as (H, W, `channels`) in the widest dtype present.

    Raises ValueError/TypeError (naming the image) for an image glmip cannot read.
    """
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of images, got {type(images).__name__}")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)
                                 or not 1 <= channels <= 4):
        raise ValueError(f"channels must be 1..4 or None, got {channels!r}")
    arrays = []
    for index, image in enumerate(images):
        try:
            arrays.append(as_image_array(image))
        except (ValueError, TypeError, OSError) as error:
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"
            raise type(error)(f"{name}: {error}") from None
    if not arrays:
        raise ValueError("an empty batch: pass at least one image")
    widest = max((a.dtype.name for a in arrays), key=_DTYPE_RANK.__getitem__)
    return [conform(a, channels, widest) for a in arrays]


class Tokenizer:
    """Images in, one `TokenBatch` out, on a Context of the calling process's own.

    budget, patch, classes, method, filter, srgb: as `glmip.tokenize`. relevance: "uniform" (or None),
    "saliency", `Gaze(x, y)`, `Query(text, model)` or one float (h, w) map for every image.
    channels: the channel count every image is brought to (`conform`; None keeps them, and a batch
    of mixed channel counts is then refused). device: an EGL device index; cuda_device: a CUDA
    device index (default: torch's current one when CUDA is available). out_device: where the
    tokens go ("cpu"). criterion: "relevance" or "detail" (as `glmip.tokenize`).
    """

    def __init__(self, budget: int = 256, patch: int = 16, relevance: Any = "uniform", *, channels: int | None = 3,
                 classes: ClassBudgets | None = None, method: str = "hardware", filter: str = "trilinear",
                 srgb: bool = False, device: int | None = None, cuda_device: int | None = None,
                 out_device: str = "cpu", criterion: str = "relevance") -> None:
        budget, patch = limits.positive_int(budget, "budget"), limits.positive_int(patch, "patch")
        if budget > MAX_BUDGET:
            raise ValueError(f"budget must be at most {MAX_BUDGET} (token counts are int32), got {budget}")
        if patch > limits.MAX_PATCH:
            raise ValueError(f"patch must be at most glmip.limits.MAX_PATCH = {limits.MAX_PATCH} samples a side, "
                             f"got {patch}")
        if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)
                                     or not 1 <= channels <= 4):
            raise ValueError(f"channels must be 1..4 or None, got {channels!r}")
        method = PyramidMethod.parse(method).value if isinstance(method, str) else _refuse("method", method)
        if not isinstance(filter, str):
            _refuse("filter", filter)
        if parse_enum(Filter, filter, "token filter") not in TOKEN_FILTERS:
            raise ValueError(f"tokens are sampled with {' or '.join(repr(f.value) for f in TOKEN_FILTERS)}, got "
                             f"{filter!r}")
        if not isinstance(srgb, bool):
            raise TypeError(f"srgb must be True or False, got {srgb!r}")
        if srgb and channels in (1, 2):
            raise ValueError(f"srgb=True decodes RGB(A) colour; it cannot go with channels={channels} (grey)")
        for name, index in (("device", device), ("cuda_device", cuda_device)):
            if index is not None:
                limits.non_negative_int(index, name)
        _check_out_device(out_device)
        if classes is not None:
            if not isinstance(classes, ClassBudgets):
                raise TypeError(f"classes must be a glmip.ClassBudgets, got {type(classes).__name__}")
            minimum = classes.relevant[0] + classes.background[0]
            if budget < minimum:
                raise ValueError(f"budget {budget} is below the class minimums ({classes.relevant[0]} relevant + "
                                 f"{classes.background[0]} background = {minimum})")
        self.criterion = Criterion.parse(criterion).value
        self.budget, self.patch, self.channels = int(budget), int(patch), channels
        self.relevance = _check_relevance(relevance)
        self.classes, self.method, self.filter, self.srgb = classes, method, filter, srgb
        self.device, self.cuda_device, self.out_device = device, cuda_device, out_device
        self._contexts: dict[int, Context] = {}  # thread id -> that thread's Context, in process _pid
        self._pid: int | None = None
        self._scorer: Any = None

    # -- the per-process state ------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_contexts={}, _pid=None, _scorer=None)
        return state

    @property
    def context(self) -> Context:
        """This thread's Context in this process, made on first use. Contexts inherited through fork are
        left alone (never used, never closed); a GL context is current on one thread, so a thread that
        calls the tokenizer (a Ray actor's worker thread) gets its own."""
        if self._pid != os.getpid():
            self._contexts, self._pid, self._scorer = {}, os.getpid(), None
        thread = threading.get_ident()
        context = self._contexts.get(thread)
        if context is None or context.closed:
            context = self._contexts[thread] = Context(**self._device_choice())
        return context

    @property
    def contexts_made(self) -> int:
        """How many Contexts this process holds for the tokenizer (one per calling thread)."""
        return len(self._contexts) if self._pid == os.getpid() else 0

    def _device_choice(self) -> dict[str, Any]:
        cuda_device = self.cuda_device
        if cuda_device is None and self.device is None:
            import torch

            if torch.cuda.is_available():  # NVIDIA: the EGL device that is this process's CUDA device
                cuda_device = torch.cuda.current_device()
        return {"device": self.device, "cuda_device": cuda_device}

    def close(self) -> None:
        """Release the Context of the calling thread (another is made on its next call); the Contexts of
        other threads are closed by their threads, or with the process."""
        if self._pid == os.getpid():
            context = self._contexts.pop(threading.get_ident(), None)
            if context is not None:
                context.close()

    # -- tokenizing ---------------------------------------------------------------------------
    def _relevance_source(self) -> Any:
        spec = self.relevance
        if isinstance(spec, str):
            return None if spec == "uniform" else saliency
        if isinstance(spec, Gaze):
            return lambda pyramid: gaze((pyramid.width, pyramid.height), (spec.x, spec.y), spec.radius)
        if isinstance(spec, Query):
            if self._scorer is None:
                from ..query import ClipScorer

                model = spec.model
                self._scorer = model if isinstance(model, ClipScorer) else ClipScorer.load(model, spec.tokenizer)
            from ..query import query_relevance

            return lambda pyramid: query_relevance(pyramid, spec.text, self._scorer)
        return spec

    def __call__(self, images: Sequence[Any]) -> Any:
        """Tokenize a list of images (paths, arrays, tensors, PIL images) into one `TokenBatch`."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of images, got {type(images).__name__}")
        arrays = prepare_images(images, self.channels)
        context = self.context
        return tokenize(arrays, self._relevance_source(), self.budget, self.patch, context=context,
                        classes=self.classes, method=self.method, filter=self.filter, device=self.out_device,
                        srgb=self.srgb, criterion=self.criterion)

    def stage(self, images: Any) -> PyramidBatch:
        """The first half of a call: the batch's pyramids built on this thread's Context (upload and mip
        build issued, nothing read back), for `finish` later. `images`: a list `prepare_images` has
        conformed, a BxHxWxC array or a BxCxHxW tensor (host or CUDA, taken as it is)."""
        return self.context.pyramids(images, method=self.method, srgb=self.srgb)

    def finish(self, batch: PyramidBatch) -> Any:
        """The second half: relevance, allocation and tokens of a staged batch, a `TokenBatch` on
        `out_device` (the batch stays open; its owner closes it)."""
        return tokenize_pyramids(batch, self._relevance_source(), self.budget, self.patch, classes=self.classes,
                                 filter=self.filter, device=self.out_device, criterion=self.criterion)

    def check(self) -> None:
        """Tokenize one small synthetic image, so that settings no image can satisfy (a patch over the
        device's limits, a query model that does not load, a relevance map glmip refuses) fail once,
        here, instead of being blamed on every input of a run. `write_shards`, `glmip tokenize` and
        the Ray actors call it before any work.

        Raises ValueError naming the setting's error; the Context it made stays for the next call.
        """
        side = max(32, self.patch)
        ramp = np.linspace(0, 255, side * side, dtype=np.float64).reshape(side, side, 1)
        probe = np.ascontiguousarray(np.repeat(ramp, self.channels or 3, axis=2).astype(np.uint8))
        try:
            self([probe])
        except (ValueError, TypeError, OSError, ImportError, KeyError) as error:
            raise ValueError(f"these tokenizer settings ({self!r}) fail on a plain {side}x{side} image, so they "
                             f"would fail on every input: {type(error).__name__}: {error}") from None

    def __repr__(self) -> str:
        return (f"Tokenizer(budget={self.budget}, patch={self.patch}, relevance={relevance_name(self.relevance)}, "
                f"channels={self.channels}, criterion={self.criterion})")
