"""glmip on Ray Data (the `ray` extra): `GlmipTokenize` for `ds.map_batches`, and `ray_write_shards`.

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0   # 0 on a CPU-only cluster
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    out = ds.map_batches(GlmipTokenize, fn_constructor_kwargs={"tokenizer": Tokenizer(256)},
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=4), num_gpus=gpus, batch_size=16)

Ray runs the class as stateful actors: each builds its GL Context once, on its first batch, and
keeps it for its life. With `num_gpus=1` Ray sets the actor's `CUDA_VISIBLE_DEVICES`; the Tokenizer then asks
torch for its current CUDA device (0 of the visible ones) and `Context(cuda_device=0)` picks the EGL
device with that GPU's UUID, so GL renders on the GPU Ray gave the actor (EGL numbers every GPU,
whatever CUDA_VISIBLE_DEVICES says). That GPU path has not run yet; the CPU (llvmpipe) path is tested.

Convention:
    Input batch columns: "path" (files) or "image" (decoded arrays, as `ray.data.read_images` gives),
    and optionally "index" (the input's position; default: running count within the batch), "id" and
    "label" (passed through). Output columns, one row per input: index, id, tokens ((N, C, P, P)
    uint8/float16, ragged), cx, cy, size, level (ragged (N,)), width, height, error ("" when
    tokenized, else the reason it was skipped), actor (the actor's pid), contexts (how many GL
    Contexts that actor holds: 1 unless Ray called it from several threads), and label when given.
    Settings that fail on every image (`Tokenizer.check`, on each actor's first batch) fail the dataset
    with one ValueError instead of an error row per input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .dataset import Decoded, Skipped, decode
from .shards import TOKEN_DTYPES, Record, ShardWriter, json_label, shard_options, tokenize_items
from .tokenizer import Tokenizer

__all__ = ["GlmipTokenize", "ray_write_shards", "rows_to_entries"]

_LAYOUT = ("cx", "cy", "size", "level")


def _ragged(arrays: Sequence[np.ndarray]) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = list(arrays)
    return column


class GlmipTokenize:
    """A Ray Data `map_batches` class: a batch of images in, token columns out (see the module's convention).

    tokenizer: a `glmip.data.Tokenizer` (pickled to each actor), or options to build one. dtype:
    "float16" or "uint8", the stored token dtype.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, *, dtype: str = "float16", **options: Any) -> None:
        if dtype not in TOKEN_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
        if tokenizer is not None and options:
            raise TypeError("pass a Tokenizer or its options, not both")
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer(**options)
        self.dtype = dtype
        self._checked = False

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        sources = batch.get("path", batch.get("image"))
        if sources is None:
            raise ValueError(f"a batch needs a 'path' or 'image' column, got {sorted(batch)}")
        count = len(sources)
        indices = [int(i) for i in batch["index"]] if "index" in batch else list(range(count))
        entries: list[Decoded | Skipped] = []
        for position, (index, source) in enumerate(zip(indices, sources, strict=True)):
            item = str(source) if isinstance(source, (str, np.str_)) else np.asarray(source)
            if "label" in batch:
                item = (item, batch["label"][position])
            entry = decode(item, index, self.tokenizer.channels)
            if "id" in batch:
                entry = replace(entry, id=str(batch["id"][position]))
            entries.append(entry)
        if not self._checked:  # on Ray's calling thread, whose Context the actor then keeps
            self.tokenizer.check()
            self._checked = True
        results = tokenize_items(self.tokenizer, entries, self.dtype)
        empty = np.zeros((0,), np.float32)
        records = [r if isinstance(r, Record) else None for r in results]
        labels = {"label": batch["label"]} if "label" in batch else {}
        return {**labels,
            "index": np.array([r.index for r in results], np.int64),
            "id": np.array([r.id for r in results], dtype=object),
            "tokens": _ragged([r.tokens if r is not None else np.zeros((0,), self.dtype) for r in records]),
            **{name: _ragged([r.layout[name] if r is not None else empty for r in records]) for name in _LAYOUT},
            "width": np.array([r.size[0] if r is not None else 0 for r in records], np.int64),
            "height": np.array([r.size[1] if r is not None else 0 for r in records], np.int64),
            "error": np.array(["" if isinstance(r, Record) else r.reason for r in results], dtype=object),
            "actor": np.full(count, os.getpid(), np.int64),
            "contexts": np.full(count, self.tokenizer.contexts_made, np.int64),
        }


def rows_to_entries(batch: dict[str, Any]) -> list[Record | Skipped]:
    """GlmipTokenize's output columns back into shard records and skips."""
    entries: list[Record | Skipped] = []
    for row in range(len(batch["index"])):
        index, name, error = int(batch["index"][row]), str(batch["id"][row]), str(batch["error"][row])
        if error:
            entries.append(Skipped(index, name, error))
            continue
        layout = {key: np.asarray(batch[key][row]) for key in _LAYOUT}
        label = json_label(batch["label"][row], name) if "label" in batch else None
        entries.append(Record(index, name, np.asarray(batch["tokens"][row]), layout,
                              (int(batch["width"][row]), int(batch["height"][row])), label, "label" in batch))
    return entries


def ray_write_shards(items: Sequence[Any], out_dir: str | os.PathLike, tokenizer: Tokenizer, *,
                     shard_size: int = 256, dtype: str = "float16", concurrency: int = 1, num_gpus: float = 0,
                     batch_size: int = 16, ids: Sequence[str] | None = None,
                     labels: Sequence[Any] | None = None) -> dict[str, Any]:
    """`items` (paths, as a Ray dataset `from_items`) through `GlmipTokenize` actors into the shard format
    of `write_shards`, in `out_dir`; returns the manifest. Needs `ray.init()` (or a cluster address) first.

    The actors tokenize; this process (the driver) receives the token columns and writes the shards,
    so `out_dir` must be where the driver can write. Finished shards of an earlier run are kept.
    labels: one JSON label per item, stored in each sample. concurrency: the most actors (the pool
    starts with one and grows as the cluster has room). num_gpus: per actor; more than the cluster
    has is refused (Ray would wait for them forever), so pass 0 on a CPU-only cluster.
    """
    import ray

    if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items must be a non-empty sequence of image paths")
    ids = [os.fspath(item) for item in items] if ids is None else list(ids)
    if labels is not None and (isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence)
                               or len(labels) != len(items)):
        raise ValueError(f"labels must be a sequence of one label per item ({len(items)})")
    labels = None if labels is None else [json_label(label, ids[i]) for i, label in enumerate(labels)]
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int (the most actors), got {concurrency!r}")
    if not isinstance(num_gpus, (int, float)) or isinstance(num_gpus, bool) or not 0 <= num_gpus <= 64:
        raise ValueError(f"num_gpus (per actor) must be a number from 0 to 64, got {num_gpus!r}")
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus > 0 and cluster_gpus < num_gpus:  # Ray would wait for them forever, without a word
        raise ValueError(f"num_gpus={num_gpus} per actor, but the Ray cluster has {cluster_gpus:g} GPU(s); pass "
                         "num_gpus=0 on a CPU-only cluster")
    tokenizer.check()
    writer = ShardWriter(out_dir, inputs=len(items), shard_size=shard_size, options=shard_options(tokenizer, dtype))
    pending = writer.pending()
    if pending:
        rows = [{"index": i, "path": os.fspath(items[i]), "id": ids[i]} for i in pending]
        tokens = ray.data.from_items(rows).map_batches(
            GlmipTokenize, fn_constructor_kwargs={"tokenizer": tokenizer, "dtype": dtype}, batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency), num_gpus=num_gpus,
            batch_format="numpy")
        for batch in tokens.iter_batches(batch_size=batch_size, batch_format="numpy"):
            for entry in rows_to_entries(batch):
                if labels is not None and isinstance(entry, Record):  # the driver holds them: no trip through Ray
                    entry = replace(entry, label=labels[entry.index], labelled=True)
                writer.add(entry)
    writer.write_manifest()
    return writer.manifest()
