"""`import glmip` alone: which subpackages it reaches as attributes and what it leaves unimported.

Each check runs in a fresh interpreter, since this test session has long since imported torch and
every glmip module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter rooted at this checkout; it prints one JSON line."""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_glmip_imports_neither_torch_nor_tifffile_nor_its_subpackages():
    report = fresh("import json, sys, glmip\n"
                   "print(json.dumps({'file': glmip.__file__, 'loaded': sorted(m for m in sys.modules if m in "
                   "('torch', 'tifffile', 'tiffslide', 'webdataset', 'glmip.data', 'glmip.slides', 'glmip.nn', "
                   "'glmip.models'))}))")
    assert report["file"] == str(ROOT / "glmip" / "__init__.py")
    assert report["loaded"] == []


def test_subpackages_are_attributes_after_import_glmip():
    report = fresh("import json, sys, glmip\n"
                   "before = 'torch' in sys.modules\n"
                   "reader = glmip.data.read_shards\n"
                   "print(json.dumps({'before': before, 'reader': reader.__module__, 'torch': 'torch' in sys.modules,"
                   " 'slides': glmip.slides.group_by_region.__module__, 'nn': glmip.nn.LodPatchEmbed.__module__,"
                   " 'models': glmip.models.TinyViT.__module__, 'listed': sorted({'data', 'nn', 'slides'} & "
                   "set(dir(glmip)))}))")
    assert report == {"before": False, "reader": "glmip.data.shards", "torch": True,
                      "slides": "glmip.slides.regions", "nn": "glmip.nn", "models": "glmip.models",
                      "listed": ["data", "nn", "slides"]}


def test_an_unknown_attribute_is_still_an_attribute_error():
    report = fresh("import json, glmip\n"
                   "try:\n    glmip.datas\n"
                   "except AttributeError as error:\n    print(json.dumps({'error': str(error)}))")
    assert report == {"error": "module 'glmip' has no attribute 'datas'"}
