"""glmip.models: the one small ViT the examples and benchmarks share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glmip
from glmip.models import TinyViT, TokenClassifier


def test_tiny_vit_keeps_shape_and_ignores_invalid_tokens():
    torch.manual_seed(0)
    vit = TinyViT(dim=16, depth=2, heads=2).eval()
    x = torch.randn(2, 7, 16)
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.inference_mode():
        out = vit(x, valid)
        alone = vit(x[1:, :4])
        scrambled = x.clone()
        scrambled[1, 4:] = 1e3 * torch.randn(3, 16)  # what padding holds must not matter
        again = vit(scrambled, valid)
    assert out.shape == (2, 7, 16)
    assert torch.allclose(out[1, :4], alone[0], atol=1e-5)
    assert torch.allclose(again[1, :4], out[1, :4], atol=1e-5)
    assert torch.allclose(out[0], vit(x[:1])[0], atol=1e-5), "an all-valid mask equals no mask"


def test_tiny_vit_rejects_bad_shapes_and_masks():
    vit = TinyViT(dim=8, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"x must be \(B, L, 8\), got \(2, 3\)"):
        vit(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="valid must be a"):
        vit(torch.zeros(1, 3, 8), torch.ones(1, 3))  # not bool
    with pytest.raises(ValueError, match=r"valid must be a \(1, 3\) bool tensor"):
        vit(torch.zeros(1, 3, 8), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of heads"):
        TinyViT(dim=10, heads=3)
    with pytest.raises(ValueError, match="positive"):
        TinyViT(depth=0)


def test_token_classifier_gives_each_image_the_logits_it_gets_alone():
    torch.manual_seed(0)
    model = TokenClassifier(patch=4, dim=16, depth=1, heads=2, classes=5).eval()

    def layout(n: int) -> glmip.TokenLayout:  # a row of n level-0 tokens
        centres = np.arange(n) * 4.0 + 2
        return glmip.TokenLayout(cx=centres, cy=np.full(n, 2.0), size=np.full(n, 4.0), level=np.zeros(n), patch=4,
                                 image_size=(4 * n, 4))

    tokens = [torch.rand(5, 3, 4, 4), torch.rand(2, 3, 4, 4)]
    layouts = [layout(5), layout(2)]
    with torch.inference_mode():
        logits, features = model(tokens, layouts)
        alone, _ = model(tokens[1], layouts[1])
    assert logits.shape == (2, 5) and features.shape == (2, 6, 16)
    assert torch.allclose(alone[0], logits[1], atol=1e-5)
