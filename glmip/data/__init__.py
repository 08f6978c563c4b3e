"""`glmip.data`: glmip where training data pipelines are — DataLoader workers, token shards on disk, Ray Data.

    from glmip.data import Tokenizer, Dataset, Collate, write_shards, read_shards

`Tokenizer` is `glmip.tokenize` as a picklable object whose GL Context is made lazily in the process
that uses it; `Dataset` + `Collate` make a DataLoader yield `TokenBatch`es (and labels) tokenized in
its workers, after an optional augmentation; `write_shards` / `glmip tokenize` write WebDataset token
shards that `read_shards` streams back shuffled and split across ranks and workers, and that
`collate_samples` decodes for a webdataset or Ray pipeline of one's own; `TokenStream` tokenizes a
loader's batches in the main process with the next batch prepared ahead (the way to feed a training
loop on one GPU); `glmip.data.ray.GlmipTokenize` runs the tokenizer as Ray Data actors (the `ray` extra).
(This folder also holds glmip's bundled sample image, coffee.png.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .tokenizer import Gaze, Query, Tokenizer, conform, prepare_images

_LAZY = {"Dataset": "dataset", "Collate": "dataset", "Decoded": "dataset", "Skipped": "dataset",
         "write_shards": "shards", "read_shards": "shards", "ShardWriter": "shards", "ShardDataset": "shards",
         "ShardError": "shards", "decode_sample": "shards", "collate_samples": "shards", "TokenStream": "stream"}


def __getattr__(name: str) -> Any:
    """The torch-based parts (datasets, shards) on first use, so `glmip tokenize --help` does not import torch."""
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Tokenizer", "Gaze", "Query", "conform", "prepare_images", "Dataset", "Collate", "Decoded", "Skipped",
           "write_shards", "read_shards", "ShardWriter", "ShardDataset", "ShardError", "decode_sample",
           "collate_samples", "TokenStream"]
