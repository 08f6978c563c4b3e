"""One GL context for the whole session, checked for GL errors around every test that uses it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

import glmip

# CI replays the same examples every run, so a red run is reproducible from its log.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Tolerances the tests hold, in LSBs of the format (float32: absolute, scaled by the data's range).
TOLERANCE_LSB = {"box": 1, "lanczos": 1, "hardware_step": 1}
FLOAT_TOLERANCE = 2e-5


@pytest.fixture(scope="session")
def session_context():
    with glmip.Context() as ctx:
        yield ctx


@pytest.fixture
def ctx(session_context):
    session_context.gl.error  # noqa: B018 - reading clears a stale error
    yield session_context
    if not session_context.closed:
        assert session_context.gl.error == "GL_NO_ERROR"


def random_image(rng: np.random.Generator, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """Random pixels over the whole range of `dtype` (float32: [0, 1])."""
    if dtype == "float32":
        return rng.random((height, width, channels), dtype=np.float32)
    info = np.iinfo(dtype)
    return rng.integers(0, int(info.max) + 1, size=(height, width, channels), dtype=dtype)


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference in LSBs (integer formats) or in value (float32)."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def tolerance(method: str, dtype: str, image: np.ndarray) -> float:
    if dtype == "float32":
        return FLOAT_TOLERANCE * max(1.0, float(np.abs(image).max()))
    return TOLERANCE_LSB[method]
