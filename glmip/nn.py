"""Variable-resolution ViT tokens into embeddings: `LodPatchEmbed`, loadable from a timm ViT.

Every glmip token is `patch` x `patch` samples at its own level, so one patch projection
serves all levels; what tells tokens apart is where their centre lies and which level they
were sampled at. `LodPatchEmbed` adds both to the projection and pads a batch of images with
different token counts into one tensor with a padding mask.

Convention:
    tokens: float (N, C, P, P) as `Pyramid.tokens` returns them, row 0 = top. Their values are
    the texture's: 8- and 16-bit images come back as [0, 1] (unorm), float32 images as stored;
    `input_scale` takes them to [0, 1] (1 for integer images, 1/255 for float images in 0..255),
    then `(x - mean) / std` per channel (ImageNet's by default, as timm). ViTs are trained on
    sRGB-encoded values: build the pyramid without `srgb=True` (which returns linear light).
    Output: `LodEmbedding(embeddings (B, prefix + N_max, D), padding (B, prefix + N_max) bool)`,
    padding True where a row is padding (torch's `key_padding_mask` convention); prefix
    (class/register) tokens come first, then each image's tokens in its layout's order.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Position", "LodEmbedding", "attention_mask", "sincos_position", "interpolate_grid", "LodPatchEmbed"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN / _STD
IMAGENET_STD = (0.229, 0.224, 0.225)


class Position(str, enum.Enum):
    GRID = "grid"  # a learned (gh, gw) grid over the image, bilinear at each token centre (a ViT's pos_embed)
    SINCOS = "sincos"  # fixed 2-D sin-cos of the centre in level-0 patch units (MAE's, made continuous)
    NONE = "none"  # no absolute position (e.g. a ViT built without pos_embed)


class LodEmbedding(NamedTuple):
    """A padded batch of embedded tokens and where the padding is."""

    embeddings: torch.Tensor  # (B, L, D)
    padding: torch.Tensor  # (B, L) bool, True = padding


def attention_mask(padding: torch.Tensor) -> torch.Tensor:
    """(B, L) padding mask (True = padding) -> (B, 1, 1, L) bool mask for `F.scaled_dot_product_attention`
    (True = may attend). `nn.MultiheadAttention` / `nn.TransformerEncoder` take `padding` itself as
    `key_padding_mask` / `src_key_padding_mask`."""
    if padding.dtype != torch.bool or padding.ndim != 2:
        raise ValueError(f"padding must be a (B, L) bool tensor, got {tuple(padding.shape)} {padding.dtype}")
    return ~padding[:, None, None, :]


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
    """glmip tokens (N, C, P, P) + their `TokenLayout` -> ViT embeddings (B, prefix + N, D) + padding mask.

    embedding = proj(normalised patch) + position(token centre) + level_embed(level), with
    `prefix_tokens` learned tokens (class, registers) in front. `position`: 'grid' (a learned
    `grid_size` grid over the image, interpolated at each centre), 'sincos' or 'none'. The level
    embedding (`levels` rows, fractional levels interpolated) starts at zero, so a ViT loaded with
    `from_timm` is unchanged on level-0 tokens until trained.
    """

    def __init__(self, patch: int = 16, in_channels: int = 3, dim: int = 768, *, levels: int = 16,
                 position: str | Position = "sincos", grid_size: tuple[int, int] | None = None,
                 prefix_tokens: int = 0, bias: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, input_scale: float = 1.0) -> None:
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
                  input_scale: float = 1.0) -> LodPatchEmbed:
        """The embedding of a timm `VisionTransformer`, from the model or its state dict.

        Reads `patch_embed.proj.weight` (D, C, P, P) and `.bias`, `pos_embed` (1, [prefix +] gh*gw, D),
        `cls_token`, `reg_token`. A model also gives `patch_embed.grid_size`, `no_embed_class`,
        `num_prefix_tokens` and `pretrained_cfg` mean/std; for a state dict, the grid is taken as
        square and `no_embed_class` from the length of `pos_embed` unless passed. Prefix tokens get
        their share of `pos_embed` folded in (timm adds it unless `no_embed_class`), so on a uniform
        level-0 layout the output equals timm's `_pos_embed(patch_embed(image))`.
        """
        parts = _timm_parts(vit, grid_size, no_embed_class)
        config = getattr(vit, "pretrained_cfg", None) or {}
        mean = tuple(mean if mean is not None else config.get("mean", IMAGENET_MEAN))
        std = tuple(std if std is not None else config.get("std", IMAGENET_STD))
        dim, channels, patch = parts.weight.shape[:3]
        module = cls(patch, channels, dim, levels=levels, position="grid" if parts.pos_grid is not None else "none",
                     grid_size=tuple(parts.pos_grid.shape[2:]) if parts.pos_grid is not None else None,
                     prefix_tokens=parts.prefix.shape[1] if include_prefix else 0, bias=parts.bias is not None,
                     mean=mean, std=std, input_scale=input_scale)
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
    def forward(self, tokens: torch.Tensor | Sequence[torch.Tensor], layout: Any | Sequence[Any]) -> LodEmbedding:
        """One image's tokens (N, C, P, P) and layout, or lists of them (one per image, any N each)."""
        token_list, layouts = _as_batch(tokens, layout)
        reference = self.proj.weight
        counts, centres, pixels, levels = [], [], [], []
        for index, (item, item_layout) in enumerate(zip(token_list, layouts, strict=True)):
            uv, xy, level = self._check(item, item_layout, f"image {index}: " if len(layouts) > 1 else "")
            counts.append(item.shape[0])
            centres.append(uv)
            pixels.append(xy)
            levels.append(level)
        flat = torch.cat(token_list).to(device=reference.device, dtype=reference.dtype)
        normalised = (flat * self.input_scale - self.mean.to(flat.dtype)) / self.std.to(flat.dtype)
        x = self.proj(normalised.flatten(1))
        x = x + self.level_embedding(torch.cat(levels).to(x.device))
        if self.pos_grid is not None:
            x = x + interpolate_grid(self.pos_grid, torch.cat(centres).to(x.device))
        elif self.position_kind is Position.SINCOS:
            x = x + sincos_position(torch.cat(pixels).to(x.device), self.dim).to(x.dtype)
        rows = [torch.cat([self.prefix[0], part]) for part in x.split(counts)]
        embeddings = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        lengths = torch.tensor(counts, device=x.device) + self.prefix_tokens
        padding = torch.arange(embeddings.shape[1], device=x.device)[None] >= lengths[:, None]
        return LodEmbedding(embeddings, padding)

    def level_embedding(self, level: torch.Tensor) -> torch.Tensor:
        """(N,) levels (fractional allowed, interpolated between rows) -> (N, D)."""
        level = level.to(self.level_embed.weight.dtype)
        below = level.floor().long().clamp(max=self.levels - 1)
        above = (below + 1).clamp(max=self.levels - 1)
        weight = (level - below.to(level.dtype))[:, None]
        return self.level_embed(below) * (1 - weight) + self.level_embed(above) * weight

    def _check(self, tokens: torch.Tensor, layout: Any, where: str) -> tuple[torch.Tensor, ...]:
        """Validate one image's tokens and layout; return its centres in uv and in patch units, and levels."""
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
        n = tokens.shape[0]
        if n == 0:
            raise ValueError(f"{where}no tokens; every image needs at least one")
        cx, cy, level = (np.asarray(getattr(layout, name), dtype=np.float64) for name in ("cx", "cy", "level"))
        if not (cx.shape == cy.shape == level.shape == (n,)):
            raise ValueError(f"{where}{n} tokens but the layout has cx {cx.shape}, cy {cy.shape}, "
                             f"level {level.shape}; they must match one token each")
        if not (np.isfinite(cx).all() and np.isfinite(cy).all() and np.isfinite(level).all()):
            raise ValueError(f"{where}the layout holds NaN or infinite centres or levels")
        if level.min() < 0 or level.max() > self.levels - 1:
            raise ValueError(f"{where}levels must lie within 0..{self.levels - 1} (levels={self.levels}), "
                             f"got {level.min():g}..{level.max():g}")
        width, height = layout.image_size
        uv = torch.from_numpy(np.stack([cx / width, cy / height], 1)).float()
        patches = torch.from_numpy(np.stack([cx, cy], 1) / self.patch - 0.5).float()
        return uv, patches, torch.from_numpy(level).float()


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


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n
