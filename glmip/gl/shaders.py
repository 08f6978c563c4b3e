"""Loads GLSL sources from `shaders/`: resolves `#include "file"`, injects defines and `#line`.

Shaders ship inside the wheel as `glmip/_shaders/`; in a source checkout they are read
from the repository's top-level `shaders/` folder. Anything missing fails loudly.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["shader_dir", "source"]

GLSL_VERSION = "#version 450 core"
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*(//.*)?$')


def shader_dir() -> Path:
    """The folder holding glmip's shader files (packaged copy first, then the checkout)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_shaders", package.parent / "shaders"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"glmip's shader folder is missing: looked in {package / '_shaders'} "
                            f"and {package.parent / 'shaders'}")


@cache
def _read(name: str) -> str:
    path = shader_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"shader file {name!r} not found in {shader_dir()}")
    return path.read_text()


def _expand(name: str, file_number: int, seen: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The lines of `name` with includes expanded, and the file names in `#line` numbering order."""
    if name in seen:
        raise ValueError(f"shader include cycle: {' -> '.join(seen + (name,))}")
    files = [name]
    out = [f"#line 1 {file_number}"]
    for number, line in enumerate(_read(name).splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match is None:
            out.append(line)
            continue
        sub_lines, sub_files = _expand(match.group(1), file_number + len(files), seen + (name,))
        out.extend(sub_lines)
        files.extend(sub_files)
        out.append(f"#line {number + 1} {file_number}")
    return out, files


def source(name: str, defines: dict[str, object] | None = None) -> str:
    """Full GLSL source of shader file `name` with `defines` (name -> value) prepended.

    `#line` directives number the files in include order (0 = `name` itself) so compiler
    errors point at the right file and line.
    """
    header = [GLSL_VERSION]
    for key, value in sorted((defines or {}).items()):
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise ValueError(f"shader define names are upper-case identifiers, got {key!r}")
        header.append(f"#define {key} {value}")
    lines, files = _expand(name, 0, ())
    legend = "// files: " + ", ".join(f"{i}={f}" for i, f in enumerate(files))
    return "\n".join(header + [legend] + lines) + "\n"
