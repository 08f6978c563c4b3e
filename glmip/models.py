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

from .nn import LodPatchEmbed, Position, sincos_position

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
    image, any token counts), or a `TokenBatch` with None -> (logits (B, classes), features (B, 1 + N_max, dim)).
    Images in a batch are padded to the longest; padding is masked out of attention, so an image's logits do
    not depend on the others in its batch. `forward_padded` runs the same weights on an already padded batch
    of fixed shape (a training step with no host work, one graph for `torch.compile`).
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

    def forward_padded(self, tokens: torch.Tensor, levels: torch.Tensor, positions: torch.Tensor,
                       valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model on a padded batch: no `TokenBatch`, no layouts, nothing read back to the host.

        Shapes:
            tokens:    (B, L, C, P, P) float, the values `forward` takes (e.g. [0, 1]).
            levels:    (B, L) float, each token's level (fractional allowed).
            positions: (B, L, 2) float, each token's centre x, y in level-0 pixels.
            valid:     None (every token real) or (B, L) bool, True = a real token.
            output:    (logits (B, classes), features (B, 1 + L, dim)).

        Convention:
            Row b holds image b's tokens first, in its layout's order, then padding (any finite values, masked
            out of attention): the logits equal `forward`'s on the `TokenBatch` of the real tokens, whatever L.
            Shapes are checked; values are not (that would read the device): levels are clamped into
            0..levels-1 as compiled `forward` does.
        """
        embed = self.embed
        if not tokens.is_floating_point() or tokens.ndim != 5 or tuple(tokens.shape[2:]) != (
                embed.in_channels, embed.patch, embed.patch):
            raise ValueError(f"tokens must be a float (B, L, {embed.in_channels}, {embed.patch}, {embed.patch}) "
                             f"tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        batch, length = tokens.shape[:2]
        if tuple(levels.shape) != (batch, length) or tuple(positions.shape) != (batch, length, 2):
            raise ValueError(f"levels must be ({batch}, {length}) and positions ({batch}, {length}, 2) for tokens "
                             f"{tuple(tokens.shape)}, got {tuple(levels.shape)} and {tuple(positions.shape)}")
        if valid is not None and (valid.dtype != torch.bool or tuple(valid.shape) != (batch, length)):
            raise ValueError(f"valid must be None or a ({batch}, {length}) bool tensor, got "
                             f"{tuple(valid.shape)} {valid.dtype}")
        if embed.position_kind is not Position.SINCOS:
            raise ValueError(f"forward_padded encodes sin-cos positions; this embedding's are "
                             f"{embed.position_kind.value!r}")
        reference = embed.proj.weight
        flat = tokens.reshape(batch * length, *tokens.shape[2:]).to(reference.dtype)
        normalised = (flat * embed.input_scale - embed.mean.to(flat.dtype)) / embed.std.to(flat.dtype)
        x = embed.proj(normalised.flatten(1))
        x = x + embed.level_embedding(levels.reshape(-1))
        where = (positions.reshape(-1, 2).double() / embed.patch - 0.5).float()
        x = x + sincos_position(where, embed.dim).to(x.dtype)
        x = torch.cat([embed.prefix.expand(batch, -1, -1).to(x.dtype), x.view(batch, length, -1)], 1)
        if valid is not None:
            valid = torch.cat([valid.new_ones((batch, embed.prefix_tokens)), valid], 1)
        features = self.encoder(x, valid)
        return self.head(features[:, 0]), features
