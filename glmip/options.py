"""Command-line option values every `glmip` subcommand parses the same way: number pairs, sizes and
token ranges. Each bad value is a ValueError naming the option and an example of what is accepted
(argparse prints it as its own error when the parser is a `type=`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["parse_pair", "parse_size", "parse_range", "parse_budget", "writable_output"]

MAX_BUDGET = (1 << 31) - 1  # tokens in one call: what an int32 offset (cu_seqlens) can address


class _ArgumentValueError(ValueError, argparse.ArgumentTypeError):
    """A bad option value: argparse prints its message; elsewhere it is a ValueError."""


def parse_pair(text: str, what: str) -> tuple[float, float]:
    """`what` given as two numbers, "0.4,0.3" or "0.4x0.3"."""
    try:
        a, b = (float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise _ArgumentValueError(f"{what} must be two numbers like 0.4,0.3, got {text!r}") from None
    return a, b


def parse_size(text: str, what: str = "--size") -> tuple[int, int]:
    """`what` given as WIDTHxHEIGHT, two positive ints (1.5x2 is refused, not rounded)."""
    try:
        width, height = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise _ArgumentValueError(f"{what} must be two positive ints like 640x480, got {text!r}") from None
    if width < 1 or height < 1:
        raise _ArgumentValueError(f"{what} must be two positive ints like 640x480, got {text!r}")
    return width, height


def parse_range(text: str, what: str) -> tuple[int, int]:
    """`what` given as MIN-MAX token counts, "64-400"."""
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise _ArgumentValueError(f"{what} must be MIN-MAX token counts like 64-400, got {text!r}") from None
    return lo, hi


def parse_budget(text: str, what: str = "--budget") -> int:
    """`what` given as a token count, a positive int up to 2^31 - 1 (an int32 offset's reach)."""
    try:
        value = int(text)
    except ValueError:
        raise _ArgumentValueError(f"{what} must be a positive int like 256, got {text!r}") from None
    if not 1 <= value <= MAX_BUDGET:
        raise _ArgumentValueError(f"{what} must be within 1..{MAX_BUDGET}, got {text}")
    return value


def writable_output(path: str | os.PathLike[str], what: str) -> Path:
    """`path` (option `what`) made ready to write before any work: its folder created as `-o` does, then
    checked to be a writable folder, and the path not a folder itself. ValueError naming the path if not."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write {what} {str(path)!r}: cannot make its folder "
                         f"({error.strerror or error})") from None
    if path.is_dir():
        raise ValueError(f"cannot write {what} {str(path)!r}: it is a folder; give a file path")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {what} {str(path)!r}: permission denied")
    return path
