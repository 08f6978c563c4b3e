"""`glmip.data`: glmip where training data pipelines are — DataLoader workers, token shards on disk, Ray Data.

    from glmip.data import Tokenizer, Dataset, Collate, write_shards, read_shards

`Tokenizer` is `glmip.tokenize` as a picklable object whose GL Context is made lazily in the process
that uses it; `Dataset` + `Collate` make a DataLoader yield `TokenBatch`es tokenized in its workers;
`write_shards` / `glmip tokenize` write WebDataset token shards that `read_shards` streams back;
`glmip.data.ray.GlmipTokenize` runs the tokenizer as Ray Data actors (the `ray` extra).
(This folder also holds glmip's bundled sample image, coffee.png.)
"""

from __future__ import annotations

from .dataset import Collate, Dataset, Decoded, Skipped
from .shards import ShardDataset, ShardWriter, read_shards, write_shards
from .tokenizer import Gaze, Query, Tokenizer, conform, prepare_images

__all__ = ["Tokenizer", "Gaze", "Query", "conform", "prepare_images", "Dataset", "Collate", "Decoded", "Skipped",
           "write_shards", "read_shards", "ShardWriter", "ShardDataset"]
