"""The README is the front page: every ```python block in it runs as written, each in a fresh Python in an
empty folder (so the tour cannot rot), it stays short, and it speaks of no issue numbers.

A block that cannot run on a machine without a GPU or without the user's files belongs in docs/, or is
fenced with another language (`text`, `bash`) and says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FRONT_PAGE_LINES = 250
BLOCK_TIMEOUT_S = 300
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
ISSUE_NUMBER = re.compile(r"\bissues?\b|#\d+\b", re.IGNORECASE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python fenced block of a Markdown text."""
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_python_blocks_are_found():
    """The fence pattern sees the tour (a README without python blocks would make the test below vacuous)."""
    assert len(BLOCKS) >= 3, f"expected the README's tour, found {len(BLOCKS)} ```python blocks"
    assert python_blocks("text\n```python\nprint(1)\n```\n```bash\nls\n```\n") == [(2, "print(1)\n")]


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, tmp_path: Path):
    """Each block in its own process, in an empty folder, with this checkout's glmip first on the path."""
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, (f"README.md line {line}: the block exited {result.returncode}\n"
                                    f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= FRONT_PAGE_LINES, f"README.md has {lines} lines; guides and tables belong in docs/"


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_no_issue_numbers_in_user_facing_text(page: Path):
    """Users cannot see the project's issue tracker: README and docs pages name no issues."""
    lines = page.read_text(encoding="utf-8").splitlines()
    hits = [f"{page.name}:{n}: {text.strip()}" for n, text in enumerate(lines, 1) if ISSUE_NUMBER.search(text)]
    assert not hits, "\n".join(hits)


def test_readme_links_resolve():
    """The front page's links into docs/ (and its picture) point at files that exist."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    local = [t.split("#")[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert local, "the README links into docs/"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
