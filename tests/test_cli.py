"""The `glmip` command: info and build, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glmip.cli", *args], capture_output=True, text=True, timeout=300)


def test_info_json():
    result = run("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["max_texture_size"] > 0 and "interop" in info


def test_build_writes_a_contact_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    result = run("build", "--method", "box", "-v", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "renderer" in result.stdout and "10 levels" in result.stdout
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[0] >= 400 and sheet.shape[1] > 600
    assert sheet[:400, :600].std() > 10, "level 0 is not blank"


def test_build_reports_bad_input(tmp_path):
    result = run("build", str(tmp_path / "missing.png"), "-q")
    assert result.returncode == 2
    assert "image file not found" in result.stderr
