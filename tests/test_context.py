"""Context: creation, capability report, life cycle, device choice, repeated create/close."""

from __future__ import annotations

import numpy as np
import pytest

import glmip


def test_info_reports_the_device(ctx):
    info = ctx.info()
    for key in ("renderer", "vendor", "gl_version", "max_texture_size", "max_anisotropy", "compute_shaders",
                "interop", "egl_devices"):
        assert key in info
    assert info["version_code"] >= 450 and info["compute_shaders"] is True
    assert info["max_texture_size"] >= 4096
    assert info["max_anisotropy"] >= 1.0
    assert info["interop"]["readback"]["available"] is True
    for path in info["interop"].values():
        assert isinstance(path["why"], str) and path["why"]


def test_context_manager_closes():
    with glmip.Context() as ctx:
        assert not ctx.closed
    assert ctx.closed
    ctx.close()  # idempotent
    with pytest.raises(RuntimeError, match="Context is closed"):
        ctx.info()


def test_bad_device_arguments():
    with pytest.raises(TypeError, match="device must be"):
        glmip.Context(device="gpu0")
    with pytest.raises(TypeError, match="device must be"):
        glmip.Context(device=-1)
    with pytest.raises(ValueError, match="does not exist"):
        glmip.Context(device=4096)


def test_two_contexts_each_work_after_the_other_closes(ctx):
    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    with glmip.Context() as other, other.pyramid(image, method="box") as p:
        assert p.level(3).shape == (1, 1, 1)
    with ctx.pyramid(image, method="box") as p:  # the session context is made current again
        assert int(p.level(3)[0, 0, 0]) == round(float(image.mean()))


def test_thousand_pyramid_cycles_release_gl_objects(ctx):
    image = np.zeros((32, 32, 4), np.uint8)
    before = len(ctx._owned)  # the shared context may hold other modules' fixtures' pyramids
    for method in ("hardware", "box"):
        for _ in range(500):
            ctx.pyramid(image, method=method).close()
    assert len(ctx._owned) == before
