"""Host memory over many Context create/close cycles: glmip's own share stays under a stated bound.

moderngl/EGL keep about 39 KiB per context themselves on Mesa (measured here as the baseline in
the same process); what glmip adds on top is what these tests bound. Each measurement runs in a
fresh interpreter, so the heap other tests left behind does not blur RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CYCLES = 300
WARM_UP = 30
GLMIP_SHARE_BOUND_KIB = 1.0  # per cycle, above moderngl's own baseline
PYRAMID_CYCLE_BOUND_KIB = 32.0  # per context + box pyramid cycle: moderngl's ~15 KiB leak (below) and margin

MEASURE = """
import gc, json, os, sys
import moderngl, numpy as np
import glmip

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def growth(cycle, cycles, warm_up):
    for _ in range(warm_up):
        cycle()
    gc.collect()
    before = rss()
    for _ in range(cycles):
        cycle()
    gc.collect()
    return (rss() - before) / cycles / 1024

def bare():
    moderngl.create_context(standalone=True, backend="egl", require=450).release()

def context():
    glmip.Context().close()

def with_pyramid():
    with glmip.Context() as c:
        c.pyramid(np.zeros((8, 8, 3), np.uint8))

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)

def with_box_pyramid():
    with glmip.Context() as c, c.pyramid(IMAGE, method="box") as p:
        p.level(1)

cycles, warm_up, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ours = growth({"context": context, "pyramid": with_pyramid, "box": with_box_pyramid}[kind], cycles, warm_up)
print(json.dumps({"baseline": growth(bare, cycles, warm_up), "glmip": ours}))
"""


def measure(kind: str) -> dict[str, float]:
    """KiB per create/close cycle: bare moderngl and glmip's `kind` of cycle, in one fresh process."""
    result = subprocess.run([sys.executable, "-c", MEASURE, str(CYCLES), str(WARM_UP), kind], capture_output=True,
                            text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_context_create_close_adds_under_the_bound_to_moderngls_own_growth():
    kib = measure("context")
    assert kib["glmip"] - kib["baseline"] < GLMIP_SHARE_BOUND_KIB, kib


def test_context_with_a_box_pyramid_grows_no_more_than_moderngls_known_leak():
    """A context that builds, reads and closes a box pyramid each cycle: growth bounded by moderngl's known
    per-context leak (see the xfail below) plus a small margin, not by tens of MiB."""
    kib = measure("box")
    assert kib["glmip"] - kib["baseline"] < PYRAMID_CYCLE_BOUND_KIB, kib


@pytest.mark.xfail(strict=True, reason="moderngl 5.13's external_texture takes a reference to its context that "
                   "release() never drops, so a context that wrapped a pyramid's texture is never freed "
                   "(~15 KiB a context); strict: turns red once fixed, then drop this mark")
def test_context_with_a_pyramid_adds_under_the_bound():
    kib = measure("pyramid")
    assert kib["glmip"] - kib["baseline"] < GLMIP_SHARE_BOUND_KIB, kib
