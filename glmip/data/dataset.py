"""`Dataset` and `Collate`: images decoded in DataLoader workers, tokenized there into `TokenBatch`es.

    loader = DataLoader(Dataset(paths), batch_size=32, num_workers=2, collate_fn=Collate(Tokenizer(256)))
    loader = DataLoader(Dataset(list(zip(paths, labels)), transform=augment), ...)  # yields (batch, labels)

`Dataset[i]` decodes item i (a path through PIL via `glmip.image.as_image_array`, an array, a
tensor, a PIL image, or an `(image, label)` pair), applies the optional `transform` (a random crop,
a flip: any torchvision v2 transform) and returns a `Decoded` record; `Collate` conforms a list of
them to one channel count and dtype and tokenizes them on the worker's own Context (made lazily
there: fork and spawn both work).

Convention:
    A file that cannot be decoded is reported with its path and reason. With on_error="raise" the
    worker raises ValueError("<path>: <reason>") and the DataLoader re-raises it; with "skip" the
    item becomes a `Skipped` record, which `Collate` drops with a warning (and returns, with
    `return_ids=True`). A batch whose items were all skipped collates to None. An error of the
    transform or of the tokenizer's settings is not an unreadable file: it is raised, never skipped.

Convention (transform):
    The transform receives the decoded image as a torch tensor (C, H, W) in its own dtype (uint8,
    uint16 or float32 in [0, 1]) — what torchvision v2 treats as an image — after EXIF rotation and
    before the channel conform; it returns a tensor (C, H, W), an (H, W, C) array or a PIL image.

Convention (labels):
    An item that is a 2-tuple `(image, label)` carries its label (any Python value) through
    `Decoded.label`; `Collate` then returns `(batch, labels)`, labels collated by torch's
    `default_collate` (ints -> an int64 tensor, strings -> a list, dicts -> a dict of columns).
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..image import as_image_array
from .tokenizer import Tokenizer, conform

__all__ = ["Dataset", "Collate", "Decoded", "Skipped", "item_id", "decode", "split_item"]

ON_ERROR = ("skip", "raise")
_NO_LABEL = object()


@dataclass(frozen=True)
class Decoded:
    """One decoded image: its index in the dataset, id (the path, or "item <index>"), (H, W, C) array,
    and its label when the item was an `(image, label)` pair (`labelled`)."""

    index: int
    id: str
    image: np.ndarray
    label: Any = None
    labelled: bool = False


@dataclass(frozen=True)
class Skipped:
    """An input that could not be decoded: index, id (the path), why, and whether it came with a label."""

    index: int
    id: str
    reason: str
    labelled: bool = False


def split_item(item: Any) -> tuple[Any, Any]:
    """(image, label) of an item: a 2-tuple is an `(image, label)` pair, anything else an image without one."""
    if isinstance(item, tuple):
        if len(item) != 2:
            raise TypeError(f"a dataset item is an image or an (image, label) pair, got a tuple of {len(item)}")
        return item
    return item, _NO_LABEL


def item_id(item: Any, index: int) -> str:
    """The path of an item (of its image, for a pair), or "item <index>"."""
    image = item[0] if isinstance(item, tuple) and len(item) == 2 else item
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"item {index}"


def _apply(transform: Callable[[Any], Any], array: np.ndarray, name: str) -> np.ndarray:
    """`transform` on the image as a (C, H, W) tensor, its result back as an (H, W, C) array."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    result = transform(tensor)
    if not isinstance(result, (torch.Tensor, np.ndarray)) and not type(result).__module__.startswith("PIL."):
        raise TypeError(f"{name}: the transform returned {type(result).__name__}, which is not an image; return a "
                        "(C, H, W) tensor, an (H, W, C) array or a PIL image")
    try:
        return as_image_array(result)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{name}: the transform returned what is not an image ({error}); return a (C, H, W) "
                          "tensor, an (H, W, C) array or a PIL image") from None


def decode(item: Any, index: int, channels: int | None = None,
           transform: Callable[[Any], Any] | None = None) -> Decoded | Skipped:
    """Item `index` decoded, transformed and brought to `channels`, or a `Skipped` with the reason it could
    not be read. Errors of the transform itself are raised (they are not about the file)."""
    image, label = split_item(item)
    name, labelled = item_id(image, index), label is not _NO_LABEL
    try:
        array = as_image_array(image)
    except (ValueError, TypeError, OSError) as error:  # PIL raises OSError for truncated files
        return Skipped(index, name, f"{type(error).__name__}: {error}", labelled)
    if transform is not None:
        array = _apply(transform, array, name)
    try:
        array = conform(array, channels, None)
    except ValueError as error:
        return Skipped(index, name, f"{type(error).__name__}: {error}", labelled)
    return Decoded(index, name, array, label if labelled else None, labelled)


def _check_channels(channels: Any) -> None:
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)
                                 or not 1 <= channels <= 4):
        raise ValueError(f"channels must be 1..4 or None, got {channels!r}")


class Dataset(torch.utils.data.Dataset):
    """A map-style dataset over images: paths, (H, W, C) arrays, tensors or PIL images, or `(image, label)`
    pairs of them.

    channels: the channel count each image is brought to on decode (`glmip.data.conform`; None keeps
    it, and `Collate` refuses a batch of mixed counts). on_error: "skip" or "raise" for a file that
    cannot be decoded (see the module's convention). transform: a callable applied to each decoded
    image before tokenizing (see the module's convention), e.g. a torchvision v2 `Compose`.
    """

    def __init__(self, items: Sequence[Any], *, channels: int | None = 3, on_error: str = "skip",
                 transform: Callable[[Any], Any] | None = None) -> None:
        if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence):
            raise TypeError(f"items must be a sequence of images or paths, got {type(items).__name__}")
        if len(items) == 0:
            raise ValueError("an empty dataset: pass at least one image or path")
        if not isinstance(on_error, str) or on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        _check_channels(channels)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a callable (image -> image), got {type(transform).__name__}")
        self.items, self.channels, self.on_error, self.transform = items, channels, on_error, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded | Skipped:
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise TypeError(f"a Dataset index must be an int, got {index!r} ({type(index).__name__})")
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(f"index {index} is out of range for a Dataset of {len(self.items)} items")
        index = int(index) % len(self.items)
        result = decode(self.items[index], index, self.channels, self.transform)
        if isinstance(result, Skipped) and self.on_error == "raise":
            raise ValueError(f"{result.id}: {result.reason}")
        return result


def collate_labels(labels: list[Any]) -> Any:
    """Labels as torch's `default_collate` makes them (ints -> int64 tensor, ...), else the list as it is."""
    try:
        return torch.utils.data.default_collate(labels)
    except (TypeError, RuntimeError):  # None, or mixed kinds: default_collate has no column for them
        return list(labels)


class Collate:
    """A DataLoader `collate_fn`: a list of `Decoded`/`Skipped` -> one `TokenBatch` (tokenized in the worker).

    Items that are not `Dataset` records (arrays, paths, `(image, label)` pairs, as a plain list or
    another dataset gives them) are decoded here; one that cannot be read raises ValueError naming it.
    When the items carry labels the result is `(batch, labels)`. return_ids: return `(batch, ids,
    skipped)` — or `(batch, labels, ids, skipped)` with labels — instead, where ids are those of the
    tokenized images and skipped the `Skipped` records.
    """

    def __init__(self, tokenizer: Tokenizer, *, return_ids: bool = False) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a glmip.data.Tokenizer, got {type(tokenizer).__name__}")
        if not isinstance(return_ids, bool):
            raise TypeError(f"return_ids must be True or False, got {return_ids!r}")
        self.tokenizer, self.return_ids = tokenizer, return_ids

    def _record(self, item: Any, index: int) -> Decoded | Skipped:
        if isinstance(item, (Decoded, Skipped)):
            return item
        record = decode(item, index, self.tokenizer.channels)
        if isinstance(record, Skipped):
            raise ValueError(f"{record.id}: {record.reason}")
        return record

    def __call__(self, items: Sequence[Decoded | Skipped]) -> Any:
        if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence):
            raise TypeError(f"Collate takes the list of a batch's items, got {type(items).__name__}")
        records = [self._record(item, index) for index, item in enumerate(items)]
        decoded = [item for item in records if isinstance(item, Decoded)]
        skipped = [item for item in records if isinstance(item, Skipped)]
        for item in skipped:
            warnings.warn(f"glmip.data: skipped {item.id}: {item.reason}", stacklevel=2)
        if len({item.labelled for item in records}) > 1:
            raise TypeError("a batch mixes items with and without labels; give every item as (image, label) "
                            "or none")
        batch = self.tokenizer([item.image for item in decoded]) if decoded else None
        labelled = bool(records) and records[0].labelled
        labels = collate_labels([item.label for item in decoded]) if labelled and decoded else []
        if self.return_ids:
            ids = [item.id for item in decoded]
            return (batch, labels, ids, skipped) if labelled else (batch, ids, skipped)
        return (batch, labels) if labelled else batch
