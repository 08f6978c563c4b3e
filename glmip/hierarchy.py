"""Hierarchical models fed by mip levels: `MipViT` (MViT-style stages, one a level) and `CrossScaleAttention`.

Both read the per-level grids of `PyramidBatch.grids` (`glmip.grids.LevelGrid`), dense or sparse, and
use no GL. A stage is a grid of one level: its cells are embedded with the stage's own patch
embedding, so the model sees the pyramid as a hierarchy instead of one mixed sequence.

Convention:
    `valid` masks are True for real tokens (as `glmip.models.TinyViT`); padding tokens are never
    attended and never pooled, so an image's outputs do not depend on the other images of its batch.
    Cell (row, col) of level l + 1 is the parent of cells (2·row + i, 2·col + j), i, j in {0, 1}, of
    level l (the patch covers twice the level-0 pixels one level up); where odd level sizes leave a fine
    cell past the coarse grid, its parent is the last coarse cell of that row or column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models import Block
from .nn import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MipViT", "CrossScaleAttention", "sincos_positions", "pool_to_parents", "to_feature_map"]


def sincos_positions(positions: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """2-D sin-cos embedding of cell centres: positions (B, N, 2) (row, col) -> (B, N, dim) float32.

    The centre ((row + 0.5)·scale, (col + 0.5)·scale) is embedded with dim/4 frequencies per axis
    (1 / 10000^(k / (dim/4))), rows in the first half of the features, columns in the second. With
    `scale` = 2^s at stage s the centres are in units of the finest stage's cells, so one image place
    has one position at every stage. `dim` must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter))
    centres = (positions.to(torch.float32) + 0.5) * scale
    angles = centres[..., None] * frequencies  # (B, N, 2, quarter)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def pool_to_parents(x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, parent_positions: torch.Tensor,
                    parent_grid: torch.Tensor, parent_shape: tuple[int, int]) -> torch.Tensor:
    """The 2x pooling between stages: each parent cell takes the mean of its valid children.

    Shapes: x (B, N, D) child features, positions (B, N, 2) (row, col), valid (B, N) bool; parent_positions
    (B, M, 2) the cells of the next stage to fill (dense or sparse), parent_grid (B, 2) each image's
    (rows, cols) at that stage, parent_shape the batch's largest (rows, cols) (Python ints).
    Returns (B, M, D): the mean over the valid children of each parent, 0 where it has none (its cells were
    all dropped by a sparse stage) and at padding rows of `parent_positions`.
    """
    batch, _, dim = x.shape
    rows, cols = parent_shape
    slots = rows * cols
    row = torch.minimum(positions[..., 0].clamp(min=0) // 2, parent_grid[:, None, 0] - 1)
    col = torch.minimum(positions[..., 1].clamp(min=0) // 2, parent_grid[:, None, 1] - 1)
    index = torch.where(valid, row * cols + col, slots)  # invalid children go to a dump slot, never read
    sums = x.new_zeros(batch, slots + 1, dim).scatter_add(1, index[..., None].expand(-1, -1, dim), x)
    counts = x.new_zeros(batch, slots + 1, 1).scatter_add(1, index[..., None], torch.ones_like(x[..., :1]))
    means = sums / counts.clamp(min=1.0)
    parent_index = parent_positions[..., 0] * cols + parent_positions[..., 1]
    parent_index = torch.where(parent_positions[..., 0] >= 0, parent_index, slots)
    pooled = torch.gather(means, 1, parent_index[..., None].expand(-1, -1, dim))
    return pooled * (parent_positions[..., :1] >= 0).to(x.dtype)


def to_feature_map(x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                   shape: tuple[int, int]) -> torch.Tensor:
    """Per-cell features back on their grid, for conv consumers (an FPN): (B, N, D) -> (B, D, rows, cols).

    positions (B, N, 2) (row, col) and valid (B, N) as `LevelGrid`; shape = (rows, cols), Python ints (the
    batch's largest grid, `LevelGrid.shape`). Cells no valid token names (dropped by a sparse pyramid, or
    past a smaller image's grid) are 0; each cell is named at most once.
    """
    batch, _, dim = x.shape
    rows, cols = shape
    index = torch.where(valid, positions[..., 0] * cols + positions[..., 1], rows * cols)
    cells = x.new_zeros(batch, rows * cols + 1, dim).scatter(1, index[..., None].expand(-1, -1, dim), x)
    return cells[:, :-1].transpose(1, 2).reshape(batch, dim, rows, cols)


class MipViT(nn.Module):
    """A small hierarchical ViT over the grids of consecutive mip levels, fine to coarse as MViT.

    Stage s reads the grid of level l0 + s (`grids[s]`, e.g. `batch.grids([0, 1, 2, 3], 4)`: 56/28/14/7 at
    224²): its cells, values in [0, 1] normalised per channel by `mean` / `std` (ImageNet's by default, as
    `glmip.nn.LodPatchEmbed`; None for none), go through the stage's own patch embedding (one Linear over
    C·P·P values) plus a 2-D sin-cos position of the cell centre, and, from stage 1 on, a lateral projection
    (Linear) of the previous stage's output pooled 2x onto this stage's cells (`pool_to_parents`); then
    `depths[s]` transformer blocks of width `dims[s]` (channels grow per stage). The head is a linear layer
    on a LayerNorm of what `head` names:

    - "mean": the mean of the last (coarsest) stage's valid tokens;
    - "class": a class token carried through every stage, as MViT's: it joins stage 0's tokens, is
      projected (Linear) to each next stage's width and joins that stage's tokens, so its attention reads
      the kept fine cells directly, not only through the 2x mean poolings.

    Why a class token (the default): in the trained-reader study (read a 2-digit code from 128² scenes,
    docs/learning.md) the mean head read 0.160 exact with sparse fine stages, the class token 0.523 with
    the same stages (0.837 with a wider, deeper fine stage), against 0.790 for a plain ViT over 16
    mixed-level tokens: two mean poolings and a mean over the coarsest grid lose which glyph sat where.

    Why normalise: the patch embeddings are plain Linear layers, and raw [0, 1] values of a low-contrast
    image (std 0.12 in the trained-reader scenes) sit under the sin-cos positions; without the per-channel
    normalisation that study's MipViT stayed at chance loss for 24000 steps; with it, its training loss fell
    from 2.34 to 0.18 in 2500 steps on 3000 scenes (the plain ViT's, on dense patches: to 0.69).

    Why fine to coarse (not coarse to fine): it is MViT's order, where channels grow as resolution falls so
    each stage costs about the same; the fine stages, the expensive ones, are where a sparse pyramid saves
    work (keep only the relevant cells: `batch.grids(..., relevance=..., budget=...)`), and pooling a sparse
    set of fine cells into the next grid is well defined (mean of the kept children); the head then reads the
    coarsest grid, dense and covering the whole image, whose own embedding fills the cells whose children
    were dropped. Coarse to fine would end on the sparse fine stage, which sees only the kept cells.

    Shapes: `forward(grids)` with `grids` a sequence of `LevelGrid` (tokens (B, N_s, C, P, P), positions
    (B, N_s, 2), valid (B, N_s), grid (B, 2), shape) -> logits (B, classes). `stages(grids)` returns every
    stage's output (B, N_s, dims[s]) with its valid mask.
    """

    def __init__(self, patch: int = 4, channels: int = 3, dims: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] = (1, 1, 1, 1), heads: Sequence[int] = (1, 2, 4, 8), classes: int = 10,
                 mlp_ratio: float = 4.0, mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD, head: str = "class") -> None:
        super().__init__()
        if head not in ("mean", "class"):
            raise ValueError(f"head must be 'mean' or 'class', got {head!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std (or neither: no normalisation), got mean={mean}, std={std}")
        if mean is not None and (len(mean) != channels or len(std) != channels or min(std) <= 0):
            raise ValueError(f"mean and std need one value per channel ({channels}) and std > 0, got mean={mean}, "
                             f"std={std}")
        dims, depths, heads = list(dims), list(depths), list(heads)
        if not dims or len(dims) != len(depths) or len(dims) != len(heads):
            raise ValueError(f"dims, depths and heads need one entry per stage, got {dims}, {depths}, {heads}")
        if min(patch, channels, classes, *dims, *depths, *heads) < 1:
            raise ValueError(f"patch, channels, classes, dims, depths and heads must be positive, got patch={patch}, "
                             f"channels={channels}, classes={classes}, dims={dims}, depths={depths}, heads={heads}")
        bad = [d for d in dims if d % 4]
        if bad:
            raise ValueError(f"every stage width must be a multiple of 4 (its 2-D sin-cos position), got {bad[0]}")
        self.patch, self.channels, self.dims = patch, channels, dims
        self.embeds = nn.ModuleList(nn.Linear(channels * patch * patch, d) for d in dims)
        self.laterals = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.blocks = nn.ModuleList(nn.ModuleList(Block(d, h, mlp_ratio) for _ in range(n))
                                    for d, n, h in zip(dims, depths, heads, strict=True))
        self.head_kind = head
        if head == "class":
            self.class_token = nn.Parameter(torch.zeros(1, 1, dims[0]))
            nn.init.trunc_normal_(self.class_token, std=0.02)
            self.class_laterals = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], classes)
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def _check(self, grids: Sequence[Any]) -> None:
        if len(grids) != len(self.dims):
            raise ValueError(f"this MipViT has {len(self.dims)} stages and needs one grid per stage, got {len(grids)}")
        for s, grid in enumerate(grids):
            expected = (self.channels, self.patch, self.patch)
            if tuple(grid.tokens.shape[2:]) != expected:
                raise ValueError(f"grid {s} has tokens {tuple(grid.tokens.shape)}; this model needs (B, N, "
                                 f"{self.channels}, {self.patch}, {self.patch})")
            if s and grid.level != grids[s - 1].level + 1:
                raise ValueError(f"stage grids must be of consecutive levels, got levels "
                                 f"{[g.level for g in grids]}")

    def stages(self, grids: Sequence[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every stage's output (B, N_s, dims[s]) and valid mask (B, N_s), finest first (class token excluded)."""
        return self._run(grids)[0]

    def _run(self, grids: Sequence[Any]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """The stages' outputs and the class token after the last stage ((B, dims[-1]); None with head "mean")."""
        self._check(grids)
        outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        cls = None
        for s, grid in enumerate(grids):
            tokens = grid.tokens
            if self.normalise:
                tokens = (tokens - self.mean.to(tokens.dtype)) / self.std.to(tokens.dtype)
            tokens = tokens.flatten(2)
            x = self.embeds[s](tokens) + sincos_positions(grid.positions, self.dims[s], float(2 ** s))
            if s:
                previous, previous_valid = outputs[-1]
                pooled = pool_to_parents(previous, grids[s - 1].positions, previous_valid, grid.positions, grid.grid,
                                         grid.shape)
                x = x + self.laterals[s - 1](pooled)
            valid = grid.valid
            if self.head_kind == "class":
                cls = self.class_token.expand(len(x), -1, -1) if cls is None else self.class_laterals[s - 1](cls)
                x = torch.cat([cls.to(x.dtype), x], dim=1)
                valid = torch.cat([valid.new_ones(len(x), 1), valid], dim=1)
            attend = valid[:, None, None, :]
            for block in self.blocks[s]:
                x = block(x, attend)
            if self.head_kind == "class":
                cls, x = x[:, :1], x[:, 1:]
            outputs.append((x, grid.valid))
        return outputs, None if cls is None else cls[:, 0]

    def forward(self, grids: Sequence[Any]) -> torch.Tensor:
        outputs, cls = self._run(grids)
        if cls is not None:
            return self.head(self.norm(cls))
        x, valid = outputs[-1]
        weight = valid.to(x.dtype)[..., None]
        pooled = (x * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        return self.head(self.norm(pooled))


class CrossScaleAttention(nn.Module):
    """Tokens of one level attend to the tokens of other levels, the attention biased by each key's relevance.

    Pre-norm cross-attention (queries from `x`, keys and values from `context`) and a GELU MLP, both
    residual. The logit of query i on key j is q_i·k_j / sqrt(d) + gain · log(max(r_j, floor)): with gain 1
    (its initial value; learnt) the softmax weights are r_j·exp(q_i·k_j / sqrt(d)) normalised, i.e. each
    key's say is scaled by its relevance (a query's CLIP score map, a gaze, the detail criterion), and a
    key of relevance 0 is all but ignored (floor 1e-4).

    Shapes:
        x:             (B, Nq, D) tokens of one level (e.g. a `MipViT` stage projected to D).
        context:       (B, Nk, D) tokens of the other levels, concatenated (give them a level embedding first
                       if the levels should be told apart).
        context_valid: None or (B, Nk) bool, True = a real key; padding keys are never attended.
        relevance:     None (no bias) or (B, Nk) float in [0, 1], one value per context token
                       (`LevelGrid.relevance` where the grids were selected by relevance).
        output:        (B, Nq, D). Rows of padding queries are computed but meaningless.
    Every image needs at least one valid key.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, floor: float = 1e-4) -> None:
        super().__init__()
        if dim < 1 or heads < 1 or dim % heads:
            raise ValueError(f"dim {dim} must be a positive multiple of heads {heads}")
        if not 0.0 < floor < 1.0:
            raise ValueError(f"floor must be in (0, 1), got {floor}")
        self.heads, self.floor = heads, floor
        self.norm_query, self.norm_context, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gain = nn.Parameter(torch.ones(()))
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_valid: torch.Tensor | None = None,
                relevance: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        keys = context.shape[1]
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != dim:
            raise ValueError(f"context must be ({batch}, Nk, {dim}), got {tuple(context.shape)}")
        for name, value in (("context_valid", context_valid), ("relevance", relevance)):
            if value is not None and tuple(value.shape) != (batch, keys):
                raise ValueError(f"{name} must be ({batch}, {keys}), got {tuple(value.shape)}")
        head_dim = dim // self.heads
        q = self.query(self.norm_query(x)).view(batch, length, self.heads, head_dim).transpose(1, 2)
        k, v = self.key_value(self.norm_context(context)).view(batch, keys, 2, self.heads, head_dim) \
            .permute(2, 0, 3, 1, 4)
        bias = x.new_zeros(batch, 1, 1, keys)
        if relevance is not None:
            bias = bias + self.gain * torch.log(relevance.to(x.dtype).clamp(min=self.floor))[:, None, None, :]
        if context_valid is not None:
            bias = bias.masked_fill(~context_valid[:, None, None, :], -math.inf)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm_mlp(x))
