"""`glmip tokenize INPUT_DIR -o OUT_DIR --budget N`: a folder of images into token shards, thin over `write_shards`.

`add_parser(subparsers)` registers it on the `glmip` command line. Every bad input is a ValueError
(or TypeError) raised before anything is written, which `glmip`'s main turns into a message and
exit code 2 — settings that no image can satisfy (a patch over the limit, a CLIP model that does not
load) included, found once by `Tokenizer.check` — while a file that cannot be decoded is skipped and
listed in the manifest instead.

Convention (labels file, `--labels`): CSV (`.csv`: rows `path,label`, an optional `path,label`
header; a label cell that is valid JSON — a number, true/false, an object — is read as JSON, any
other as text) or JSON lines (`.jsonl`, `.ndjson`: one object a line with "path" and "label", or
"path" and other keys, which then are the label). Paths are relative to INPUT_DIR or absolute;
every input file needs a label, and labels naming no input file are counted on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ..allocate import ClassBudgets
from ..options import parse_pair, parse_range
from .tokenizer import Gaze, Query, Tokenizer

__all__ = ["add_parser", "input_files", "tokenizer_from_args", "read_labels"]

TOKEN_DTYPES = ("uint8", "float16")  # as glmip.data.shards.TOKEN_DTYPES (not imported: it needs torch)
MANIFEST = "_manifest.json"  # as glmip.data.shards.MANIFEST


def input_files(input_dir: str, out_dir: str | None = None) -> list[Path]:
    """Every regular, non-hidden file under `input_dir` (recursively, sorted), the output directory excluded."""
    root = Path(input_dir)
    if not root.is_dir():
        raise ValueError(f"the input {input_dir!r} is not a directory")
    skip = Path(out_dir).resolve() if out_dir else None
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                          p.relative_to(root).parts)
                   and (skip is None or skip not in p.resolve().parents))
    if not files:
        raise ValueError(f"the input directory {input_dir!r} holds no files")
    return files


def _label_rows(path: Path) -> list[tuple[str, Any, int]]:
    """(path, label, line number) of each entry of a labels file (see the module's convention)."""
    rows: list[tuple[str, Any, int]] = []
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"the labels file {str(path)!r} must be .csv or .jsonl (JSON lines), got {suffix or 'none'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the labels file {str(path)!r}: {error}") from None
    if suffix == ".csv":
        for number, cells in enumerate(csv.reader(text.splitlines()), start=1):
            if not cells or not "".join(cells).strip():
                continue
            if len(cells) != 2:
                raise ValueError(f"{path}:{number}: a CSV labels row is path,label (2 cells), got {len(cells)}")
            if number == 1 and [c.strip().lower() for c in cells] == ["path", "label"]:
                continue
            try:
                label: Any = json.loads(cells[1])
            except ValueError:
                label = cells[1]
            rows.append((cells[0], label, number))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise ValueError(f"{path}:{number}: each line is an object with a \"path\" string and a label")
            label = entry["label"] if "label" in entry else {k: v for k, v in entry.items() if k != "path"}
            rows.append((entry["path"], label, number))
    if not rows:
        raise ValueError(f"the labels file {str(path)!r} holds no labels")
    return rows


def read_labels(labels_file: str, input_dir: str, files: list[Path]) -> list[Any]:
    """One label per input file, in the order of `files`, from a labels file (see the module's convention)."""
    path, root = Path(labels_file), Path(input_dir)
    by_file: dict[Path, Any] = {}
    for name, label, number in _label_rows(path):
        key = (root / name if not Path(name).is_absolute() else Path(name)).resolve()
        if key in by_file:
            raise ValueError(f"{path}:{number}: a second label for {name!r}")
        by_file[key] = label
    resolved = [f.resolve() for f in files]
    missing = [str(f) for f, r in zip(files, resolved, strict=True) if r not in by_file]
    if missing:
        raise ValueError(f"{len(missing)} of {len(files)} input files have no label in {labels_file!r}, e.g. "
                         f"{', '.join(missing[:3])}")
    unused = len(set(by_file) - set(resolved))
    if unused:
        print(f"glmip tokenize: {unused} label(s) in {labels_file} name no input file", file=sys.stderr)
    return [by_file[r] for r in resolved]


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer:
    """The Tokenizer the options describe (one relevance source at most; uniform by default)."""
    given = [name for name in ("gaze", "query") if getattr(args, name)]
    given += [name for name in ("saliency", "uniform") if getattr(args, name)]
    if len(given) > 1:
        raise ValueError(f"pass one relevance source, got {', '.join('--' + g for g in given)}")
    relevance: Any = "uniform"
    if args.gaze:
        x, y = parse_pair(args.gaze, "--gaze")
        relevance = Gaze(x, y, args.radius)
    elif args.saliency:
        relevance = "saliency"
    elif args.query:
        if not args.clip_model:
            raise ValueError("--query needs --clip-model DIR, a CLIP model saved locally by transformers "
                             "(glmip never downloads one)")
        relevance = Query(args.query, args.clip_model)
    elif args.clip_model:
        raise ValueError("--clip-model is used only with --query TEXT")
    classes = None
    if args.relevant or args.background:
        classes = ClassBudgets(relevant=parse_range(args.relevant or f"0-{args.budget}", "--relevant"),
                               background=parse_range(args.background or f"0-{args.budget}", "--background"),
                               threshold=args.threshold)
    return Tokenizer(args.budget, args.patch, relevance, channels=args.channels, classes=classes,
                     method=args.method, device=args.device, criterion="detail" if args.detail else "relevance")


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .shards import check_out_dir, write_shards  # torch, only when the command runs

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.shard_size < 1 or args.batch_size < 1:
        raise ValueError(f"--shard-size and --batch-size must be >= 1, got {args.shard_size} and {args.batch_size}")
    tokenizer = tokenizer_from_args(args)
    files = input_files(args.input_dir, args.output)
    labels = read_labels(args.labels, args.input_dir, files) if args.labels else None
    tokenizer.check()  # settings that fail on every image: one message, before the output exists
    check_out_dir(args.output)
    manifest = write_shards([str(f) for f in files], args.output, tokenizer, shard_size=args.shard_size,
                            dtype=args.dtype, workers=args.workers, batch_size=args.batch_size, labels=labels,
                            progress=not args.quiet)
    skipped = manifest["skipped"]
    for skip in skipped:
        print(f"skipped {skip['id']}: {skip['reason']}", file=sys.stderr)
    if manifest["images"] == 0:
        raise ValueError(f"none of the {len(files)} files in {args.input_dir!r} could be read as an image "
                         "(see the reasons above)")
    shards = sum(1 for s in manifest["shards"] if s["name"])
    print(f"{manifest['images']} images, {manifest['tokens']} tokens in {shards} shard(s), {len(skipped)} skipped; "
          f"wrote {Path(args.output) / MANIFEST}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tokenize", help="tokenize a folder of images into token shards (WebDataset tar + _manifest.json)",
        description="Tokenize every image under INPUT_DIR into token shards in OUT_DIR. Resumable: finished shards "
                    "are kept on a re-run with the same options. Unreadable files are skipped and listed in the "
                    "manifest.")
    parser.add_argument("input_dir", help="folder of images (searched recursively; hidden files ignored)")
    parser.add_argument("-o", "--output", required=True, help="output directory for the shards and _manifest.json")
    parser.add_argument("--labels", metavar="FILE",
                        help="labels to store in each sample: CSV rows path,label or JSON lines {\"path\", \"label\"} "
                             "(paths relative to INPUT_DIR)")
    parser.add_argument("--budget", type=int, required=True, help="most tokens per image")
    parser.add_argument("--patch", type=int, default=16, help="samples per token side (default: %(default)s)")
    parser.add_argument("--gaze", help="relevance around a gaze point X,Y (fractions of width and height)")
    parser.add_argument("--radius", type=float, default=0.12,
                        help="gaze falloff, a fraction of the larger side (default: %(default)s)")
    parser.add_argument("--saliency", action="store_true", help="relevance from the built-in saliency (no weights)")
    parser.add_argument("--query", help="relevance of image regions to this text (needs --clip-model)")
    parser.add_argument("--clip-model", help="local directory of a transformers CLIP model (never downloaded)")
    parser.add_argument("--uniform", action="store_true", help="uniform relevance (the default)")
    parser.add_argument("--detail", action="store_true",
                        help="place tokens by relevance x the detail a coarser token would lose (with any relevance)")
    parser.add_argument("--relevant", help="token range MIN-MAX for relevant regions, e.g. 64-400")
    parser.add_argument("--background", help="token range MIN-MAX for the rest, e.g. 16-64")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="relevance that makes a token relevant (default: %(default)s)")
    parser.add_argument("--channels", type=int, choices=[1, 2, 3, 4], default=3,
                        help="channel count every image is brought to (grey repeated, alpha dropped or added; "
                             "default: %(default)s)")
    parser.add_argument("--method", choices=["hardware", "box", "lanczos"], default="hardware",
                        help="pyramid filter (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader worker processes (0: this process; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="images tokenized together (default: %(default)s)")
    parser.add_argument("--dtype", choices=TOKEN_DTYPES, default="float16",
                        help="stored token dtype (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=256, help="images per shard (default: %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=cmd_tokenize)
    return parser
