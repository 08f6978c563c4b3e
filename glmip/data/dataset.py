"""`Dataset` and `Collate`: images decoded in DataLoader workers, tokenized there into `TokenBatch`es.

    loader = DataLoader(Dataset(paths), batch_size=32, num_workers=2, collate_fn=Collate(Tokenizer(256)))

`Dataset[i]` decodes item i (a path through PIL via `glmip.image.as_image_array`, an array or a
tensor) into an (H, W, C) array; `Collate` conforms a list of them to one channel count and dtype
and tokenizes them on the worker's own Context (made lazily there: fork and spawn both work).

Convention:
    A file that cannot be decoded is reported with its path and reason. With on_error="raise" the
    worker raises ValueError("<path>: <reason>") and the DataLoader re-raises it; with "skip" the
    item becomes a `Skipped` record, which `Collate` drops with a warning (and returns, with
    `return_ids=True`). A batch whose items were all skipped collates to None.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..image import as_image_array
from .tokenizer import Tokenizer, conform

__all__ = ["Dataset", "Collate", "Decoded", "Skipped", "item_id", "decode"]

ON_ERROR = ("skip", "raise")


@dataclass(frozen=True)
class Decoded:
    """One decoded image: its index in the dataset, id (the path, or "item <index>") and (H, W, C) array."""

    index: int
    id: str
    image: np.ndarray


@dataclass(frozen=True)
class Skipped:
    """An input that could not be decoded: index, id (the path) and why."""

    index: int
    id: str
    reason: str


def item_id(item: Any, index: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"item {index}"


def decode(item: Any, index: int, channels: int | None = None) -> Decoded | Skipped:
    """Item `index` decoded (and brought to `channels`), or a `Skipped` with the reason it could not be."""
    name = item_id(item, index)
    try:
        array = as_image_array(item)
        return Decoded(index, name, conform(array, channels, None))
    except (ValueError, TypeError, OSError) as error:  # PIL raises OSError for truncated files
        return Skipped(index, name, f"{type(error).__name__}: {error}")


class Dataset(torch.utils.data.Dataset):
    """A map-style dataset over images: paths, (H, W, C) arrays, tensors or PIL images.

    channels: the channel count each image is brought to on decode (`glmip.data.conform`; None keeps
    it, and `Collate` refuses a batch of mixed counts). on_error: "skip" or "raise" for a file that
    cannot be decoded (see the module's convention).
    """

    def __init__(self, items: Sequence[Any], *, channels: int | None = 3, on_error: str = "skip") -> None:
        if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence):
            raise TypeError(f"items must be a sequence of images or paths, got {type(items).__name__}")
        if len(items) == 0:
            raise ValueError("an empty dataset: pass at least one image or path")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if channels is not None and (not isinstance(channels, int) or not 1 <= channels <= 4):
            raise ValueError(f"channels must be 1..4 or None, got {channels!r}")
        self.items, self.channels, self.on_error = items, channels, on_error

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded | Skipped:
        result = decode(self.items[index], int(index), self.channels)
        if isinstance(result, Skipped) and self.on_error == "raise":
            raise ValueError(f"{result.id}: {result.reason}")
        return result


class Collate:
    """A DataLoader `collate_fn`: a list of `Decoded`/`Skipped` -> one `TokenBatch` (tokenized in the worker).

    return_ids: return (TokenBatch or None, ids of the tokenized images, the `Skipped` records) instead.
    """

    def __init__(self, tokenizer: Tokenizer, *, return_ids: bool = False) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a glmip.data.Tokenizer, got {type(tokenizer).__name__}")
        self.tokenizer, self.return_ids = tokenizer, return_ids

    def __call__(self, items: Sequence[Decoded | Skipped]) -> Any:
        decoded = [item for item in items if isinstance(item, Decoded)]
        skipped = [item for item in items if isinstance(item, Skipped)]
        for item in skipped:
            warnings.warn(f"glmip.data: skipped {item.id}: {item.reason}", stacklevel=2)
        batch = self.tokenizer([item.image for item in decoded]) if decoded else None
        if self.return_ids:
            return batch, [item.id for item in decoded], skipped
        return batch
