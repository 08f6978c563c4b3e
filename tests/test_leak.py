"""Host memory over many Context create/close cycles: glmip's own share stays under a stated bound.

moderngl/EGL keep about 39 KiB per context themselves on Mesa (measured here as the baseline in
the same process); what glmip adds on top is what these tests bound.
"""

from __future__ import annotations

import gc
import os

import moderngl
import numpy as np
import pytest

import glmip

CYCLES = 300
WARM_UP = 30
GLMIP_SHARE_BOUND_KIB = 1.0  # per cycle, above moderngl's own baseline


def rss_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth_per_cycle_kib(cycle) -> float:
    for _ in range(WARM_UP):
        cycle()
    gc.collect()
    before = rss_bytes()
    for _ in range(CYCLES):
        cycle()
    gc.collect()
    return (rss_bytes() - before) / CYCLES / 1024


def bare_moderngl() -> None:
    moderngl.create_context(standalone=True, backend="egl", require=450).release()


def glmip_context() -> None:
    glmip.Context().close()


def glmip_context_with_a_pyramid() -> None:
    with glmip.Context() as context:
        context.pyramid(np.zeros((8, 8, 3), np.uint8))


@pytest.fixture(scope="module")
def baseline() -> float:
    """moderngl's own growth per create/release cycle, KiB (about 39 on Mesa llvmpipe)."""
    return growth_per_cycle_kib(bare_moderngl)


def test_context_create_close_adds_under_the_bound_to_moderngls_own_growth(baseline):
    ours = growth_per_cycle_kib(glmip_context)
    assert ours - baseline < GLMIP_SHARE_BOUND_KIB, (ours, baseline)


@pytest.mark.xfail(strict=True, reason="moderngl 5.13's external_texture takes a reference to its context that "
                   "release() never drops, so a context that wrapped a pyramid's texture is never freed "
                   "(~15 KiB a context); strict: turns red once fixed, then drop this mark")
def test_context_with_a_pyramid_adds_under_the_bound(baseline):
    ours = growth_per_cycle_kib(glmip_context_with_a_pyramid)
    assert ours - baseline < GLMIP_SHARE_BOUND_KIB, (ours, baseline)
