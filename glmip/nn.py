"""Variable-resolution ViT tokens into embeddings: `LodPatchEmbed`, and timm ViTs that train on them.

Every glmip token is `patch` x `patch` samples at its own level, so one patch projection
serves all levels; what tells tokens apart is where their centre lies and which level they
were sampled at. `LodPatchEmbed` adds both to the projection and pads a batch of images with
different token counts into one tensor with a validity mask. `from_timm(vit)` makes a timm ViT
a module on `TokenBatch`es that owns its `LodPatchEmbed` (loaded from the ViT's own embedding,
trained with the rest, saved in its state dict); `forward_timm` is its forward: the ViT's blocks
and head with the mask applied in attention and pooling, patch dropout and gradient checkpointing.

Convention:
    tokens: float (N, C, P, P) as `Pyramid.tokens` returns them, row 0 = top. Their values are
    the texture's: 8- and 16-bit images come back as [0, 1] (unorm), float32 images as stored;
    `input_scale` takes them to [0, 1] (1 for integer images, 1/255 for float images in 0..255),
    then `(x - mean) / std` per channel (ImageNet's by default, as timm). ViTs are trained on
    sRGB-encoded values: build the pyramid without `srgb=True` (which returns linear light).
    Output: `LodEmbedding(embeddings (B, prefix + N_max, D), valid (B, prefix + N_max) bool)`,
    valid True where a row is a real token (the polarity of SDPA's bool `attn_mask`, Hugging Face's
    `attention_mask` and NaFlex's `patch_valid`; torch's `key_padding_mask` is `~valid`); prefix
    (class/register) tokens come first, then each image's tokens in its layout's order.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .token_batch import TokenBatch

__all__ = ["Position", "LodEmbedding", "attention_mask", "attention_bias", "masked_mean", "masked_max",
           "attention_pool", "resample_grid", "sincos_position", "interpolate_grid", "LodPatchEmbed", "from_timm",
           "TimmViT", "TimmNaFlex", "forward_timm", "class_attention",
           "scored_forward"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN / _STD
IMAGENET_STD = (0.229, 0.224, 0.225)


class Position(str, enum.Enum):
    GRID = "grid"  # a learned (gh, gw) grid over the image, bilinear at each token centre (a ViT's pos_embed)
    SINCOS = "sincos"  # fixed 2-D sin-cos of the centre in level-0 patch units (MAE's, made continuous)
    NONE = "none"  # no absolute position (e.g. a ViT built without pos_embed)


class LodEmbedding(NamedTuple):
    """A padded batch of embedded tokens and which rows are real."""

    embeddings: torch.Tensor  # (B, L, D)
    valid: torch.Tensor  # (B, L) bool, True = real token (prefix or image token), False = padding


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) validity mask (True = real token) -> (B, 1, 1, L) bool mask for `F.scaled_dot_product_attention`
    (True = may attend). `nn.MultiheadAttention` / `nn.TransformerEncoder` take `~valid` as
    `key_padding_mask` / `src_key_padding_mask` (their True = padding)."""
    _check_valid(valid)
    return valid[:, None, None, :]


def attention_bias(valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) validity mask -> (B, 1, 1, L) additive mask, 0 where valid and -inf on padding: the form
    every attention path takes (timm's non-fused attention adds its mask to the scores)."""
    _check_valid(valid)
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float("-inf"))
    return bias[:, None, None, :]


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L, D) mean over the rows where `valid` (B, L) is True -> (B, D); a row with none gives 0."""
    _check_valid(valid)
    weight = valid.to(x.dtype)[..., None]
    return (x * weight).sum(1) / weight.sum(1).clamp(min=1)


def masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L, D) maximum over the rows where `valid` (B, L) is True -> (B, D)."""
    _check_valid(valid)
    return x.masked_fill(~valid[..., None], torch.finfo(x.dtype).min).amax(1)


def attention_pool(pool: nn.Module, x: torch.Tensor, valid: torch.Tensor,
                   query: torch.Tensor | None = None) -> torch.Tensor:
    """Multihead attention pooling (MAP) of (B, L, D) tokens that ignores padding rows.

    `pool` is timm's `AttentionPoolLatent` (or any module whose forward takes `(x, attn_mask=)`):
    it gets the additive (B, 1, 1, L) mask of `attention_bias`. Or an `nn.MultiheadAttention`
    (batch_first) with `query` (Q, D) or (B, Q, D) latent queries: it gets `key_padding_mask=~valid`
    and returns (B, Q, D) (squeezed to (B, D) when Q = 1).
    """
    if isinstance(pool, nn.MultiheadAttention):
        if query is None or not pool.batch_first:
            raise ValueError("an nn.MultiheadAttention pool needs batch_first=True and a query (Q, D) or (B, Q, D)")
        query = query.expand(x.shape[0], -1, -1) if query.ndim == 3 else query[None].expand(x.shape[0], -1, -1)
        pooled = pool(query, x, x, key_padding_mask=~valid, need_weights=False)[0]
        return pooled[:, 0] if pooled.shape[1] == 1 else pooled
    if "attn_mask" not in inspect.signature(pool.forward).parameters:
        raise TypeError(f"{type(pool).__name__}.forward takes no attn_mask, so padding would leak into the pool; "
                        "use a timm whose AttentionPoolLatent takes attn_mask (tested with timm 1.0.31)")
    return pool(x, attn_mask=attention_bias(valid, x.dtype))


def resample_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, D, gh, gw) position grid -> (1, D, *size), exactly as timm's `resample_abs_pos_embed`
    (bicubic, antialias=True, computed in float32); the grid itself when the size matches."""
    if tuple(grid.shape[2:]) == tuple(size):
        return grid
    out = F.interpolate(grid.float(), size=size, mode="bicubic", antialias=True, align_corners=None)
    return out.to(grid.dtype)


def sincos_position(xy: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(N, 2) positions -> (N, dim): first half encodes x, second half y, each [sin | cos] over
    dim / 4 frequencies 1 / temperature^(i / (dim / 4)) (MAE's 2-D sin-cos at real-valued positions)."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64, device=xy.device) / quarter)
    angles = xy.double()[:, :, None] * omega  # (N, 2, dim / 4)
    parts = [angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()]
    return torch.cat(parts, dim=1).to(xy.dtype if xy.is_floating_point() else torch.float32)


def interpolate_grid(grid: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """(1, D, gh, gw) grid sampled bilinearly at (N, 2) uv -> (N, D). Cell (i, j) sits at uv
    ((j + 0.5) / gw, (i + 0.5) / gh), so a token centred on a cell gets exactly that cell; outside
    the outermost cell centres the edge value holds."""
    where = (uv * 2 - 1).to(grid.dtype)[None, None]  # (1, 1, N, 2), x then y in [-1, 1]
    sampled = F.grid_sample(grid, where, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, :, 0].t()


class LodPatchEmbed(nn.Module):
    """glmip tokens (N, C, P, P) + their `TokenLayout` -> ViT embeddings (B, prefix + N, D) + `valid` mask.

    embedding = proj(normalised patch) + position(token centre) + level_embed(level), with
    `prefix_tokens` learned tokens (class, registers) in front. `position`: 'grid' (a learned
    `grid_size` grid stretched over the image, interpolated at each centre; with `dynamic_grid`,
    resampled to each image's own patch grid as timm's dynamic-size ViTs do, see
    `position_embedding`), 'sincos' or 'none'. The level
    embedding (`levels` rows, fractional levels interpolated) starts at zero, so a ViT loaded with
    `from_timm` is unchanged on level-0 tokens until trained.
    """

    def __init__(self, patch: int = 16, in_channels: int = 3, dim: int = 768, *, levels: int = 16,
                 position: str | Position = "sincos", grid_size: tuple[int, int] | None = None,
                 prefix_tokens: int = 0, bias: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, input_scale: float = 1.0, dynamic_grid: bool = False,
                 dynamic_pad: bool = False) -> None:
        super().__init__()
        for name, value, least in (("patch", patch, 1), ("in_channels", in_channels, 1), ("dim", dim, 1),
                                   ("levels", levels, 1), ("prefix_tokens", prefix_tokens, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        try:
            self.position_kind = Position(position)
        except ValueError:
            raise ValueError(f"unknown position {position!r}; choose one of "
                             f"{', '.join(repr(p.value) for p in Position)}") from None
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel ({in_channels}) and std > 0, "
                             f"got mean={tuple(mean)}, std={tuple(std)}")
        if not (math.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"input_scale must be a positive number, got {input_scale}")
        self.patch, self.in_channels, self.dim, self.levels = int(patch), int(in_channels), int(dim), int(levels)
        self.input_scale = float(input_scale)
        self.dynamic_grid, self.dynamic_pad = bool(dynamic_grid), bool(dynamic_pad)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.proj = nn.Linear(in_channels * patch * patch, dim, bias=bias)
        self.level_embed = nn.Embedding(levels, dim)
        nn.init.zeros_(self.level_embed.weight)
        self.pos_grid: nn.Parameter | None = None
        if self.position_kind is Position.GRID:
            if grid_size is None or len(grid_size) != 2 or min(grid_size) < 1:
                raise ValueError(f"position 'grid' needs grid_size = (rows, columns) >= 1, got {grid_size!r}")
            self.pos_grid = nn.Parameter(torch.empty(1, dim, int(grid_size[0]), int(grid_size[1])))
            nn.init.trunc_normal_(self.pos_grid, std=0.02)
        elif self.position_kind is Position.SINCOS and dim % 4:
            raise ValueError(f"position 'sincos' needs dim divisible by 4, got {dim}")
        self.prefix = nn.Parameter(torch.empty(1, prefix_tokens, dim))
        nn.init.trunc_normal_(self.prefix, std=0.02)

    @property
    def prefix_tokens(self) -> int:
        return self.prefix.shape[1]

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_timm(cls, vit: Any, *, levels: int = 16, include_prefix: bool = True,
                  grid_size: tuple[int, int] | None = None, no_embed_class: bool | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  input_scale: float = 1.0, dynamic_size: bool | None = None) -> LodPatchEmbed:
        """The embedding of a timm `VisionTransformer`, from the model or its state dict.

        Reads `patch_embed.proj.weight` (D, C, P, P) and `.bias`, `pos_embed` (1, [prefix +] gh*gw, D),
        `cls_token`, `reg_token`. A model also gives `patch_embed.grid_size`, `no_embed_class`,
        `num_prefix_tokens` and `pretrained_cfg` mean/std; for a state dict, the grid is taken as
        square and `no_embed_class` from the length of `pos_embed` unless passed. Prefix tokens get
        their share of `pos_embed` folded in (timm adds it unless `no_embed_class`), so on a uniform
        level-0 layout the output equals timm's `_pos_embed(patch_embed(image))`.

        `dynamic_size` (default: the model's `dynamic_img_size`; False for a state dict) resamples
        `pos_embed` to each image's own patch grid as timm does (`dynamic_grid`), so an image at a
        non-native size embeds as timm's dynamic-size model embeds it; otherwise the native grid is
        stretched over every image (what a fixed-size ViT sees after resizing its input).

        Raises ValueError for what this embedding cannot reproduce, naming the model class: rotary
        position (EVA-02, `*_rope_*`: `rope` applied inside attention), relative position biases
        (BEiT, `*_relpos_*`) and hybrid backbones (`vit_*_r_*`: a CNN before the patch projection).
        """
        parts = _timm_parts(vit, grid_size, no_embed_class)
        if dynamic_size is None:
            dynamic_size = bool(getattr(vit, "dynamic_img_size", False)) if isinstance(vit, nn.Module) else False
        config = getattr(vit, "pretrained_cfg", None) or {}
        mean = tuple(mean if mean is not None else config.get("mean", IMAGENET_MEAN))
        std = tuple(std if std is not None else config.get("std", IMAGENET_STD))
        dim, channels, patch = parts.weight.shape[:3]
        module = cls(patch, channels, dim, levels=levels, position="grid" if parts.pos_grid is not None else "none",
                     grid_size=tuple(parts.pos_grid.shape[2:]) if parts.pos_grid is not None else None,
                     prefix_tokens=parts.prefix.shape[1] if include_prefix else 0, bias=parts.bias is not None,
                     mean=mean, std=std, input_scale=input_scale, dynamic_grid=dynamic_size,
                     dynamic_pad=bool(getattr(vit, "dynamic_img_pad", False)))
        with torch.no_grad():
            module.proj.weight.copy_(parts.weight.reshape(dim, -1))
            if parts.bias is not None:
                module.proj.bias.copy_(parts.bias)
            if parts.pos_grid is not None:
                module.pos_grid.copy_(parts.pos_grid)
            if include_prefix:
                module.prefix.copy_(parts.prefix)
        return module.to(device=parts.weight.device, dtype=parts.weight.dtype)

    # -- forward ------------------------------------------------------------------------
    def forward(self, tokens: TokenBatch | torch.Tensor | Sequence[torch.Tensor],
                layout: Any | Sequence[Any] | None = None) -> LodEmbedding:
        """A `TokenBatch`, or one image's tokens (N, C, P, P) and layout, or lists of them (any N each).

        Compiles with `torch.compile(fullgraph=True)` when given a `TokenBatch` (it recompiles per
        batch composition: the lengths are static). Eager calls validate first (`check`); compiled
        code skips that and clamps levels into 0..levels-1.
        """
        batch = tokens if isinstance(tokens, TokenBatch) and layout is None else self.batch(tokens, layout)
        if not torch.compiler.is_compiling():
            self.check(batch)
        reference = self.proj.weight
        flat = batch.tokens.to(device=reference.device, dtype=reference.dtype)
        normalised = (flat * self.input_scale - self.mean.to(flat.dtype)) / self.std.to(flat.dtype)
        x = self.proj(normalised.flatten(1))
        x = x + self.level_embedding(batch.levels.to(x.device))
        x = x + self.position_embedding(batch).to(device=x.device, dtype=x.dtype)
        embeddings = x.new_zeros((len(batch), self.prefix_tokens + batch.max_seqlen, self.dim))
        embeddings[:, :self.prefix_tokens] = self.prefix
        embeddings[:, self.prefix_tokens:] = batch.pad(x)
        valid = torch.cat([batch.valid().new_ones((len(batch), self.prefix_tokens)), batch.valid()], 1)
        return LodEmbedding(embeddings, valid.to(x.device))

    def batch(self, tokens: torch.Tensor | Sequence[torch.Tensor], layout: Any | Sequence[Any]) -> TokenBatch:
        """One image's tokens and layout, or lists of them -> a validated `TokenBatch` for this embedding."""
        if isinstance(tokens, TokenBatch):
            raise TypeError("a TokenBatch carries its layouts; call the embedding with the batch alone")
        token_list, layouts = _as_batch(tokens, layout)
        for index, (item, item_layout) in enumerate(zip(token_list, layouts, strict=True)):
            self._check_shape(item, item_layout, f"image {index}: " if len(layouts) > 1 else "")
        return TokenBatch.from_parts(token_list, layouts)

    def check(self, batch: TokenBatch) -> None:
        """Raise ValueError if `batch` does not fit this embedding (channels, patch, level range).

        Reads the levels (a device sync), so `forward` calls it only when not compiling."""
        if (batch.channels, batch.patch) != (self.in_channels, self.patch) or batch.tokens.shape[2:] != (
                self.patch, self.patch):
            raise ValueError(f"tokens must have shape (N, {self.in_channels}, {self.patch}, {self.patch}) (channels, "
                             f"patch, patch of this embedding), got {tuple(batch.tokens.shape)}")
        low, high = torch.stack([batch.levels.min(), batch.levels.max()]).tolist()  # one device sync
        if low < 0 or high > self.levels - 1:
            raise ValueError(f"levels must lie within 0..{self.levels - 1} (levels={self.levels}), "
                             f"got {low:g}..{high:g}")

    def position_embedding(self, batch: TokenBatch) -> torch.Tensor:
        """(ΣN, D) absolute position of each token of `batch` (zeros for position 'none').

        Convention:
            'grid' stretches `pos_grid` over each image (uv), unless `dynamic_grid` (from a timm model
            with `dynamic_img_size`): then, as timm does, image b's grid is (H // P, W // P) cells
            (ceil with `dynamic_pad`), `pos_grid` is resampled to it as timm's `resample_abs_pos_embed`
            (bicubic, antialias) and each token reads it bilinearly at its centre in patch units.
            'sincos' encodes the centre in level-0 patch units, (0, 0) the top-left patch's centre.
        """
        if self.position_kind is Position.NONE:
            return self.proj.weight.new_zeros((batch.tokens.shape[0], self.dim))
        sizes = torch.tensor(batch.image_sizes, dtype=torch.float64, device=batch.device)[batch.batch_index()]
        pixels = batch.centres.double() * sizes  # (ΣN, 2) x, y in level-0 pixels
        if self.position_kind is Position.SINCOS:
            return sincos_position((pixels / self.patch - 0.5).float(), self.dim)
        if not self.dynamic_grid:
            return interpolate_grid(self.pos_grid, batch.centres.to(self.pos_grid.device))
        rows, start, grids = [], 0, {}
        for (width, height), count in zip(batch.image_sizes, batch.lengths, strict=True):
            cells = ((height + self.patch - 1) // self.patch, (width + self.patch - 1) // self.patch) \
                if self.dynamic_pad else (max(height // self.patch, 1), max(width // self.patch, 1))
            if cells not in grids:
                grids[cells] = resample_grid(self.pos_grid, cells)
            where = pixels[start:start + count] / self.patch / torch.tensor(cells[::-1], dtype=torch.float64,
                                                                          device=pixels.device)
            rows.append(interpolate_grid(grids[cells], where.float().to(self.pos_grid.device)))
            start += count
        return torch.cat(rows)

    def level_embedding(self, level: torch.Tensor) -> torch.Tensor:
        """(N,) levels (fractional allowed, interpolated between rows) -> (N, D)."""
        level = level.to(self.level_embed.weight.dtype).clamp(0, self.levels - 1)
        below = level.floor().long().clamp(max=self.levels - 1)
        above = (below + 1).clamp(max=self.levels - 1)
        weight = (level - below.to(level.dtype))[:, None]
        return self.level_embed(below) * (1 - weight) + self.level_embed(above) * weight

    def _check_shape(self, tokens: Any, layout: Any, where: str) -> None:
        """The checks specific to this embedding, before packing (TokenBatch.from_parts checks the rest)."""
        if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point():
            raise TypeError(f"{where}tokens must be a float torch tensor (N, C, P, P) as Pyramid.tokens returns, "
                            f"got {type(tokens).__name__} {getattr(tokens, 'dtype', '')}")
        expected = (self.in_channels, self.patch, self.patch)
        if tokens.ndim != 4 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(f"{where}tokens must have shape (N, {self.in_channels}, {self.patch}, {self.patch}) "
                             f"(channels, patch, patch of this embedding), got {tuple(tokens.shape)}")
        missing = [name for name in ("cx", "cy", "level", "image_size") if not hasattr(layout, name)]
        if missing:
            raise TypeError(f"{where}layout must be a glmip.TokenLayout (cx, cy, level, image_size), "
                            f"got {type(layout).__name__} without {', '.join(missing)}")
        layout_patch = getattr(layout, "patch", self.patch)
        if layout_patch != self.patch:
            raise ValueError(f"{where}the layout's patch is {layout_patch}, this embedding's is {self.patch}")


class TimmViT(nn.Module):
    """A timm `VisionTransformer` that runs on `TokenBatch`es and owns its glmip embedding: `from_timm(vit)`.

    `embed` is a `LodPatchEmbed` loaded from the ViT's patch projection, `pos_embed` and class/register
    tokens, so at the start the model embeds a uniform level-0 layout exactly as timm embeds the image;
    `vit` is the ViT itself, its blocks, norms, pooling and head. Both are submodules: their weights are
    in `state_dict()` (`embed.*`, `vit.*`), in `parameters()` for the optimiser, and move with `.to()`.
    `forward(batch)` is `forward_timm(vit, batch, embed)`: the ViT's `grad_checkpointing`
    (`set_grad_checkpointing`) and patch dropout (`patch_drop_rate`, on each image's real tokens only)
    apply in training as they do in timm's own forward.
    """

    def __init__(self, vit: nn.Module, embed: LodPatchEmbed) -> None:
        super().__init__()
        self.vit, self.embed = vit, embed

    @property
    def mean(self) -> tuple[float, ...]:
        """The per-channel mean the embedding subtracts (the model's `pretrained_cfg` unless overridden)."""
        return tuple(self.embed.mean.flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.embed.std.flatten().tolist())

    def forward(self, batch: TokenBatch, *, pre_logits: bool = False, features: bool = False) -> torch.Tensor:
        """Logits (B, classes); pooled features (B, D) with `pre_logits`; normed tokens (B, prefix + L, D)
        with `features` (L shrinks under patch dropout in training)."""
        return forward_timm(self.vit, batch, self.embed, pre_logits=pre_logits, features=features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of keeping its activations (timm's switch)."""
        _set_grad_checkpointing(self.vit, enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (read by timm's `create_optimizer_v2`): the position
        grid, prefix tokens and level embedding, and what the ViT itself lists."""
        own = {"embed.pos_grid", "embed.prefix", "embed.level_embed.weight"} & {n for n, _ in self.named_parameters()}
        listed = self.vit.no_weight_decay() if hasattr(self.vit, "no_weight_decay") else set()
        return own | {f"vit.{name}" for name in listed if f"vit.{name}" in dict(self.named_parameters())}


class TimmNaFlex(nn.Module):
    """A timm `NaFlexVit` on `TokenBatch`es: `forward(batch)` is `vit(batch.naflex(mean=..., std=...))`.

    NaFlexVit embeds patches itself, so its embedding is its own submodule already; this wrapper passes
    the model's mean and std (its `pretrained_cfg`, unless given to `from_timm`) so no pretrained weight
    ever sees unnormalised values. NaFlex positions are level-0 grid cells: coarse tokens lose their
    scale (see `TokenBatch.naflex`).
    """

    def __init__(self, vit: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.vit = vit
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def forward(self, batch: TokenBatch, pad_to: int | None = None) -> torch.Tensor:
        if not isinstance(batch, TokenBatch):
            raise TypeError(f"{type(self).__name__} takes a glmip.TokenBatch, got {type(batch).__name__}")
        return self.vit(batch.naflex(pad_to, mean=self.mean, std=self.std))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        _set_grad_checkpointing(self.vit, enable)


def from_timm(vit: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              **embed_options: Any) -> TimmViT | TimmNaFlex:
    """A timm ViT as a module that takes `TokenBatch`es and trains end to end, its embedding included.

    A `VisionTransformer` (and its relatives that `LodPatchEmbed.from_timm` loads) becomes a `TimmViT`:
    its patch projection, `pos_embed`, `cls_token` and `reg_token` move into a `LodPatchEmbed` (`.embed`,
    a copy of their current values, pretrained or not), and the model takes `vit` over: those four
    attributes of `vit` become None, so no parameter sits unused (DDP) and nothing is saved twice. A
    `NaFlexVit` becomes a `TimmNaFlex`, which feeds it `batch.naflex(...)`.

    `mean` / `std` default to the model's `pretrained_cfg` (ImageNet's where it has none);
    `embed_options` (`levels`, `dynamic_size`, `input_scale`, `grid_size`, `no_embed_class`) go to
    `LodPatchEmbed.from_timm`. Typical use::

        model = glmip.nn.from_timm(timm.create_model("vit_small_patch16_224", pretrained=True))
        optimiser = torch.optim.AdamW(model.parameters())
        loss = F.cross_entropy(model(batch), labels)

    Raises what `LodPatchEmbed.from_timm` raises for a model it cannot embed (rotary or relative
    positions, hybrid backbones), before changing anything.
    """
    if not isinstance(vit, nn.Module):
        raise TypeError(f"from_timm takes a timm model (an nn.Module), got {type(vit).__name__}; for a state "
                        "dict, use LodPatchEmbed.from_timm")
    config = getattr(vit, "pretrained_cfg", None) or {}
    mean = tuple(mean if mean is not None else config.get("mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else config.get("std", IMAGENET_STD))
    if getattr(vit, "embeds", None) is not None and getattr(vit, "patch_embed", None) is None:
        if embed_options:
            raise TypeError(f"{type(vit).__name__} embeds patches itself; {', '.join(sorted(embed_options))} "
                            "apply to LodPatchEmbed only")
        channels = getattr(vit, "in_chans", len(mean))
        _channel_norm_check(mean, std, channels)
        return TimmNaFlex(vit, mean, std)
    if getattr(vit, "patch_embed", None) is None:
        raise TypeError(f"{type(vit).__name__} has no patch_embed (was it already taken over by from_timm?); "
                        "pass a timm VisionTransformer or NaFlexVit")
    if "include_prefix" in embed_options:
        raise TypeError("from_timm always carries the model's prefix tokens over (include_prefix)")
    _check_blocks_take_masks(vit)
    embed = LodPatchEmbed.from_timm(vit, mean=mean, std=std, **embed_options)
    vit.patch_embed = None
    for name in ("pos_embed", "cls_token", "reg_token"):
        if hasattr(vit, name):
            setattr(vit, name, None)
    return TimmViT(vit, embed)


def forward_timm(vit: nn.Module, batch: TokenBatch, embed: LodPatchEmbed | None = None, *, freeze: bool = False,
                 pre_logits: bool = False, features: bool = False) -> torch.Tensor:
    """Run a timm `VisionTransformer` on a `TokenBatch`: embed, blocks with padding masked, norm, pool, head.

    Returns logits (B, classes); with `pre_logits` the pooled features after `fc_norm` (B, D); with
    `features` the normed token features (B, prefix + L, D) and no pooling. `from_timm(vit)` wraps this
    with an embedding the model owns, which is the way to train. `embed` is the `LodPatchEmbed` to use;
    without one, `freeze=True` embeds with a frozen copy of the ViT's own patch and position embedding,
    rebuilt on every call and never trained (inference with an untouched timm model).

    As timm's forward, in training: `vit.pos_drop` and `vit.patch_drop` apply after the embedding, and
    with `vit.grad_checkpointing` each block is recomputed in the backward pass (timm itself skips
    checkpointing when given a mask; here the mask goes into each checkpointed block). Patch dropout
    keeps max(1, int(n * (1 - p))) of each image's n real tokens, chosen at random (in order with
    `ordered`), never padding, and the prefix tokens always; the batch is re-padded to the most kept.

    Every image gives what it gives alone: attention gets the additive mask of `attention_bias`
    (padding keys at -inf), and the pooling follows timm's `pool` with the mask applied: 'token'
    takes row 0, 'avg' / 'max' / 'avgmax' reduce over the valid rows past the prefix (or including
    it with `pool_include_prefix`), 'map' (`attn_pool`) masks its keys; '' returns the features.
    """
    if not isinstance(batch, TokenBatch):
        raise TypeError(f"forward_timm takes a glmip.TokenBatch, got {type(batch).__name__}")
    if embed is None and not freeze:
        raise TypeError("forward_timm needs an embedding: build the model with glmip.nn.from_timm(vit), which owns "
                        "a trainable one, and call model(batch); or pass embed=LodPatchEmbed.from_timm(vit); or "
                        "freeze=True for a frozen copy of the ViT's own embedding (no gradient reaches it)")
    if embed is not None and freeze:
        raise ValueError("freeze=True builds a frozen copy of the ViT's embedding; it does not go with embed=")
    blocks = _check_blocks_take_masks(vit)
    if embed is None:
        embed = LodPatchEmbed.from_timm(vit).requires_grad_(False)
    x, valid = embed(batch)
    x = vit.pos_drop(x) if hasattr(vit, "pos_drop") else x
    x, valid = _drop_patches(getattr(vit, "patch_drop", None), x, valid, batch.lengths, embed.prefix_tokens)
    x = vit.norm_pre(x) if hasattr(vit, "norm_pre") else x
    mask = attention_bias(valid, x.dtype)
    checkpointing = bool(getattr(vit, "grad_checkpointing", False)) and torch.is_grad_enabled()
    for block in blocks:
        if checkpointing:
            x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=mask)
    x = vit.norm(x)
    if features:
        return x
    prefix = embed.prefix_tokens
    include_prefix = bool(getattr(vit, "pool_include_prefix", False))
    pool_x, pool_valid = (x, valid) if include_prefix else (x[:, prefix:], valid[:, prefix:])
    if getattr(vit, "attn_pool", None) is not None:
        pooled = attention_pool(vit.attn_pool, pool_x, pool_valid)
    else:
        kind = getattr(vit, "global_pool", "token")
        if kind == "token":
            pooled = x[:, 0]
        elif kind == "avg":
            pooled = masked_mean(pool_x, pool_valid)
        elif kind == "max":
            pooled = masked_max(pool_x, pool_valid)
        elif kind == "avgmax":
            pooled = 0.5 * (masked_max(pool_x, pool_valid) + masked_mean(pool_x, pool_valid))
        elif not kind:
            return x
        else:
            raise ValueError(f"{type(vit).__name__} pools with global_pool={kind!r}; forward_timm knows "
                             "'token', 'avg', 'max', 'avgmax', 'map' and ''")
    pooled = vit.fc_norm(pooled)
    pooled = vit.head_drop(pooled) if hasattr(vit, "head_drop") else pooled
    return pooled if pre_logits else vit.head(pooled)


# -- helpers ----------------------------------------------------------------------------
def _as_batch(tokens: Any, layout: Any) -> tuple[list[torch.Tensor], list[Any]]:
    if isinstance(tokens, torch.Tensor):
        if isinstance(layout, (list, tuple)):
            raise TypeError("one tokens tensor goes with one layout; pass lists of both for a batch")
        return [tokens], [layout]
    if not isinstance(tokens, (list, tuple)) or not isinstance(layout, (list, tuple)):
        raise TypeError(f"pass tokens (N, C, P, P) with a TokenLayout, or a list of each; got "
                        f"{type(tokens).__name__} and {type(layout).__name__}")
    if len(tokens) != len(layout) or not tokens:
        raise ValueError(f"need one layout per tokens tensor and at least one image, got {len(tokens)} tokens "
                         f"tensors and {len(layout)} layouts")
    return list(tokens), list(layout)


@dataclass(frozen=True)
class _TimmParts:
    weight: torch.Tensor  # (D, C, P, P)
    bias: torch.Tensor | None
    pos_grid: torch.Tensor | None  # (1, D, gh, gw)
    prefix: torch.Tensor  # (1, prefix, D), position folded in


def _timm_parts(vit: Any, grid_size: tuple[int, int] | None, no_embed_class: bool | None) -> _TimmParts:
    """The tensors of a timm ViT's embedding stage, from the model or a state dict with timm's key names."""
    if isinstance(vit, Mapping):
        state = dict(vit)
        declared_prefix = None
    elif isinstance(vit, nn.Module):
        _refuse_unsupported(vit)
        state = {}
        proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
        if proj is None:
            raise TypeError(f"{type(vit).__name__} has no patch_embed.proj; pass a timm VisionTransformer "
                            "or its state dict")
        if getattr(proj, "stride", proj.kernel_size) != proj.kernel_size or proj.kernel_size[0] != proj.kernel_size[1]:
            raise ValueError(f"patch_embed.proj must be a square conv with stride = kernel, got kernel "
                             f"{proj.kernel_size}, stride {proj.stride}")
        state["patch_embed.proj.weight"], state["patch_embed.proj.bias"] = proj.weight, proj.bias
        for name in ("pos_embed", "cls_token", "reg_token"):
            state[name] = getattr(vit, name, None)
        norm = getattr(vit.patch_embed, "norm", None)
        if norm is not None and any(True for _ in norm.parameters()):
            state["patch_embed.norm.weight"] = next(norm.parameters())
        grid_size = grid_size or tuple(getattr(vit.patch_embed, "grid_size", ()) or ()) or None
        no_embed_class = getattr(vit, "no_embed_class", no_embed_class) if no_embed_class is None else no_embed_class
        declared_prefix = getattr(vit, "num_prefix_tokens", None)
    else:
        raise TypeError(f"from_timm takes a timm VisionTransformer or its state dict, got {type(vit).__name__}")
    if "patch_embed.norm.weight" in state:
        raise ValueError("this ViT normalises patches inside patch_embed (patch_embed.norm); not supported")
    weight = state.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError("need patch_embed.proj.weight of shape (D, C, P, P), got "
                         f"{None if weight is None else tuple(weight.shape)}")
    weight = weight.detach()
    dim = weight.shape[0]
    bias = state.get("patch_embed.proj.bias")
    prefix_parts = [t.detach().reshape(1, -1, dim) for t in (state.get("cls_token"), state.get("reg_token"))
                    if t is not None]
    prefix = torch.cat(prefix_parts, 1) if prefix_parts else weight.new_zeros(1, 0, dim)
    n_prefix = prefix.shape[1]
    if declared_prefix is not None and declared_prefix != n_prefix:
        raise ValueError(f"the model declares {declared_prefix} prefix tokens but has cls_token/reg_token for "
                         f"{n_prefix}; other prefix tokens (e.g. a distillation token) are not supported")
    pos = state.get("pos_embed")
    if pos is None:
        return _TimmParts(weight, None if bias is None else bias.detach(), None, prefix)
    pos = pos.detach().reshape(1, -1, dim)
    length = pos.shape[1]
    if n_prefix == 0:
        no_embed_class = True  # nothing to cover either way
    elif no_embed_class is None:  # state dict: the grid is square, so its length tells
        fits = [flag for flag in (False, True) if _is_square(length - (0 if flag else n_prefix))]
        if len(fits) != 1:
            raise ValueError(f"cannot tell from pos_embed of length {length} with {n_prefix} prefix tokens whether "
                             "it covers them; pass no_embed_class=True/False (and grid_size)")
        no_embed_class = fits[0]
    covered = 0 if no_embed_class else n_prefix
    rows, cols = grid_size or (math.isqrt(length - covered),) * 2
    if rows * cols != length - covered:
        raise ValueError(f"pos_embed has {length} entries; {covered} prefix + a {rows}x{cols} grid does not fit; "
                         "pass grid_size=(rows, columns)")
    if covered:
        prefix = prefix + pos[:, :covered]
    grid = pos[:, covered:].reshape(1, rows, cols, dim).permute(0, 3, 1, 2).contiguous()
    return _TimmParts(weight, None if bias is None else bias.detach(), grid, prefix)


def _refuse_unsupported(vit: nn.Module) -> None:
    """ValueError, naming the class, for a ViT whose tokens are positioned or embedded in a way
    LodPatchEmbed does not reproduce (so it never returns a silently wrong embedding)."""
    name = type(vit).__name__
    patch_embed = getattr(vit, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "backbone", None) is not None:
        raise ValueError(f"{name} is a hybrid ViT: a {type(patch_embed.backbone).__name__} backbone runs before the "
                         "patch projection, so its tokens are not a linear map of pixel patches; not supported")
    if getattr(vit, "rope", None) is not None or any("rope" in type(m).__name__.lower() or
                                                     "rotary" in type(m).__name__.lower() for m in vit.modules()):
        raise ValueError(f"{name} uses rotary position embeddings (RoPE) inside attention, which would have to "
                         "be evaluated at each token's centre; LodPatchEmbed does not, so it refuses this model")
    for module_name, module in vit.named_modules():
        kind = type(module).__name__.lower()
        if "relpos" in kind or "rel_pos" in module_name or "relative_position" in module_name or any(
                "relative_position" in p for p, _ in module.named_parameters(recurse=False)):
            raise ValueError(f"{name} uses relative position biases ({module_name}: {type(module).__name__}) "
                             "indexed by grid offsets, undefined between tokens of different sizes; not supported")


def _check_blocks_take_masks(vit: nn.Module) -> nn.Module:
    """The ViT's blocks, after checking that each takes `attn_mask` (else padding would leak into attention)."""
    blocks = getattr(vit, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(vit).__name__} has no blocks; forward_timm runs timm VisionTransformer-like models")
    for block in blocks:
        if "attn_mask" not in inspect.signature(block.forward).parameters:
            raise TypeError(f"{type(block).__name__}.forward takes no attn_mask, so padding would leak into "
                            "attention; use a timm whose Block takes attn_mask (tested with timm 1.0.31)")
    return blocks


def _drop_patches(drop: nn.Module | None, x: torch.Tensor, valid: torch.Tensor, lengths: Sequence[int],
                  prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's patch dropout on a padded batch: (B, prefix + L, D) and valid -> (B, prefix + K, D) and valid.

    Image b keeps max(1, int(n_b * (1 - prob))) of its n_b real tokens (timm's count for an image alone),
    drawn uniformly among them; padding rows are never kept and the prefix always is. K = the most kept.
    """
    if drop is None or isinstance(drop, nn.Identity):
        return x, valid
    if not hasattr(drop, "prob"):
        raise TypeError(f"patch_drop is a {type(drop).__name__}; forward_timm knows timm's PatchDropout (prob, "
                        "ordered) and nn.Identity")
    if not drop.training or drop.prob == 0:
        return x, valid
    keep = [max(1, int(n * (1.0 - drop.prob))) for n in lengths]
    body, body_valid = x[:, prefix:], valid[:, prefix:]
    scores = torch.rand(body_valid.shape, device=x.device).masked_fill(~body_valid, 2.0)  # padding sorts last
    index = scores.argsort(1)[:, :max(keep)]
    kept = torch.arange(max(keep), device=x.device)[None] < torch.tensor(keep, device=x.device)[:, None]
    if getattr(drop, "ordered", False):
        index = index.masked_fill(~kept, body.shape[1]).sort(1).values.clamp(max=body.shape[1] - 1)
    body = body.gather(1, index[..., None].expand(-1, -1, body.shape[2])).masked_fill(~kept[..., None], 0)
    return torch.cat([x[:, :prefix], body], 1), torch.cat([valid[:, :prefix], kept], 1)


def _set_grad_checkpointing(vit: nn.Module, enable: bool) -> None:
    if hasattr(vit, "set_grad_checkpointing"):
        vit.set_grad_checkpointing(enable)
    else:
        vit.grad_checkpointing = bool(enable)


def _channel_norm_check(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need one value per channel ({channels}) and std > 0, "
                         f"got mean={tuple(mean)}, std={tuple(std)}")


def _check_valid(valid: torch.Tensor) -> None:
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.ndim != 2:
        raise ValueError(f"valid must be a (B, L) bool tensor (True = real token), got "
                         f"{tuple(getattr(valid, 'shape', ()))} {getattr(valid, 'dtype', type(valid).__name__)}")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


# -- scores for coarse-to-fine refinement --------------------------------------------------
def class_attention(model: nn.Module, batch: TokenBatch) -> list[torch.Tensor]:
    """Where the class token looks: its attention over each image's tokens in the model's last block, one
    (N_b,) float32 tensor per image of `batch`, in its layout's order: the scores `glmip.refine` splits by.

    `model`: a `glmip.models.TokenClassifier` or a timm ViT made by `from_timm` (`TimmViT`), in eval mode
    (patch dropout would drop tokens). It runs once on `batch` (its whole forward; no gradient is stopped
    here: wrap the call in `torch.no_grad()` for inference), and a forward hook reads the last block's
    query/key projection (`qkv`; timm's `q_norm` / `k_norm` applied).

    Convention:
        `score[b][k]` = mean over heads of `softmax_j(q_0 . k_j * scale)[prefix + k]`, q_0 the class token's
        (row 0's) query, j over the real rows of image b (padding masked, as in the model's own attention),
        scale = head_dim ** -0.5 (timm's `attn.scale`). Scores lie in [0, 1] and sum over an image's tokens
        to 1 less the class token's attention to the prefix tokens (itself included). An image's scores do
        not depend on the other images of its batch.
    """
    if not isinstance(batch, TokenBatch):
        raise TypeError(f"class_attention takes a glmip.TokenBatch, got {type(batch).__name__}")
    embed = getattr(model, "embed", None)
    if hasattr(getattr(model, "encoder", None), "blocks"):  # glmip.models.TokenClassifier
        last = model.encoder.blocks[-1]
        qkv, heads, q_norm, k_norm, scale = last.qkv, last.heads, nn.Identity(), nn.Identity(), None
        counts = list(batch.lengths)

        def run() -> Any:
            return model(list(torch.split(batch.tokens, counts)), list(batch.layouts))
    elif hasattr(getattr(model, "vit", None), "blocks"):  # TimmViT
        attention = model.vit.blocks[-1].attn
        qkv, heads, scale = attention.qkv, attention.num_heads, getattr(attention, "scale", None)
        q_norm, k_norm = getattr(attention, "q_norm", nn.Identity()), getattr(attention, "k_norm", nn.Identity())

        def run() -> Any:
            return model(batch)
    else:
        raise TypeError(f"class_attention scores a glmip.models.TokenClassifier or a glmip.nn.from_timm model, got "
                        f"{type(model).__name__}")
    if not isinstance(embed, LodPatchEmbed) or embed.prefix_tokens < 1:
        raise ValueError(f"{type(model).__name__} has no class token (its LodPatchEmbed holds "
                         f"{getattr(embed, 'prefix_tokens', 0)} prefix tokens); class attention needs one")
    captured: list[torch.Tensor] = []
    handle = qkv.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        run()
    finally:
        handle.remove()
    prefix = embed.prefix_tokens
    length = prefix + batch.max_seqlen
    projected = captured[-1]
    if projected.ndim != 3 or tuple(projected.shape[:2]) != (len(batch), length):
        raise ValueError(f"the last block saw {tuple(projected.shape[:2])} tokens, not the batch's "
                         f"{(len(batch), length)} (patch dropout in training mode?); call model.eval() first")
    lengths = torch.tensor(batch.lengths, device=projected.device)
    valid = torch.arange(length, device=projected.device)[None] < prefix + lengths[:, None]
    weights = _class_token_weights(projected, valid, heads, q_norm, k_norm, scale)
    return [weights[b, prefix:prefix + n] for b, n in enumerate(batch.lengths)]


def _class_token_weights(projected: torch.Tensor, valid: torch.Tensor, heads: int, q_norm: nn.Module | None = None,
                         k_norm: nn.Module | None = None, scale: float | None = None) -> torch.Tensor:
    """The class token's attention weights from a block's qkv projection: projected (B, L, 3·D) and valid (B, L)
    bool (prefix rows included) -> (B, L) float32, the softmax over the valid keys of q_0·k_j·scale, mean over
    heads; 0 at invalid keys."""
    batch, length = projected.shape[:2]
    dim = projected.shape[2] // 3
    q, k, _ = projected.view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    scale = (dim // heads) ** -0.5 if scale is None else scale
    logits = (q[:, :, :1].float() @ k.float().transpose(-1, -2))[:, :, 0] * scale  # (B, heads, L)
    return logits.masked_fill(~valid[:, None], float("-inf")).softmax(-1).mean(1)


def scored_forward(model: nn.Module, tokens: torch.Tensor, levels: torch.Tensor, positions: torch.Tensor,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`TokenClassifier.forward_padded` that also says where the class token looked: one forward gives the
    logits and the scores a coarse-to-fine pass refines by, on the device, with nothing read back.

    `model`: a `glmip.models.TokenClassifier`. tokens, levels, positions, valid: as `forward_padded`.
    Returns (logits (B, classes), scores (B, L) float32): score[b, k] is `class_attention`'s value for token
    k of row b (mean over heads of the class token's softmax weight on it in the last block), 0 at padding.
    Gradients flow through the logits as in `forward_padded`; the scores are detached (a split is a
    discrete choice)."""
    encoder = getattr(model, "encoder", None)
    if not hasattr(model, "forward_padded") or not hasattr(encoder, "blocks"):
        raise TypeError(f"scored_forward runs a glmip.models.TokenClassifier, got {type(model).__name__}")
    last = encoder.blocks[-1]
    captured: list[torch.Tensor] = []
    handle = last.qkv.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    try:
        logits, _ = model.forward_padded(tokens, levels, positions, valid)
    finally:
        handle.remove()
    prefix = model.embed.prefix_tokens
    batch, length = tokens.shape[:2]
    rows = torch.ones(batch, prefix + length, dtype=torch.bool, device=tokens.device)
    if valid is not None:
        rows[:, prefix:] = valid
    weights = _class_token_weights(captured[-1], rows, last.heads)
    return logits, weights[:, prefix:]
