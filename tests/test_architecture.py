"""The house rules, checked on the code: no import cycles among glmip's modules, the GL layer
imports no stage, the oracle imports nothing it checks, the viewer uses only the public API."""

from __future__ import annotations

import ast
from pathlib import Path

import glmip

PACKAGE = Path(glmip.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every glmip module `name` imports, anywhere in the file (function level and TYPE_CHECKING too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "glmip")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "glmip":
                continue
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycles_among_glmip_modules():
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_gl_layer_imports_no_stage():
    for name in MODULES:
        if name.startswith("glmip.gl"):
            above = {m for m in imports_of(name) if not m.startswith("glmip.gl") and m != "glmip.errors"}
            assert not above, f"{name} imports stages {sorted(above)}"


def test_the_reference_imports_nothing_it_checks():
    allowed = {"glmip.levels", "glmip.gl.formats", "glmip.layout"}
    assert imports_of("glmip.reference") <= allowed


def test_the_viewer_uses_only_the_public_api():
    public_modules = {"glmip", "glmip.pictures", "glmip.reference"}
    for name in MODULES:
        if name.startswith("glmip.viewer"):
            outside = {m for m in imports_of(name) if not m.startswith("glmip.viewer")}
            assert outside <= public_modules, f"{name} imports glmip internals {sorted(outside - public_modules)}"
            source = MODULES[name].read_text()
            for node in ast.walk(ast.parse(source)):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "glmip"
                        and not node.attr.startswith("__")):
                    assert node.attr in glmip.__all__ or f"glmip.{node.attr}" in public_modules, \
                        f"{name} uses glmip.{node.attr}, which is not in glmip.__all__"


def test_public_modules_declare_their_surface():
    for name, path in MODULES.items():
        if any(part.startswith("_") and part != "__init__" for part in name.split(".")):
            continue
        tree = ast.parse(path.read_text())
        declared = any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
                       for node in tree.body)
        assert declared, f"{name} has no __all__"
