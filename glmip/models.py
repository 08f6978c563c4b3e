"""Small plain-torch models that run glmip tokens end to end: the examples' and benchmarks' one ViT.

`TinyViT` is a pre-norm transformer encoder over already embedded tokens; `TokenClassifier` puts
`glmip.nn.LodPatchEmbed` (sin-cos position, one class token) in front of it and a linear head on the
class token. Weights are random unless loaded: these exist to exercise and time the token path, not
to classify anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .nn import LodPatchEmbed

__all__ = ["TinyViT", "TokenClassifier"]


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention (torch SDPA) + a GELU MLP, both residual.

    Shapes: x (B, L, D) -> (B, L, D); `attend` None or (B, 1, 1, L) bool, True = that key may be attended.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small pre-norm ViT encoder: `depth` `Block`s and a final LayerNorm over embedded tokens.

    Shapes:
        x:      (B, L, D) float, D = `dim` (embedded tokens, prefix tokens included).
        valid:  None (every token is real) or (B, L) bool, True = a real token, False = padding; padding
                keys are never attended, and what comes out at padding rows is meaningless.
        output: (B, L, D), the normed features.

    Convention:
        `valid` is True for real tokens (the opposite of `nn.TransformerEncoder`'s `src_key_padding_mask`,
        True = padding). Every row needs at least one real token.
    """

    def __init__(self, dim: int = 192, depth: int = 4, heads: int = 3, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if min(dim, depth, heads) < 1:
            raise ValueError(f"dim, depth and heads must be positive, got {dim}, {depth}, {heads}")
        self.dim = dim
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, L, {self.dim}), got {tuple(x.shape)}")
        attend = None
        if valid is not None:
            if valid.dtype != torch.bool or tuple(valid.shape) != tuple(x.shape[:2]):
                raise ValueError(f"valid must be a {tuple(x.shape[:2])} bool tensor, got "
                                 f"{tuple(valid.shape)} {valid.dtype}")
            attend = valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, attend)
        return self.norm(x)


class TokenClassifier(nn.Module):
    """glmip tokens -> `LodPatchEmbed` (sin-cos position, one class token) -> `TinyViT` -> linear head.

    Shapes: tokens (N, C, P, P) with one `TokenLayout`, or a list of them with a list of layouts (one per
    image, any token counts) -> (logits (B, classes), features (B, 1 + N_max, dim)). Images in a batch are
    padded to the longest; padding is masked out of attention, so an image's logits do not depend on the
    others in its batch.
    """

    def __init__(self, patch: int = 16, channels: int = 3, dim: int = 192, depth: int = 4, heads: int = 3,
                 classes: int = 1000) -> None:
        super().__init__()
        self.embed = LodPatchEmbed(patch, channels, dim, position="sincos", prefix_tokens=1)
        self.encoder = TinyViT(dim, depth, heads)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor | Sequence[torch.Tensor],
                layouts: Any | Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x, valid = self.embed(tokens, layouts)
        features = self.encoder(x, valid if x.shape[0] > 1 else None)  # one image has no padding
        return self.head(features[:, 0]), features
