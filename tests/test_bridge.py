"""The torch bridge: GL data into tensors without intermediate copies, and the path it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmip.bridge import BridgePath, buffer_to_tensor, level_to_tensor, writable_view


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int64, torch.bfloat16, torch.float16])
def test_buffer_round_trip_every_dtype(ctx, dtype):
    source = (torch.arange(2 * 3 * 5) % 97).to(dtype).reshape(2, 3, 5)
    data = source.contiguous().view(torch.uint8).numpy().tobytes()
    buffer = ctx.gl.buffer(b"\0" * 16 + data)
    try:
        transfer = buffer_to_tensor(buffer, (2, 3, 5), dtype, offset=16)
    finally:
        buffer.release()
    assert transfer.path is BridgePath.READBACK and transfer.tensor.dtype == dtype
    assert torch.equal(transfer.tensor, source)


def test_read_lands_in_the_tensors_own_memory():
    tensor = torch.zeros(4, dtype=torch.float32)
    view = writable_view(tensor)
    view[:4] = np.float32(2.5).tobytes()
    assert tensor[0].item() == 2.5, "the view aliases the tensor, no copy in between"
    with pytest.raises(ValueError, match="contiguous CPU"):
        writable_view(torch.zeros(4, 4).t())


def test_level_to_tensor_equals_level(ctx):
    image = np.random.default_rng(0).integers(0, 65536, (17, 23, 2), dtype=np.uint16)
    with ctx.pyramid(image, method="box") as p:
        for i in range(p.levels):
            transfer = level_to_tensor(p, i)
            assert transfer.path is BridgePath.READBACK
            np.testing.assert_array_equal(transfer.tensor.numpy(), p.level(i))
        with pytest.raises(ValueError, match="levels 0..4"):
            level_to_tensor(p, 5)


def test_bad_requests(ctx):
    buffer = ctx.gl.buffer(reserve=64)
    try:
        with pytest.raises(ValueError, match="do not fit"):
            buffer_to_tensor(buffer, (17,))
        with pytest.raises(TypeError, match="torch.dtype"):
            buffer_to_tensor(buffer, (4,), np.float32)
        with pytest.raises(ValueError, match="'cpu' or a CUDA device"):
            buffer_to_tensor(buffer, (4,), device="meta")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="no CUDA device"):
                buffer_to_tensor(buffer, (4,), device="cuda")
    finally:
        buffer.release()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned read-back into CUDA needs a CUDA device")
def test_pinned_readback_to_cuda(ctx):
    buffer = ctx.gl.buffer(np.arange(8, dtype=np.float32))
    try:
        transfer = buffer_to_tensor(buffer, (8,), device="cuda")
    finally:
        buffer.release()
    assert transfer.path is BridgePath.PINNED_READBACK and transfer.tensor.is_cuda
    assert torch.equal(transfer.tensor.cpu(), torch.arange(8, dtype=torch.float32))
