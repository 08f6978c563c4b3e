"""The torch peer of `bench.pipeline` samples what glmip samples: the same tokens of the same layouts,
from an avg_pool2d pyramid against glmip's box pyramid, within 2 LSB of 8 bits (levels stored as uint8
by glmip, kept in float by the peer) — so the benchmark compares equal work."""

from __future__ import annotations

import numpy as np
import torch

import glmip
from bench.batch import torch_levels
from bench.pipeline import peer_tokens


def test_the_peer_tokens_equal_glmips_on_the_same_layouts(ctx):
    rng = np.random.default_rng(0)
    host = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    maps = [glmip.gaze((64, 64), (0.2 + 0.3 * b, 0.5)) for b in range(3)]
    batch = glmip.tokenize(host, maps, 24, 4, context=ctx, method="box")
    levels = torch_levels(torch.from_numpy(host).permute(0, 3, 1, 2).float() / 255.0)
    peer = peer_tokens(levels, list(batch.layouts), 4)
    assert peer.shape == batch.tokens.shape
    assert float((peer - batch.tokens).abs().max()) <= 2 / 255
    assert len({float(level) for level in batch.levels}) > 1  # several levels were compared
