"""Token shards on disk: written once (`write_shards`, `glmip tokenize`, or Ray), read for training (`read_shards`).

Format: WebDataset tar files (`shard-000000.tar`, ...) plus `manifest.json`. Tar because it needs
nothing beyond the standard library to write, streams sequentially from local disk or object
storage, is read as it is by `webdataset` / `torchdata` / Ray's `read_webdataset`, and holds ragged
per-image arrays (every image has its own token count) as plain `.npy` members, where Parquet would
need list-of-list columns and pyarrow. Each image is three members sharing a key (its input index,
zero-padded):

    <key>.tokens.npy   (N, C, P, P) uint8 or float16: the tokens (uint8: round(clamp(t, 0, 1) * 255))
    <key>.layout.npz   cx, cy, size, level (the TokenLayout arrays, dtypes kept), relevant when classed
    <key>.json         {"id", "width", "height", "channels", "patch", "dtype"}

Convention:
    Shard s holds inputs s*shard_size .. (s+1)*shard_size - 1 (in the order given, sorted paths for
    the CLI) minus those skipped, so a re-run maps every input to the same shard: a shard listed in
    the manifest whose file exists is finished and skipped. A shard is written to a temporary name in
    the same directory, fsynced and renamed into place, then the manifest is rewritten the same way,
    so a killed run leaves complete shards and at most a `.tmp` file (removed by the next run), never
    a half shard under a shard's name. The manifest lists every shard (name, first input, images,
    tokens, skipped inputs with reasons), the options, and the totals.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..layout import TokenLayout
from ..token_batch import TokenBatch
from .dataset import Decoded, Skipped, decode, item_id
from .tokenizer import Tokenizer, relevance_name

__all__ = ["write_shards", "read_shards", "ShardWriter", "ShardDataset", "Record", "TOKEN_DTYPES", "check_out_dir",
           "records_from_batch", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "glmip.shards"
VERSION = 1
TOKEN_DTYPES = ("uint8", "float16")
_LAYOUT_ARRAYS = ("cx", "cy", "size", "level")


@dataclass(frozen=True)
class Record:
    """One tokenized image as stored: input index, id, tokens (N, C, P, P) in the stored dtype, layout
    arrays, and the image's (width, height)."""

    index: int
    id: str
    tokens: np.ndarray
    layout: dict[str, np.ndarray]
    size: tuple[int, int]


def quantise(tokens: torch.Tensor, dtype: str) -> np.ndarray:
    """float32 tokens -> the stored dtype: float16, or uint8 = round(clamp(t, 0, 1) * 255)."""
    values = tokens.detach().cpu().float()
    if dtype == "float16":
        return values.half().numpy()
    return torch.round(values.clamp(0, 1) * 255).to(torch.uint8).numpy()


def dequantise(stored: np.ndarray) -> torch.Tensor:
    values = torch.from_numpy(np.ascontiguousarray(stored))
    return values.float() / 255 if values.dtype == torch.uint8 else values.float()


def records_from_batch(batch: TokenBatch, indices: Sequence[int], ids: Sequence[str], dtype: str) -> list[Record]:
    """A `TokenBatch` split into one `Record` per image (tokens in `dtype`)."""
    records = []
    for b, (index, name) in enumerate(zip(indices, ids, strict=True)):
        tokens, layout = batch[b]
        arrays = {key: np.asarray(getattr(layout, key)) for key in _LAYOUT_ARRAYS}
        if layout.relevant is not None:
            arrays["relevant"] = np.asarray(layout.relevant)
        records.append(Record(int(index), name, quantise(tokens, dtype), arrays,
                              (int(layout.image_size[0]), int(layout.image_size[1]))))
    return records


def tokenize_items(tokenizer: Tokenizer, entries: Sequence[Decoded | Skipped], dtype: str) -> list[Record | Skipped]:
    """Decoded entries tokenized as one batch (one by one where the batch fails, so one bad image is
    skipped with its reason instead of sinking its neighbours); `Skipped` entries pass through."""
    decoded = [entry for entry in entries if isinstance(entry, Decoded)]
    out: dict[int, Record | Skipped] = {entry.index: entry for entry in entries if isinstance(entry, Skipped)}
    groups = [decoded]
    try:
        if decoded:
            batch = tokenizer([entry.image for entry in decoded])
            out.update((r.index, r) for r in records_from_batch(batch, [e.index for e in decoded],
                                                                [e.id for e in decoded], dtype))
        groups = []
    except (ValueError, TypeError):
        groups = [[entry] for entry in decoded]
    for group in groups:
        entry = group[0]
        try:
            batch = tokenizer([entry.image])
            out[entry.index] = records_from_batch(batch, [entry.index], [entry.id], dtype)[0]
        except (ValueError, TypeError) as error:
            out[entry.index] = Skipped(entry.index, entry.id, f"{type(error).__name__}: {error}")
    return [out[entry.index] for entry in entries]


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a Path, created if missing; ValueError if it is a file or not writable."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"the output {str(path)!r} is a file, not a directory; pass a directory for the shards")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the output directory {str(path)!r}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"the output directory {str(path)!r} is not writable")
    return path


def _atomic_write(path: Path, write: Any) -> None:
    """`write(file)` into a temporary sibling of `path`, fsync, rename into place, fsync the directory."""
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class ShardWriter:
    """Collects records by shard and writes each shard, atomically, once all its inputs have arrived.

    `options` (what the tokens were made with) and `inputs` (how many inputs) must match the
    manifest of an earlier run in `out_dir`, whose finished shards are kept (`pending` excludes them).
    """

    def __init__(self, out_dir: str | os.PathLike, *, inputs: int, shard_size: int, options: dict[str, Any]) -> None:
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        if options.get("dtype") not in TOKEN_DTYPES:
            raise ValueError(f"token dtype must be one of {', '.join(TOKEN_DTYPES)}, got {options.get('dtype')!r}")
        self.out_dir = check_out_dir(out_dir)
        self.inputs, self.shard_size = int(inputs), shard_size
        self.options = {**options, "shard_size": shard_size}
        self.shards: dict[int, dict[str, Any]] = {}
        manifest = self.out_dir / MANIFEST
        if manifest.is_file():
            previous = json.loads(manifest.read_text())
            if previous.get("format") != FORMAT or previous.get("options") != self.options \
                    or previous.get("inputs") != self.inputs:
                raise ValueError(f"{str(self.out_dir)!r} holds shards made from {previous.get('inputs')} inputs with "
                                 f"options {previous.get('options')}, not {self.inputs} with {self.options}; use "
                                 "another output directory (or delete it) to start over")
            self.shards = {int(s["shard"]): s for s in previous["shards"]
                           if s["name"] is None or (self.out_dir / s["name"]).is_file()}
        for stale in self.out_dir.glob(".*.tmp.*"):
            stale.unlink(missing_ok=True)
        self._waiting: dict[int, dict[int, Record | Skipped]] = {}

    @property
    def shard_count(self) -> int:
        return -(-self.inputs // self.shard_size)

    def shard_of(self, index: int) -> int:
        return index // self.shard_size

    def shard_inputs(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.inputs, (shard + 1) * self.shard_size))

    def pending(self) -> list[int]:
        """Input indices whose shard is not finished yet."""
        return [i for s in range(self.shard_count) if s not in self.shards for i in self.shard_inputs(s)]

    def add(self, entry: Record | Skipped) -> Path | None:
        """Take one input's record (or skip); write its shard when complete and return its path."""
        shard = self.shard_of(entry.index)
        waiting = self._waiting.setdefault(shard, {})
        waiting[entry.index] = entry
        if len(waiting) < len(self.shard_inputs(shard)):
            return None
        del self._waiting[shard]
        return self._write(shard, [waiting[i] for i in self.shard_inputs(shard)])

    def _write(self, shard: int, entries: list[Record | Skipped]) -> Path:
        records = [e for e in entries if isinstance(e, Record)]
        name = f"shard-{shard:06d}.tar"

        def write(file: Any) -> None:
            with tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for record in records:
                    key = f"{record.index:09d}"
                    _member(tar, f"{key}.tokens.npy", _npy(record.tokens))
                    buffer = io.BytesIO()
                    np.savez(buffer, **record.layout)
                    _member(tar, f"{key}.layout.npz", buffer.getvalue())
                    meta = {"id": record.id, "width": record.size[0], "height": record.size[1],
                            "channels": int(record.tokens.shape[1]), "patch": int(record.tokens.shape[2]),
                            "dtype": record.tokens.dtype.name}
                    _member(tar, f"{key}.json", json.dumps(meta).encode())

        if records:
            _atomic_write(self.out_dir / name, write)
        self.shards[shard] = {"shard": shard, "name": name if records else None, "first": shard * self.shard_size,
                              "images": len(records), "tokens": sum(int(r.tokens.shape[0]) for r in records),
                              "skipped": [{"index": e.index, "id": e.id, "reason": e.reason}
                                          for e in entries if isinstance(e, Skipped)]}
        self.write_manifest()
        return self.out_dir / name

    def manifest(self) -> dict[str, Any]:
        shards = [self.shards[s] for s in sorted(self.shards)]
        return {"format": FORMAT, "version": VERSION, "options": self.options, "inputs": self.inputs,
                "complete": len(shards) == self.shard_count,
                "images": sum(s["images"] for s in shards), "tokens": sum(s["tokens"] for s in shards),
                "skipped": [skip for s in shards for skip in s["skipped"]],
                "shards": shards}

    def write_manifest(self) -> None:
        text = json.dumps(self.manifest(), indent=1).encode()
        _atomic_write(self.out_dir / MANIFEST, lambda file: file.write(text))


def shard_options(tokenizer: Tokenizer, dtype: str) -> dict[str, Any]:
    """What shard contents depend on, recorded in the manifest (a resumed run must match them)."""
    classes = tokenizer.classes
    return {"budget": tokenizer.budget, "patch": tokenizer.patch, "relevance": relevance_name(tokenizer.relevance),
            "channels": tokenizer.channels, "method": tokenizer.method, "filter": tokenizer.filter,
            "srgb": tokenizer.srgb, "dtype": dtype,
            "classes": None if classes is None else [list(classes.relevant), list(classes.background),
                                                     classes.threshold]}


class _Chunks(torch.utils.data.Dataset):
    """Chunk j of inputs, decoded and tokenized in whichever process runs it (a DataLoader worker)."""

    def __init__(self, items: Sequence[Any], ids: Sequence[str], chunks: list[list[int]], tokenizer: Tokenizer,
                 dtype: str) -> None:
        self.items, self.ids, self.chunks, self.tokenizer, self.dtype = items, ids, chunks, tokenizer, dtype

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, chunk: int) -> list[Record | Skipped]:
        entries = []
        for index in self.chunks[chunk]:
            entries.append(replace(decode(self.items[index], index, self.tokenizer.channels), id=self.ids[index]))
        return tokenize_items(self.tokenizer, entries, self.dtype)


def _as_is(entries: list[Record | Skipped]) -> list[Record | Skipped]:
    return entries


def write_shards(items: Sequence[Any], out_dir: str | os.PathLike, tokenizer: Tokenizer, *, shard_size: int = 256,
                 dtype: str = "float16", workers: int = 0, batch_size: int = 16, ids: Sequence[str] | None = None,
                 progress: bool = True, multiprocessing_context: str | None = None) -> dict[str, Any]:
    """Tokenize `items` (paths, arrays, ...) into token shards in `out_dir`; returns the manifest.

    Finished shards of an earlier run with the same inputs and options are kept. `workers` DataLoader
    processes decode and tokenize `batch_size` images at a time (0: in this process); the shards are
    written here, in order. Inputs that cannot be decoded or tokenized are skipped and listed.
    """
    if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence of images or paths, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError("no inputs to tokenize")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ids = [item_id(item, i) for i, item in enumerate(items)] if ids is None else list(ids)
    if len(ids) != len(items):
        raise ValueError(f"got {len(ids)} ids for {len(items)} items")
    writer = ShardWriter(out_dir, inputs=len(items), shard_size=shard_size, options=shard_options(tokenizer, dtype))
    pending = writer.pending()
    chunks: list[list[int]] = []
    for index in pending:  # chunks never straddle shards
        if chunks and len(chunks[-1]) < batch_size and writer.shard_of(chunks[-1][0]) == writer.shard_of(index):
            chunks[-1].append(index)
        else:
            chunks.append([index])
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(_Chunks(items, ids, chunks, tokenizer, dtype), batch_size=None,
                                         num_workers=workers, collate_fn=_as_is,
                                         multiprocessing_context=multiprocessing_context if workers else None)
    with tqdm(total=len(pending), unit="img", desc="glmip tokenize", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for entries in loader:
            for entry in entries:
                writer.add(entry)
            bar.update(len(entries))
    writer.write_manifest()
    return writer.manifest()


def _read_shard(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, {"tokens", "layout", "meta"}) of each image of one shard, in order."""
    current: dict[str, Any] = {}
    key = None
    with tarfile.open(path, mode="r") as tar:
        for member in tar:
            name, _, kind = member.name.partition(".")
            data = tar.extractfile(member).read()
            if key is not None and name != key:
                yield int(key), current
                current = {}
            key = name
            if kind == "tokens.npy":
                current["tokens"] = np.load(io.BytesIO(data), allow_pickle=False)
            elif kind == "layout.npz":
                with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                    current["layout"] = {k: arrays[k] for k in arrays.files}
            elif kind == "json":
                current["meta"] = json.loads(data)
    if key is not None:
        yield int(key), current


def _batch(samples: list[dict[str, Any]], device: Any) -> TokenBatch:
    layouts = []
    for sample in samples:
        arrays, meta = sample["layout"], sample["meta"]
        layouts.append(TokenLayout(*(arrays[k] for k in _LAYOUT_ARRAYS), patch=int(meta["patch"]),
                                   image_size=(int(meta["width"]), int(meta["height"])),
                                   relevant=arrays.get("relevant")))
    return TokenBatch.from_parts([dequantise(s["tokens"]) for s in samples], layouts).to(device)


class ShardDataset(torch.utils.data.IterableDataset):
    """The shards of `out_dir` as `TokenBatch`es of up to `batch_size` images (never crossing a shard).

    In a DataLoader with workers, worker w of W reads shards w, w + W, ... (`get_worker_info`), so
    every image comes once; use `batch_size=None` in the DataLoader. `with_ids` yields (batch, ids).
    Tokens come back float32 (uint8 shards as value / 255).
    """

    def __init__(self, out_dir: str | os.PathLike, batch_size: int = 32, device: Any = "cpu",
                 with_ids: bool = False) -> None:
        manifest_path = Path(out_dir) / MANIFEST
        if not manifest_path.is_file():
            raise ValueError(f"{str(out_dir)!r} has no {MANIFEST}; it is not a glmip shard directory")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{str(manifest_path)!r} is not a glmip shard manifest")
        self.paths = [Path(out_dir) / s["name"] for s in self.manifest["shards"] if s["name"]]
        self.batch_size, self.device, self.with_ids = batch_size, device, with_ids

    def __len__(self) -> int:
        """Images in the finished shards."""
        return int(self.manifest["images"])

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        paths = self.paths if info is None else self.paths[info.id::info.num_workers]
        for path in paths:
            samples: list[dict[str, Any]] = []
            for _, sample in _read_shard(path):
                samples.append(sample)
                if len(samples) == self.batch_size:
                    yield self._out(samples)
                    samples = []
            if samples:
                yield self._out(samples)

    def _out(self, samples: list[dict[str, Any]]) -> Any:
        batch = _batch(samples, self.device)
        return (batch, [s["meta"]["id"] for s in samples]) if self.with_ids else batch


def read_shards(out_dir: str | os.PathLike, batch_size: int = 32, device: Any = "cpu",
                with_ids: bool = False) -> ShardDataset:
    """The token shards in `out_dir` (written by `write_shards`, `glmip tokenize` or Ray) as an iterable of
    `TokenBatch`es, which is also a torch `IterableDataset` split across DataLoader workers."""
    return ShardDataset(out_dir, batch_size, device, with_ids)
