"""glmip across processes: a Context inherited through fork refuses to run, a Context made in a
forked (or spawned) DataLoader worker works, and triton/timm/torch.compile load after a Context.

Every child is bounded by a timeout, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import glmip

CHILD_TIMEOUT_S = 120
SIZES = [(37, 53), (64, 64), (21, 90), (48, 33)]  # (height, width), odd and even


def _image(index: int) -> np.ndarray:
    height, width = SIZES[index]
    return np.random.default_rng(100 + index).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _relevance(index: int) -> np.ndarray:
    height, width = SIZES[index]
    yy, xx = np.mgrid[0:height, 0:width]
    return np.exp(-((xx - width * 0.3) ** 2 + (yy - height * 0.6) ** 2) / (2 * (0.2 * width) ** 2)).astype(np.float32)


def _pyramid_and_tokens(context: glmip.Context, index: int) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Level 1 of image `index`'s pyramid, its tokens under a relevance-budgeted layout, and that layout's levels."""
    height, width = SIZES[index]
    layout = glmip.allocate(_relevance(index), budget=12, patch=8, image_size=(width, height))
    with context.pyramid(_image(index)) as pyramid:
        return pyramid.level(1), pyramid.tokens(layout), np.asarray(layout.level)


class PyramidDataset(torch.utils.data.Dataset):
    """Builds a pyramid and tokens per item on a glmip Context made lazily in the process that runs
    it (a DataLoader worker), never on one inherited from the parent."""

    def __init__(self) -> None:
        self._context: glmip.Context | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(SIZES)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, torch.Tensor, np.ndarray]:
        if self._pid != os.getpid():
            self._context, self._pid = glmip.Context(), os.getpid()
        return (os.getpid(), *_pyramid_and_tokens(self._context, index))


def _run_in_fork(target, *args) -> object:
    """`target(*args)` in a forked child; its result, or the name of the exception it raised."""
    fork = multiprocessing.get_context("fork")
    receive, send = fork.Pipe(duplex=False)

    def child() -> None:  # plain pickle: multiprocessing's would pass tensors as handles into this short-lived child
        try:
            send.send_bytes(pickle.dumps(("result", target(*args))))
        except BaseException as error:  # noqa: BLE001 - the parent asserts on it
            send.send_bytes(pickle.dumps(("error", f"{type(error).__name__}: {error}")))

    process = fork.Process(target=child)
    process.start()
    try:
        assert receive.poll(CHILD_TIMEOUT_S), f"the forked child hung for {CHILD_TIMEOUT_S} s"
        return pickle.loads(receive.recv_bytes())
    finally:
        process.join(CHILD_TIMEOUT_S)
        if process.is_alive():
            process.kill()


def test_inherited_context_raises_in_forked_child(ctx):
    """The parent's Context, live and with llvmpipe work done, raises ForkedContextError in a fork
    (it would hang there); its pyramid does too; the parent's Context still works afterwards."""
    level1, tokens, _ = _pyramid_and_tokens(ctx, 0)
    with ctx.pyramid(_image(1)) as pyramid:
        for use in (lambda: ctx.pyramid(_image(0)), lambda: pyramid.level(0), lambda: ctx.gl):
            kind, message = _run_in_fork(use)
            assert kind == "error" and message.startswith("ForkedContextError:"), message
            assert "forked" in message and "glmip.Context()" in message
    again_level1, again_tokens, _ = _pyramid_and_tokens(ctx, 0)
    assert np.array_equal(again_level1, level1) and torch.equal(again_tokens, tokens)


def test_new_context_in_forked_child_equals_parent(ctx):
    """A new Context in a fork of a process with a live llvmpipe Context: same pyramid and tokens."""
    expected = _pyramid_and_tokens(ctx, 2)
    kind, result = _run_in_fork(lambda: _pyramid_and_tokens(glmip.Context(), 2))
    assert kind == "result", result
    for got, want in zip(result, expected, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_fork_of_a_fork_with_contexts_in_both_raises(ctx):
    """Parent and child each initialised a display (device, surfaceless); the grandchild has none of
    its own left to open, and says so instead of hanging."""
    def child() -> tuple[object, tuple[int, ...]]:
        glmip.Context().close()
        return _run_in_fork(glmip.Context), _pyramid_and_tokens(glmip.Context(), 3)[1].shape

    ctx.gl  # noqa: B018 - the parent's Context is live and current when it forks
    kind, value = _run_in_fork(child)
    assert kind == "result", value
    grandchild, shape = value
    assert shape[1:] == (3, 8, 8), shape
    assert grandchild[0] == "error" and grandchild[1].startswith("ForkedContextError:"), grandchild
    assert "inherited every EGL display" in grandchild[1]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers_with_their_own_context(ctx, start_method):
    """DataLoader(num_workers=2) whose workers each make a Context lazily, while the parent holds a live
    one: every item equals the single-process result, and both workers did work."""
    expected = [_pyramid_and_tokens(ctx, index) for index in range(len(SIZES))]
    loader = torch.utils.data.DataLoader(PyramidDataset(), batch_size=None, num_workers=2,
                                         multiprocessing_context=start_method, timeout=CHILD_TIMEOUT_S)
    items = list(loader)
    assert len(items) == len(SIZES)
    assert len({pid for pid, *_ in items}) == 2 and os.getpid() not in {pid for pid, *_ in items}
    for (_, level1, tokens, levels), (want_level1, want_tokens, want_levels) in zip(items, expected, strict=True):
        assert np.array_equal(levels, want_levels)
        assert np.array_equal(level1, want_level1)
        assert torch.equal(tokens, want_tokens)


CRASH_SCRIPT = textwrap.dedent("""
    import numpy as np
    import glmip

    context = glmip.Context()
    with context.pyramid(np.zeros((16, 16, 3), np.uint8)) as pyramid:
        pyramid.level(1)
    import triton
    import torch
    import torch._dynamo
    import timm

    double = torch.compile(lambda x: torch.sin(x) * 2 + 1)
    x = torch.linspace(-3, 3, 17)
    assert torch.allclose(double(x), torch.sin(x) * 2 + 1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3)
    print("ok", triton.__version__, timm.__version__, tuple(model(torch.zeros(1, 3, 32, 32)).shape))
""")


def test_triton_timm_and_torch_compile_after_a_context():
    """`glmip.Context()` then `import triton`, `torch._dynamo`, `timm` and a first torch.compile: no
    segfault (Mesa's libLLVM-15 is global; glmip preloads triton's LLVM before it). In a subprocess,
    so a crash fails this test instead of killing pytest."""
    for name in ("triton", "timm"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the integration stage, scripts/integration.sh, has it)")
    probe = subprocess.run([sys.executable, "-c", "import timm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"timm does not import here: {probe.stderr.strip().splitlines()[-1:]}")
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert result.stdout.startswith("ok "), result.stdout
    assert result.stdout.strip().endswith("(1, 3)"), result.stdout
