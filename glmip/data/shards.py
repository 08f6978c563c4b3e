"""Token shards on disk: written once (`write_shards`, `glmip tokenize`, or Ray), read for training (`read_shards`).

Format: WebDataset tar files (`shard-000000.tar`, ...), written with `webdataset.TarWriter`, plus
`_manifest.json` (a leading underscore, so that `ray.data.read_webdataset(OUT_DIR)` and webdataset's
directory listing skip it). Every image is one WebDataset sample, its members sharing a key (its
input index, zero-padded), each a format Ray's and webdataset's default decoders read:

    <key>.tokens.npy   (N, C, P, P) uint8 or float16: the tokens (uint8: round(clamp(t, 0, 1) * 255))
    <key>.cx.npy, .cy.npy, .size.npy, .level.npy   (N,) the TokenLayout arrays (dtypes kept)
    <key>.relevant.npy (N,) bool, with class budgets only
    <key>.json         {"id", "width", "height", "channels", "patch", "dtype"} and "label" (any JSON) if given
    <key>.cls          the label as decimal text, when it is an int (webdataset's class convention)

Ragged per-image arrays (every image has its own token count) stay plain `.npy` members, which
Ray turns into tensor columns and webdataset decodes to arrays; `collate_samples` turns samples
from either (or raw, undecoded ones) into a `TokenBatch`.

Convention:
    Shard s holds inputs s*shard_size .. (s+1)*shard_size - 1 (in the order given, sorted paths for
    the CLI) minus those skipped, so a re-run maps every input to the same shard: a shard listed in
    the manifest whose file exists is finished and skipped. A shard is written to a temporary name in
    the same directory, fsynced and renamed into place, then the manifest is rewritten the same way,
    so a killed run leaves complete shards and at most a `.tmp` file (removed by the next run), never
    a half shard under a shard's name. The manifest lists every shard (name, first input, images,
    tokens, skipped inputs with reasons), the options, and the totals.

Convention (reading): `read_shards` reads with webdataset's pipeline (`WebDataset`'s stages: shard
    list, node and worker split, tar expansion, grouping by key, shuffle buffer). With `shuffle`, the shard
    order is a permutation drawn from (seed, epoch) — the same on every rank and worker, so that
    shards split by rank (torch.distributed) and then by DataLoader worker cover every shard once —
    and samples pass through a shuffle buffer seeded from (seed, epoch, rank, worker). A directory of
    glmip's first shard format (`manifest.json`, `<key>.layout.npz`) still reads.
"""

from __future__ import annotations

import io
import json
import numbers
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..layout import TokenLayout
from ..token_batch import TokenBatch
from .dataset import Decoded, Skipped, collate_labels, decode, item_id, split_item
from .tokenizer import Tokenizer, relevance_name

__all__ = ["write_shards", "read_shards", "ShardWriter", "ShardDataset", "ShardError", "Record", "TOKEN_DTYPES",
           "check_out_dir", "records_from_batch", "decode_sample", "collate_samples", "MANIFEST", "LEGACY_MANIFEST"]

MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"  # the first format's manifest, beside its shards
FORMAT = "glmip.shards"
VERSION = 2
TOKEN_DTYPES = ("uint8", "float16")
_LAYOUT_ARRAYS = ("cx", "cy", "size", "level")
_STORED_DTYPES = ("uint8", "float16", "float32")
DEFAULT_SHUFFLE_BUFFER = 1000


class ShardError(ValueError):
    """A shard directory, shard file or sample that cannot be read: names the shard (a path), the
    member (`<key>.<suffix>`, or None for the file or manifest as a whole) and the reason."""

    def __init__(self, shard: str | os.PathLike, member: str | None, reason: str) -> None:
        self.shard, self.member, self.reason = os.fspath(shard), member, reason
        where = f"{self.shard!r}" + (f", member {member!r}" if member else "")
        super().__init__(f"corrupt glmip shard {where}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers pickle it to the parent
        return type(self), (self.shard, self.member, self.reason)


@dataclass(frozen=True)
class Record:
    """One tokenized image as stored: input index, id, tokens (N, C, P, P) in the stored dtype, layout
    arrays, the image's (width, height), and its label when it has one (`labelled`)."""

    index: int
    id: str
    tokens: np.ndarray
    layout: dict[str, np.ndarray]
    size: tuple[int, int]
    label: Any = None
    labelled: bool = False


def quantise(tokens: torch.Tensor, dtype: str) -> np.ndarray:
    """float32 tokens -> the stored dtype: float16, or uint8 = round(clamp(t, 0, 1) * 255)."""
    values = tokens.detach().cpu().float()
    if dtype == "float16":
        return values.half().numpy()
    return torch.round(values.clamp(0, 1) * 255).to(torch.uint8).numpy()


def dequantise(stored: np.ndarray) -> torch.Tensor:
    """Stored tokens as float32: uint8 as value / 255, float16 widened (a read-only array, as Ray gives, is copied)."""
    values = torch.from_numpy(np.array(stored) if not stored.flags.writeable else np.ascontiguousarray(stored))
    return values.float() / 255 if values.dtype == torch.uint8 else values.float()


def json_label(label: Any, where: str) -> Any:
    """`label` as plain JSON values (numpy scalars and arrays become numbers and lists); TypeError naming
    `where` for what JSON cannot hold."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        return json.loads(json.dumps(label, default=plain, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{where}: a label must be JSON (numbers, strings, lists, dicts), got {label!r}: "
                        f"{error}") from None


def records_from_batch(batch: TokenBatch, entries: Sequence[Decoded], dtype: str) -> list[Record]:
    """A `TokenBatch` split into one `Record` per image (tokens in `dtype`), with each entry's index, id, label."""
    records = []
    for b, entry in enumerate(entries):
        tokens, layout = batch[b]
        arrays = {key: np.asarray(getattr(layout, key)) for key in _LAYOUT_ARRAYS}
        if layout.relevant is not None:
            arrays["relevant"] = np.asarray(layout.relevant)
        records.append(Record(int(entry.index), entry.id, quantise(tokens, dtype), arrays,
                              (int(layout.image_size[0]), int(layout.image_size[1])), entry.label, entry.labelled))
    return records


def tokenize_items(tokenizer: Tokenizer, entries: Sequence[Decoded | Skipped], dtype: str) -> list[Record | Skipped]:
    """Decoded entries tokenized as one batch (one by one where the batch fails, so one bad image is
    skipped with its reason instead of sinking its neighbours); `Skipped` entries pass through.
    Settings that fail on every image are caught before, by `Tokenizer.check`."""
    decoded = [entry for entry in entries if isinstance(entry, Decoded)]
    out: dict[int, Record | Skipped] = {entry.index: entry for entry in entries if isinstance(entry, Skipped)}
    groups = [decoded]
    try:
        if decoded:
            out.update((r.index, r) for r in records_from_batch(tokenizer([e.image for e in decoded]), decoded, dtype))
        groups = []
    except (ValueError, TypeError):
        groups = [[entry] for entry in decoded]
    for group in groups:
        entry = group[0]
        try:
            out[entry.index] = records_from_batch(tokenizer([entry.image]), [entry], dtype)[0]
        except (ValueError, TypeError) as error:
            out[entry.index] = Skipped(entry.index, entry.id, f"{type(error).__name__}: {error}", entry.labelled)
    return [out[entry.index] for entry in entries]


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a Path, created if missing; ValueError if it is a file or not writable."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"the output directory must be a path, got {type(out_dir).__name__}")
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


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_record(record: Record) -> dict[str, Any]:
    """One record as a WebDataset sample: {"__key__", suffix: bytes} (see the module's format)."""
    meta = {"id": record.id, "width": record.size[0], "height": record.size[1],
            "channels": int(record.tokens.shape[1]), "patch": int(record.tokens.shape[2]),
            "dtype": record.tokens.dtype.name}
    sample: dict[str, Any] = {"__key__": f"{record.index:09d}", "tokens.npy": _npy(record.tokens)}
    for name, array in record.layout.items():
        sample[f"{name}.npy"] = _npy(array)
    if record.labelled:
        meta["label"] = record.label
        if isinstance(record.label, numbers.Integral) and not isinstance(record.label, bool):
            sample["cls"] = str(int(record.label)).encode()
    sample["json"] = json.dumps(meta).encode()
    return sample


class ShardWriter:
    """Collects records by shard and writes each shard, atomically, once all its inputs have arrived.

    `options` (what the tokens were made with) and `inputs` (how many inputs) must match the
    manifest of an earlier run in `out_dir`, whose finished shards are kept (`pending` excludes them).
    (Not `webdataset.ShardWriter`, which starts a new shard by count or size: here shard s is fixed
    to inputs s*shard_size..., which is what makes a run resumable. Each shard is a `TarWriter`.)
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
        if (self.out_dir / LEGACY_MANIFEST).is_file() and not (self.out_dir / MANIFEST).is_file():
            raise ValueError(f"{str(self.out_dir)!r} holds shards in glmip's first format (manifest.json, "
                             "layout.npz); read_shards still reads them, but a run cannot add to them: write to "
                             "another output directory")
        manifest = self.out_dir / MANIFEST
        if manifest.is_file():
            previous = load_manifest(manifest)
            if previous.get("options") != self.options or previous.get("inputs") != self.inputs:
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
        import webdataset

        records = [e for e in entries if isinstance(e, Record)]
        name = f"shard-{shard:06d}.tar"

        def write(file: Any) -> None:
            with webdataset.TarWriter(file, encoder=False, mtime=0, user="glmip", group="glmip", mode=0o644) as tar:
                for record in records:
                    tar.write(encode_record(record))

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


def load_manifest(path: Path) -> dict[str, Any]:
    """A shard manifest, checked: ShardError naming the file for bad JSON or a missing or wrong field."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ShardError(path, None, f"the manifest cannot be read as JSON ({type(error).__name__}: {error})") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(path, None, f"not a glmip shard manifest (no \"format\": {FORMAT!r})")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and (s.get("name") is None or isinstance(s.get("name"), str))
            and isinstance(s.get("images"), int) and isinstance(s.get("shard"), int) for s in shards):
        raise ShardError(path, None, "\"shards\" must be a list of {\"shard\": int, \"name\": str or null, "
                                     "\"images\": int, ...}")
    if not isinstance(manifest.get("images"), int):
        raise ShardError(path, None, "\"images\" must be an int")
    if any(s["name"] is not None and (Path(s["name"]).name != s["name"] or not s["name"]) for s in shards):
        raise ShardError(path, None, "a shard name must be a file name inside the shard directory")
    return manifest


def shard_options(tokenizer: Tokenizer, dtype: str) -> dict[str, Any]:
    """What shard contents depend on, recorded in the manifest (a resumed run must match them)."""
    classes = tokenizer.classes
    return {"budget": tokenizer.budget, "patch": tokenizer.patch, "relevance": relevance_name(tokenizer.relevance),
            "channels": tokenizer.channels, "method": tokenizer.method, "filter": tokenizer.filter,
            "srgb": tokenizer.srgb, "dtype": dtype, "criterion": tokenizer.criterion,
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


def _check_count(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def write_shards(items: Sequence[Any], out_dir: str | os.PathLike, tokenizer: Tokenizer, *, shard_size: int = 256,
                 dtype: str = "float16", workers: int = 0, batch_size: int = 16, ids: Sequence[str] | None = None,
                 labels: Sequence[Any] | None = None, progress: bool = True,
                 multiprocessing_context: str | None = None) -> dict[str, Any]:
    """Tokenize `items` (paths, arrays, ..., or `(image, label)` pairs) into token shards in `out_dir`;
    returns the manifest.

    labels: one label per item (any JSON value; or give the items as pairs), stored in each sample.
    Finished shards of an earlier run with the same inputs and options are kept. `workers` DataLoader
    processes decode and tokenize `batch_size` images at a time (0: in this process); the shards are
    written here, in order. Inputs that cannot be decoded or tokenized are skipped and listed; settings
    that fail on any image (`Tokenizer.check`) raise ValueError before anything is written.
    """
    if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence of images or paths, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError("no inputs to tokenize")
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a glmip.data.Tokenizer, got {type(tokenizer).__name__}")
    if dtype not in TOKEN_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
    workers, batch_size = _check_count(workers, "workers", 0), _check_count(batch_size, "batch_size", 1)
    _check_count(shard_size, "shard_size", 1)
    if ids is not None and (isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence)
                            or not all(isinstance(i, str) for i in ids)):
        raise TypeError(f"ids must be a sequence of strings, one per item, got {type(ids).__name__}")
    ids = [item_id(item, i) for i, item in enumerate(items)] if ids is None else list(ids)
    if len(ids) != len(items):
        raise ValueError(f"got {len(ids)} ids for {len(items)} items")
    if labels is not None:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or len(labels) != len(items):
            raise ValueError(f"labels must be a sequence of one label per item ({len(items)}), got "
                             f"{type(labels).__name__}")
        items = [(split_item(item)[0], json_label(label, ids[i]))
                 for i, (item, label) in enumerate(zip(items, labels, strict=True))]
    elif any(isinstance(item, tuple) for item in items):
        items = [(split_item(item)[0], json_label(split_item(item)[1], ids[i])) if isinstance(item, tuple) else item
                 for i, item in enumerate(items)]
    tokenizer.check()
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


# -- decoding samples ------------------------------------------------------------------------------
def _value(sample: Mapping[str, Any], suffix: str) -> Any:
    """A member of a sample by suffix: "tokens.npy" as webdataset and Ray key it, or ".tokens.npy" (torchdata's)."""
    for key in (suffix, "." + suffix):
        if key in sample:
            return sample[key]
    return None


def _array(sample: Mapping[str, Any], suffix: str, fail: Any) -> np.ndarray | None:
    value = _value(sample, suffix)
    if value is None or isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return np.load(io.BytesIO(bytes(value)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            fail(suffix, f"not a .npy array ({type(error).__name__}: {error})")
    if isinstance(value, list):
        return np.asarray(value)
    fail(suffix, f"expected .npy bytes or an array, got {type(value).__name__}")
    return None


def _meta(sample: Mapping[str, Any], fail: Any) -> dict[str, Any]:
    value = _value(sample, "json")
    if value is None:
        fail("json", "missing: every sample needs its .json (id, width, height, patch)")
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        try:
            value = json.loads(bytes(value) if not isinstance(value, str) else value)
        except (ValueError, UnicodeDecodeError) as error:
            fail("json", f"not JSON ({type(error).__name__}: {error})")
    if not isinstance(value, Mapping):
        fail("json", f"expected a JSON object, got {type(value).__name__}")
    for name in ("width", "height", "patch"):
        field = value.get(name)
        if not isinstance(field, numbers.Integral) or isinstance(field, bool) or field < 1:
            fail("json", f"{name!r} must be a positive int, got {field!r}")
    if not isinstance(value.get("id"), str):
        fail("json", f"'id' must be a string, got {value.get('id')!r}")
    return dict(value)


def _legacy_layout(sample: Mapping[str, Any], fail: Any) -> dict[str, np.ndarray] | None:
    value = _value(sample, "layout.npz")
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {k: np.asarray(v) for k, v in value.items()}
    try:
        with np.load(io.BytesIO(bytes(value)), allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    except (ValueError, OSError, EOFError, TypeError) as error:
        fail("layout.npz", f"not an .npz archive ({type(error).__name__}: {error})")
    return None


def decode_sample(sample: Mapping[str, Any]) -> tuple[torch.Tensor, TokenLayout, dict[str, Any]]:
    """One WebDataset sample of a glmip shard -> (tokens (N, C, P, P) float32, TokenLayout, metadata).

    The sample is a dict keyed by member suffix ("tokens.npy", "cx.npy", ..., "json", and "__key__",
    "__url__"), its values raw bytes (`webdataset.WebDataset` without `.decode()`) or already decoded
    (arrays and a dict: webdataset's `.decode()`, a row of `ray.data.read_webdataset`). The metadata
    holds "id", "width", "height", "patch", ... and "label" when the shard has one. Tokens stored as
    uint8 come back as value / 255. Raises ShardError naming the shard, the member and the reason.
    """
    if not isinstance(sample, Mapping):
        raise TypeError(f"a sample is a dict of a shard's members, got {type(sample).__name__}")
    shard, key = str(sample.get("__url__", "<sample>")), str(sample.get("__key__", "<key>"))

    def fail(suffix: str, reason: str) -> None:
        raise ShardError(shard, f"{key}.{suffix}", reason)

    meta = _meta(sample, fail)
    tokens = _array(sample, "tokens.npy", fail)
    if tokens is None:
        fail("tokens.npy", "missing")
    if tokens.dtype.name not in _STORED_DTYPES or tokens.ndim != 4 or not 1 <= tokens.shape[1] <= 4 \
            or tokens.shape[2] != meta["patch"] or tokens.shape[3] != meta["patch"] or tokens.shape[0] < 1:
        fail("tokens.npy", f"expected (N >= 1, C in 1..4, {meta['patch']}, {meta['patch']}) uint8 or float16 tokens, "
                           f"got {tokens.dtype} {tokens.shape}")
    count = int(tokens.shape[0])
    layout = _legacy_layout(sample, fail)
    suffix = "layout.npz" if layout is not None else None
    if layout is None:
        layout = {}
        for name in (*_LAYOUT_ARRAYS, "relevant"):
            array = _array(sample, f"{name}.npy", fail)
            if array is None and name != "relevant":
                fail(f"{name}.npy", "missing")
            if array is not None:
                layout[name] = array
    for name in (*_LAYOUT_ARRAYS, "relevant"):
        array = layout.get(name)
        if array is None and name != "relevant":
            fail(suffix or f"{name}.npy", f"no {name!r} array")
        if array is not None and (array.shape != (count,) or array.dtype.kind not in "biuf"
                                  or (array.dtype.kind == "f" and not np.isfinite(array).all())):
            fail(suffix or f"{name}.npy", f"expected ({count},) finite numbers for {count} tokens, got "
                                          f"{array.dtype} {array.shape}")
    values = dequantise(tokens)
    if not torch.isfinite(values).all():
        fail("tokens.npy", "holds NaN or infinite values")
    token_layout = TokenLayout(*(layout[k] for k in _LAYOUT_ARRAYS), patch=int(meta["patch"]),
                               image_size=(int(meta["width"]), int(meta["height"])), relevant=layout.get("relevant"))
    return values, token_layout, meta


def collate_samples(samples: Sequence[Mapping[str, Any]], device: Any = "cpu", *, with_labels: bool = False,
                    with_ids: bool = False) -> Any:
    """A list of WebDataset samples of glmip shards (see `decode_sample`) -> one `TokenBatch` on `device`;
    `(batch, labels)`, `(batch, ids)` or `(batch, labels, ids)` with `with_labels` / `with_ids`.

    Use it as webdataset's collation: `webdataset.WebDataset(urls, ...).batched(32,
    collation_fn=glmip.data.collate_samples)`, or on the rows of `ray.data.read_webdataset`. Labels
    are collated as `torch.utils.data.default_collate` does (ints -> an int64 tensor); a sample
    without one gives None. Raises ShardError for a sample that cannot be read or that cannot share a
    batch with the first (another channel count or patch size).
    """
    if isinstance(samples, Mapping) or not isinstance(samples, Sequence) or len(samples) == 0:
        raise TypeError(f"samples must be a non-empty list of sample dicts, got {type(samples).__name__}")
    decoded = [decode_sample(sample) for sample in samples]
    first = decoded[0][0].shape[1:]
    for sample, (tokens, _, _) in zip(samples, decoded, strict=True):
        if tokens.shape[1:] != first:
            raise ShardError(str(sample.get("__url__", "<sample>")), f"{sample.get('__key__', '<key>')}.tokens.npy",
                             f"tokens of shape (C, P, P) = {tuple(tokens.shape[1:])} cannot share a batch with "
                             f"{tuple(first)} (one batch holds one channel count and patch size)")
    batch = TokenBatch.from_parts([tokens for tokens, _, _ in decoded], [layout for _, layout, _ in decoded])
    batch = batch.to(device)
    out: list[Any] = [batch]
    if with_labels:
        out.append(collate_labels([meta.get("label") for _, _, meta in decoded]))
    if with_ids:
        out.append([meta["id"] for _, _, meta in decoded])
    return out[0] if len(out) == 1 else tuple(out)


# -- reading ---------------------------------------------------------------------------------------
def _check_device(device: Any) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a device name such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, which this torch build or machine does not have")
    return parsed


def _distributed() -> tuple[int, int] | None:
    """(rank, world size) of an initialised torch.distributed group, else of torchrun's environment, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            return None
    return None


class ShardDataset(torch.utils.data.IterableDataset):
    """The shards of `out_dir` as `TokenBatch`es of up to `batch_size` images, read by webdataset's pipeline.

    shuffle: False reads in order; True (a buffer of 1000 samples) or an int buffer size shuffles the
    shards and the samples anew each epoch (see the module's reading convention). seed: the seed of
    every permutation. Each epoch's order depends on (seed, epoch): call `set_epoch(epoch)` before each
    epoch as with `DistributedSampler` (required for the same order on every rank with
    non-persistent DataLoader workers; without it, each pass over this object advances the epoch).
    With `persistent_workers=True` each worker keeps the copy it was given, which later `set_epoch`
    calls in the main process do not reach: there each pass advances the epoch by one from the
    last one set, the same way on every rank.
    Shards are split by rank — `rank`/`world_size`, else torch.distributed's, else the RANK and
    WORLD_SIZE torchrun sets — and then by DataLoader worker (`get_worker_info`), so every image is
    read once per epoch across all of them; use `batch_size=None` in the DataLoader. Batches span
    shards; the last of each worker may be partial. with_labels / with_ids: yield `(batch, labels)`,
    `(batch, ids)` or `(batch, labels, ids)` (`collate_samples`). There is no `len()`: the batch count
    depends on ranks and workers; `images` is the directory's image count.
    """

    def __init__(self, out_dir: str | os.PathLike, batch_size: int = 32, device: Any = "cpu",
                 with_ids: bool = False, *, with_labels: bool = False, shuffle: bool | int = False, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None) -> None:
        if not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
        self.batch_size = _check_count(batch_size, "batch_size", 1)
        self.device = _check_device(device)
        for name, flag in (("with_ids", with_ids), ("with_labels", with_labels)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if isinstance(shuffle, bool):
            self.buffer = DEFAULT_SHUFFLE_BUFFER if shuffle else 0
        else:
            self.buffer = _check_count(shuffle, "shuffle (a buffer size, or True / False)", 1)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither (torch.distributed's are used then)")
        if rank is not None:
            world_size = _check_count(world_size, "world_size", 1)
            rank = _check_count(rank, "rank", 0)
            if rank >= world_size:
                raise ValueError(f"rank must be below world_size {world_size}, got {rank}")
        self.with_ids, self.with_labels, self.seed = with_ids, with_labels, int(seed)
        self.rank, self.world_size = rank, world_size
        root = Path(out_dir)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file() and (root / LEGACY_MANIFEST).is_file():
            manifest_path = root / LEGACY_MANIFEST
        if not manifest_path.is_file():
            raise ShardError(root, None, f"no {MANIFEST}: not a glmip shard directory (or not written yet)")
        self.manifest = load_manifest(manifest_path)
        self.paths = [root / s["name"] for s in self.manifest["shards"] if s["name"]]
        self.expected = {str(root / s["name"]): int(s["images"]) for s in self.manifest["shards"] if s["name"]}
        for path in self.paths:
            if not path.is_file():
                raise ShardError(path, None, f"listed in {manifest_path.name} but missing; write the shards again "
                                             "(glmip tokenize resumes: it rewrites only the missing ones)")
        self._epoch: int | None = None
        self._passes = 0
        self._captured: tuple[int, int] | None = None

    @property
    def images(self) -> int:
        """Images in the finished shards (all ranks and workers together)."""
        return int(self.manifest["images"])

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shard and sample order the next pass reads (with `shuffle`); later passes
        without another call read epoch + 1, epoch + 2, ..."""
        self._epoch = _check_count(epoch, "epoch", 0)
        self._passes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_captured"] = _distributed() or self._captured  # a spawned worker has no process group
        return state

    def _node(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, int(self.world_size)
        return _distributed() or self._captured or (0, 1)

    def __iter__(self) -> Iterator[Any]:
        import webdataset
        from webdataset.tariterators import group_by_keys, tar_file_expander

        rank, world = self._node()
        if not self.paths:  # every input was skipped: an empty epoch
            return
        if len(self.paths) < world:
            raise ValueError(f"{len(self.paths)} shard(s) cannot be split across {world} ranks; write more, smaller "
                             "shards (--shard-size)")
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = (self._epoch or 0) + self._passes
        self._passes += 1
        # Without set_epoch, a DataLoader's fresh workers would replay the same epoch; its per-epoch base seed
        # (the same in every worker of one epoch) tells epochs apart where no other rank must agree.
        salt = info.seed - info.id if info is not None and self._epoch is None and world == 1 else 0
        urls = [str(path) for path in self.paths]
        if self.buffer:
            random.Random(f"{self.seed}/{epoch}/{salt}").shuffle(urls)
        where: dict[str, Any] = {"shard": urls[0], "member": None}

        def by_node(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for position, shard in enumerate(source):
                if position % world == rank:
                    yield shard

        assigned: list[str] = []

        def by_worker(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for position, shard in enumerate(source):
                if position % workers == worker:
                    where.update(shard=shard["url"], member=None)
                    assigned.append(shard["url"])
                    yield shard

        def counted(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            """Samples held back one at a time, so that a shard whose sample count is not the manifest's
            (a truncated file ends silently in a tar stream) raises before its last, partial sample."""
            counts: Counter[str] = Counter()
            checked: set[str] = set()
            held = None

            def check(upto: str | None) -> None:
                for url in assigned if upto is None else assigned[:assigned.index(upto)]:
                    if url not in checked:
                        checked.add(url)
                        if counts[url] != self.expected[url]:
                            raise ShardError(url, None, f"holds {counts[url]} sample(s) where the manifest lists "
                                                        f"{self.expected[url]}: truncated or overwritten")

            for sample in source:
                url = sample.get("__url__")
                check(url)
                if held is not None:
                    yield held
                held = sample
                counts[url] += 1
            check(None)
            if held is not None:
                yield held

        def seen(name: str) -> bool:
            where["member"] = name
            return True

        def opened(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for shard in source:  # webdataset's own opener leaves each file for the garbage collector to close
                with open(shard["url"], "rb") as stream:
                    yield {**shard, "stream": stream}

        stages: list[Any] = [webdataset.SimpleShardList(urls), by_node, by_worker, opened,
                             partial(tar_file_expander, select_files=seen), group_by_keys, counted]
        if self.buffer:
            rng = random.Random(f"{self.seed}/{epoch}/{salt}/{rank}/{worker}")
            stages.append(webdataset.shuffle(self.buffer, initial=self.buffer, rng=rng))
        dataset = webdataset.DataPipeline(*stages)
        samples: list[dict[str, Any]] = []
        stream = iter(dataset)
        while True:
            try:
                sample = next(stream)
            except StopIteration:
                break
            except ShardError:
                raise
            except Exception as error:  # tarfile, gzip or I/O errors from inside webdataset's pipeline
                reason = str(error.args[0]) if error.args else type(error).__name__
                raise ShardError(where["shard"], where["member"], f"{type(error).__name__}: {reason}") from None
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield self._out(samples)
                samples = []
        if samples:
            yield self._out(samples)

    def _out(self, samples: list[dict[str, Any]]) -> Any:
        return collate_samples(samples, self.device, with_labels=self.with_labels, with_ids=self.with_ids)


def read_shards(out_dir: str | os.PathLike, batch_size: int = 32, device: Any = "cpu", with_ids: bool = False, *,
                with_labels: bool = False, shuffle: bool | int = False, seed: int = 0, rank: int | None = None,
                world_size: int | None = None) -> ShardDataset:
    """The token shards in `out_dir` (written by `write_shards`, `glmip tokenize` or Ray) as an iterable of
    `TokenBatch`es, which is also a torch `IterableDataset` split across ranks and DataLoader workers
    (see `ShardDataset`)."""
    return ShardDataset(out_dir, batch_size, device, with_ids, with_labels=with_labels, shuffle=shuffle, seed=seed,
                        rank=rank, world_size=world_size)
