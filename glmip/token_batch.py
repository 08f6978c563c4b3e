"""A batch of variable-length token sets, in each layout the ecosystem consumes: `TokenBatch`.

One batch, four views of the same tokens:

    packed   `tokens` (ΣN, C, P, P) + `cu_seqlens` (B + 1,) int32 + `max_seqlen`: the varlen form of
             flash-attn's `flash_attn_varlen_func`, APT and Qwen2-VL (no padding at all);
    padded   `padded()` -> (B, L, C, P, P) + `valid` (B, L) bool, True = real token: the polarity of
             `F.scaled_dot_product_attention`'s bool `attn_mask`, Hugging Face's `attention_mask` and
             timm NaFlex's `patch_valid` (torch's `key_padding_mask` is its negation, `~valid`);
    nested   `nested()` -> a `layout=torch.jagged` nested tensor (B, j, ...) that SDPA takes directly;
    naflex   `naflex(mean=, std=)` -> the dict timm's `NaFlexVit.forward` takes (`patches`, `patch_coord`,
             `patch_valid`), normalised with the model's mean and std.

Convention:
    Token k of image b is row `cu_seqlens[b] + k` of every per-token tensor, in its layout's order.
    `centres` (ΣN, 2) float32 are in uv: (0, 0) the image's top-left corner, (1, 1) its bottom-right,
    x then y. `levels` (ΣN,) float32 keep fractional levels as the layout holds them (never truncated).
    `sizes` (ΣN,) float32 are token sides in level-0 pixels. `image_sizes[b]` is (width, height).
    `extra` holds named per-token side data (ΣN, ...) that travels with the batch and its file, e.g. a
    slide's region ids (`extra["region"]`, int64).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptFileError
from .layout import LAYOUT_ARRAYS, TokenLayout

SAVE_FORMAT = "glmip.TokenBatch"
SAVE_VERSION = 1


__all__ = ["TokenBatch"]


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """B images' tokens packed end to end, with their layouts. Build it with `TokenBatch.from_parts`."""

    tokens: torch.Tensor  # (ΣN, C, P, P) float32
    cu_seqlens: torch.Tensor  # (B + 1,) int32, cu_seqlens[b] = first row of image b
    max_seqlen: int
    layouts: tuple[TokenLayout, ...]
    image_sizes: tuple[tuple[int, int], ...]  # (width, height) per image
    patch: int
    levels: torch.Tensor  # (ΣN,) float32
    centres: torch.Tensor  # (ΣN, 2) float32, uv
    sizes: torch.Tensor  # (ΣN,) float32, level-0 pixels
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)  # name -> (ΣN, ...) per-token side data

    @classmethod
    def from_parts(cls, tokens_per_image: Sequence[torch.Tensor], layouts: Sequence[TokenLayout]) -> TokenBatch:
        """Pack one (N_i, C, P, P) float tensor per image with its layout (N_i tokens, patch P).

        Every image needs at least one token; C and P must agree across images and with the layouts.
        """
        if isinstance(tokens_per_image, torch.Tensor) or not isinstance(tokens_per_image, (list, tuple)):
            raise TypeError(f"tokens_per_image must be a list of (N, C, P, P) tensors, one per image, got "
                            f"{type(tokens_per_image).__name__}; wrap a single image's tokens in a list")
        if not isinstance(layouts, (list, tuple)):
            raise TypeError(f"layouts must be a list of glmip.TokenLayout, got {type(layouts).__name__}")
        if not tokens_per_image:
            raise ValueError("an empty batch: pass at least one image's tokens and layout")
        if len(tokens_per_image) != len(layouts):
            raise ValueError(f"need one layout per tokens tensor, got {len(tokens_per_image)} tokens tensors and "
                             f"{len(layouts)} layouts")
        shape = None
        for index, (tokens, layout) in enumerate(zip(tokens_per_image, layouts, strict=True)):
            shape = _check_image(index, tokens, layout, shape)
        packed = torch.cat([t.to(device=tokens_per_image[0].device, dtype=torch.float32) for t in tokens_per_image])
        _check_finite(packed, [len(layout) for layout in layouts])
        return cls._pack(packed, layouts)

    @classmethod
    def from_packed(cls, tokens: torch.Tensor, layouts: Sequence[TokenLayout]) -> TokenBatch:
        """Wrap tokens already packed end to end, (N_0 + N_1 + ..., C, P, P) in layout order (as
        `glmip.sampling.tokens_batch` returns them), with no copy. Validated as `from_parts`."""
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a packed (N, C, P, P) torch tensor, got {type(tokens).__name__}")
        if not isinstance(layouts, (list, tuple)) or not layouts:
            raise ValueError("layouts must be a non-empty list of glmip.TokenLayout, one per image")
        counts = [len(layout) for layout in layouts]
        if tokens.ndim != 4 or tokens.shape[0] != sum(counts):
            raise ValueError(f"the layouts hold {sum(counts)} tokens, the packed tensor has shape "
                             f"{tuple(tokens.shape)}")
        shape = None
        for index, (part, layout) in enumerate(zip(torch.split(tokens, counts), layouts, strict=True)):
            shape = _check_image(index, part, layout, shape)
        _check_finite(tokens, counts)
        return cls._pack(tokens if tokens.dtype == torch.float32 else tokens.float(), layouts)

    @classmethod
    def from_sampled(cls, tokens: torch.Tensor, layouts: Sequence[TokenLayout]) -> TokenBatch:
        """Wrap tokens glmip itself just sampled for `layouts` (what `glmip.sampling.tokens_batch`
        returns for them), with no per-image checks: the sampler validated the layouts and samples
        finite images, so the batch's metadata is all that is built, in one pass."""
        return cls._pack(tokens, layouts)

    @classmethod
    def _pack(cls, tokens: torch.Tensor, layouts: Sequence[TokenLayout]) -> TokenBatch:
        counts = np.fromiter((len(layout) for layout in layouts), np.int64, len(layouts))
        device = tokens.device
        cu_seqlens = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)).to(device)
        image_sizes = tuple((int(layout.image_size[0]), int(layout.image_size[1])) for layout in layouts)
        columns = {name: np.concatenate([np.asarray(getattr(layout, name), dtype=np.float64) for layout in layouts])
                   for name in LAYOUT_ARRAYS}
        extent = np.repeat(np.asarray(image_sizes, np.float64), counts, axis=0)
        centres = np.stack([columns["cx"] / extent[:, 0], columns["cy"] / extent[:, 1]], axis=1).astype(np.float32)
        return cls(tokens=tokens, cu_seqlens=cu_seqlens, max_seqlen=int(counts.max()), layouts=tuple(layouts),
                   image_sizes=image_sizes, patch=int(layouts[0].patch),
                   levels=torch.from_numpy(columns["level"].astype(np.float32)).to(device),
                   centres=torch.from_numpy(centres).to(device),
                   sizes=torch.from_numpy(columns["size"].astype(np.float32)).to(device))

    # -- shape --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layouts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, TokenLayout]:
        """Image `index`'s tokens (N, C, P, P) and layout."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index a TokenBatch with an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of a batch of {len(self)}")
        index = int(index) % len(self)
        start = sum(self.lengths[:index])
        return self.tokens[start:start + self.lengths[index]], self.layouts[index]

    @property
    def lengths(self) -> tuple[int, ...]:
        """Tokens per image, as Python ints (static under torch.compile; no device sync)."""
        return tuple(len(layout) for layout in self.layouts)

    @property
    def channels(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def batch_index(self) -> torch.Tensor:
        """(ΣN,) int64: which image each packed row belongs to."""
        counts = torch.tensor(self.lengths, device=self.device)
        return torch.repeat_interleave(torch.arange(len(self), device=self.device), counts,
                                       output_size=self.tokens.shape[0])

    # -- layouts ------------------------------------------------------------------------
    def pad(self, packed: torch.Tensor, pad_to: int | None = None, value: float = 0.0) -> torch.Tensor:
        """Any per-token tensor (ΣN, ...) -> (B, L, ...), image b's rows first in row b, then `value`.

        L = `max_seqlen`, or `pad_to` (>= max_seqlen) for a fixed length.
        """
        length = self._length(pad_to)
        self._check_packed(packed)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"value (the padding) must be a number, got {value!r} ({type(value).__name__})")
        out = packed.new_full((len(self), length) + tuple(packed.shape[1:]), value)
        start = 0
        for b, count in enumerate(self.lengths):
            out[b, :count] = packed[start:start + count]
            start += count
        return out

    def valid(self, pad_to: int | None = None) -> torch.Tensor:
        """(B, L) bool, True where a padded row holds a real token."""
        length = self._length(pad_to)
        counts = torch.tensor(self.lengths, device=self.device)
        return torch.arange(length, device=self.device)[None] < counts[:, None]

    def padded(self, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, L, C, P, P) zero-padded, valid (B, L) bool, True = real token)."""
        return self.pad(self.tokens, pad_to), self.valid(pad_to)

    def nested(self, packed: torch.Tensor | None = None) -> torch.Tensor:
        """A `layout=torch.jagged` nested tensor (B, j, ...) over `packed` (default the tokens, (B, j, C, P, P)).

        Its offsets are `cu_seqlens`; it shares the packed storage when that is contiguous. For SDPA, project to
        (ΣN, heads, head_dim), nest, and `.transpose(1, 2)` to (B, heads, j, head_dim).
        """
        packed = self.tokens if packed is None else packed
        self._check_packed(packed)
        # SDPA's nested kernels need contiguous values (a view of a fused qkv projection is not).
        return torch.nested.nested_tensor_from_jagged(packed.contiguous(), offsets=self.cu_seqlens.to(torch.int64))

    def naflex(self, pad_to: int | None = None, channels_last: bool = True, *,
               mean: float | Sequence[float] | None = None,
               std: float | Sequence[float] | None = None) -> dict[str, torch.Tensor]:
        """The inputs timm's `NaFlexVit.forward(dict)` takes, normalised as the model expects.

        `patches` (B, L, P*P*C) = (token - mean) / std per channel, flattened as timm's `patchify_image`:
        (row, column, channel) with channel fastest when `channels_last` (NaFlex's default), else (channel,
        row, column); `patch_coord` (B, L, 2) int64 (row, column) on the level-0 patch grid; `patch_valid`
        (B, L) bool, True = a real token.

        `mean` and `std` (one float, or one per channel) are the model's: timm's `pretrained_cfg["mean"]` /
        `["std"]`, which `glmip.nn.from_timm(naflex_model)` passes for you. They have no default, since
        pretrained weights given the raw values see a shifted, rescaled image without a word; `mean=0,
        std=1` hands out the tokens as sampled ([0, 1] for 8- and 16-bit images).

        Convention:
            NaFlex positions are grid coordinates at one scale. A coarse token (level > 0) gets the
            level-0 grid cell holding its centre, floor(cy / P), floor(cx / P); its scale is lost
            unless the model has a level embedding, and NaFlex sizes each image's position grid from
            its largest coordinate. Exact only for a uniform level-0 layout.
        """
        shift, scale = _channel_norm(mean, std, self.channels, self.device)
        tokens = (self.tokens - shift) / scale
        tokens = tokens.permute(0, 2, 3, 1) if channels_last else tokens
        pixels = self.centres.double() * torch.tensor(self.image_sizes, dtype=torch.float64,
                                                     device=self.device)[self.batch_index()]
        coord = (pixels / self.patch).floor().long().flip(1)  # x, y -> row, column
        return {"patches": self.pad(tokens.flatten(1), pad_to), "patch_coord": self.pad(coord, pad_to),
                "patch_valid": self.valid(pad_to)}

    # -- devices and files ----------------------------------------------------------------
    def to(self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None
           ) -> TokenBatch:
        """The same batch with every tensor on `device` and the tokens in floating `dtype` (either may be given
        alone, positionally: `batch.to("cuda")`, `batch.to(torch.float16)`). Layouts stay numpy.

        Convention: like `nn.Module.to`, a dtype converts features only: `tokens` take it; `cu_seqlens`
        stays int32, `levels`, `centres` and `sizes` stay float32 (positions, where float16 would round
        a 4096-px image's centres to 2 px), `extra` keeps its dtypes."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError("pass the dtype once: batch.to(device, dtype) or batch.to(dtype)")
            device, dtype = None, device
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch dtype (tokens are features), got {dtype!r}")
        target = self.device if device is None else _as_device(device)
        moved = {name: tensor.to(target) for name, tensor in self.extra.items()}
        return TokenBatch(self.tokens.to(target, dtype), self.cu_seqlens.to(target), self.max_seqlen, self.layouts,
                          self.image_sizes, self.patch, self.levels.to(target), self.centres.to(target),
                          self.sizes.to(target), moved)

    def with_extra(self, **per_token: Any) -> TokenBatch:
        """The batch with named per-token side data added to `extra` (torch tensors or numpy arrays of
        ΣN rows, e.g. `with_extra(region=ids)`), moved to the batch's device; saved and loaded with it."""
        extra = dict(self.extra)
        for name, values in per_token.items():
            if isinstance(values, np.ndarray):
                values = torch.from_numpy(np.ascontiguousarray(values))
            if not isinstance(values, torch.Tensor) or values.ndim == 0:
                raise TypeError(f"extra {name!r} must be a torch tensor or numpy array with one row per token, "
                                f"got {type(values).__name__}")
            if values.shape[0] != self.tokens.shape[0]:
                raise ValueError(f"extra {name!r} must have one row per token ({self.tokens.shape[0]}), got "
                                 f"shape {tuple(values.shape)}")
            extra[name] = values.to(self.device)
        return replace(self, extra=extra)

    def save(self, path: str | os.PathLike[str]) -> None:
        """torch.save plain tensors, ints and dicts only (loads with `weights_only=True`): the tokens and,
        per image, cx, cy, size, level (dtype kept, so fractional levels survive), image_size, patch, and
        `extra`. The folder must exist (checked before anything is written)."""
        target = _file_path(path)
        if not target.parent.is_dir():
            raise ValueError(f"cannot write {str(target)!r}: the folder {str(target.parent)!r} does not exist")
        if target.is_dir():
            raise ValueError(f"cannot write {str(target)!r}: it is a folder; give a file path")
        layouts = [{**{name: torch.from_numpy(np.ascontiguousarray(getattr(layout, name))) for name in LAYOUT_ARRAYS},
                    "relevant": None if layout.relevant is None else torch.from_numpy(np.asarray(layout.relevant)),
                    "image_size": [int(v) for v in layout.image_size], "patch": int(layout.patch)}
                   for layout in self.layouts]
        state = {"format": SAVE_FORMAT, "version": SAVE_VERSION, "tokens": self.tokens.detach().cpu(),
                 "layouts": layouts, "extra": {name: t.detach().cpu() for name, t in self.extra.items()}}
        try:
            torch.save(state, target)
        except (OSError, RuntimeError) as error:  # torch's zip writer reports its failures as RuntimeError
            raise ValueError(f"cannot write {str(target)!r}: {getattr(error, 'strerror', None) or error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> TokenBatch:
        """A batch saved by `save` (or `glmip tokens --save-tokens`, `glmip slide tokens --save-tokens`), its
        layouts rebuilt. A damaged or foreign file raises `glmip.errors.CorruptFileError` naming the file,
        the member at fault and why; a missing file FileNotFoundError."""
        source = _file_path(path)
        target = _as_device(device)
        state = _read_state(source)
        tokens = _member(source, state, "tokens", torch.Tensor, "a tensor")
        if tokens.ndim != 4 or not tokens.is_floating_point():
            raise CorruptFileError(source, "tokens", f"must be a float (N, C, P, P) tensor, got {tokens.dtype} "
                                                     f"{tuple(tokens.shape)}")
        items = _member(source, state, "layouts", list, "a list")
        layouts, parts, start = [], [], 0
        for index, item in enumerate(items):
            layout = _read_layout(source, index, item)
            layouts.append(layout)
            parts.append(tokens[start:start + len(layout)])
            start += len(layout)
        if start != tokens.shape[0]:
            raise CorruptFileError(source, "layouts", f"the layouts hold {start} tokens but tokens has "
                                                      f"{tokens.shape[0]} rows")
        extra = state.get("extra") or {}
        if not isinstance(extra, dict) or not all(isinstance(v, torch.Tensor) for v in extra.values()):
            raise CorruptFileError(source, "extra", "must be a dict of per-token tensors")
        try:
            batch = cls.from_parts(parts, layouts).with_extra(**extra)
        except (ValueError, TypeError) as error:
            raise CorruptFileError(source, "tokens and layouts", str(error)) from None
        return batch.to(target)

    def _check_packed(self, packed: Any) -> None:
        if not isinstance(packed, torch.Tensor):
            raise TypeError(f"packed must be a torch tensor (ΣN, ...), got {type(packed).__name__}; wrap a numpy "
                            f"array with torch.from_numpy")
        if packed.ndim == 0 or packed.shape[0] != self.tokens.shape[0]:
            raise ValueError(f"packed must have one row per token ({self.tokens.shape[0]}), got "
                             f"{tuple(packed.shape)}")

    def _length(self, pad_to: int | None) -> int:
        if pad_to is None:
            return self.max_seqlen
        if not isinstance(pad_to, (int, np.integer)) or isinstance(pad_to, bool) or pad_to < self.max_seqlen:
            raise ValueError(f"pad_to must be an int >= max_seqlen ({self.max_seqlen}), got {pad_to!r}")
        return int(pad_to)


def _channel_norm(mean: Any, std: Any, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`naflex`'s mean and std as (1, C, 1, 1) float32 tensors, after checking them."""
    if mean is None or std is None:
        raise ValueError(f"naflex needs the model's normalisation: mean= and std= (one float or {channels} per "
                         "channel, e.g. timm's pretrained_cfg['mean'] / ['std']; glmip.nn.from_timm(model) passes "
                         f"them), got mean={mean!r}, std={std!r}; mean=0, std=1 keeps the sampled values")
    values = []
    for name, value in (("mean", mean), ("std", std)):
        try:
            flat = np.atleast_1d(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):
            flat = None
        if flat is None or flat.ndim != 1 or len(flat) not in (1, channels) or not np.isfinite(flat).all() or (
                name == "std" and (flat <= 0).any()):
            raise ValueError(f"naflex {name} must be one finite float or {channels} (one per channel)"
                             f"{', all > 0' if name == 'std' else ''}, got {value!r}")
        values.append(torch.tensor(np.broadcast_to(flat, (channels,)), dtype=torch.float32,
                                   device=device).view(1, -1, 1, 1))
    return values[0], values[1]


def _check_finite(packed: torch.Tensor, counts: list[int]) -> None:
    """Raise ValueError naming the first image whose tokens hold NaN or infinite values.

    One reduction over the packed tensor (one device sync on a GPU, not one per image); the images are
    searched only when it fails."""
    if bool(torch.isfinite(packed).all()):
        return
    for index, part in enumerate(torch.split(packed, counts)):
        if not bool(torch.isfinite(part).all()):
            raise ValueError(f"image {index}: tokens hold NaN or infinite values")


def _check_image(index: int, tokens: Any, layout: Any, shape: tuple[int, int] | None) -> tuple[int, int]:
    """Validate image `index`'s tokens (type, shape) and layout; return its (C, P), which must equal `shape` if
    given. Values are checked once for the whole batch (`_check_finite`)."""
    where = f"image {index}: "
    if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point():
        raise TypeError(f"{where}tokens must be a float torch tensor (N, C, P, P) as Pyramid.tokens returns, "
                        f"got {type(tokens).__name__} {getattr(tokens, 'dtype', '')}")
    if tokens.device.type == "meta":
        raise TypeError(f"{where}tokens are a meta tensor (no data); pass tokens with values, e.g. Pyramid.tokens")
    if tokens.ndim != 4 or tokens.shape[2] != tokens.shape[3]:
        raise ValueError(f"{where}tokens must have shape (N, C, P, P), got {tuple(tokens.shape)}")
    missing = [name for name in (*LAYOUT_ARRAYS, "patch", "image_size") if not hasattr(layout, name)]
    if missing:
        raise TypeError(f"{where}layout must be a glmip.TokenLayout, got {type(layout).__name__} without "
                        f"{', '.join(missing)}")
    n, channels, patch = int(tokens.shape[0]), int(tokens.shape[1]), int(tokens.shape[2])
    if n == 0:
        raise ValueError(f"{where}no tokens; every image needs at least one")
    if layout.patch != patch:
        raise ValueError(f"{where}tokens are {patch}x{patch} but the layout's patch is {layout.patch}")
    if shape is not None and shape != (channels, patch):
        raise ValueError(f"{where}tokens have C={channels}, P={patch}; image 0 has C={shape[0]}, P={shape[1]} "
                         "(one batch holds one channel count and one patch size)")
    arrays = [np.asarray(getattr(layout, name), dtype=np.float64) for name in LAYOUT_ARRAYS]
    if any(a.shape != (n,) for a in arrays):
        raise ValueError(f"{where}{n} tokens but the layout has " + ", ".join(
            f"{name} {a.shape}" for name, a in zip(LAYOUT_ARRAYS, arrays, strict=True)) + "; they must match")
    if not all(np.isfinite(a).all() for a in arrays) or arrays[3].min() < 0:
        raise ValueError(f"{where}the layout holds NaN, infinite or negative levels, or non-finite centres/sizes")
    width, height = layout.image_size
    if width < 1 or height < 1:
        raise ValueError(f"{where}image_size must be (width, height) >= 1, got {layout.image_size}")
    return channels, patch


def _per_token(layouts: Sequence[TokenLayout], name: str, device: torch.device) -> torch.Tensor:
    values = np.concatenate([np.asarray(getattr(layout, name), dtype=np.float64) for layout in layouts])
    return torch.from_numpy(values.astype(np.float32)).to(device)


def _as_device(device: Any) -> torch.device:
    """`device` (a torch.device, "cpu", "cuda:1", an int CUDA index) as a torch.device this process can use."""
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"device must be a torch.device, a string such as 'cpu' or 'cuda:0', or a CUDA index, got "
                        f"{device!r} ({type(device).__name__})")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device must name a torch device such as 'cpu', 'cuda' or 'cuda:0', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch has no CUDA device (torch.cuda.is_available() is False)")
    return resolved


def _file_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike file path, got {path!r} ({type(path).__name__})")
    return Path(path)


def _read_state(path: Path) -> dict:
    """The dict a TokenBatch file holds, or CorruptFileError saying why it cannot be read."""
    if not path.is_file():
        raise FileNotFoundError(f"no such TokenBatch file: {str(path)!r}")
    if path.stat().st_size == 0:
        raise CorruptFileError(path, "file", "is empty (0 bytes)")
    with open(path, "rb") as file:
        head = file.read(2)
    if not zipfile.is_zipfile(path):
        if head == b"PK":
            raise CorruptFileError(path, "archive", "a truncated zip archive (its central directory is missing)")
        if head[:1] != b"\x80":  # not a pickle of protocol 2+ either (torch's legacy format)
            raise CorruptFileError(path, "archive", "not a torch.save file (neither a zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of a foreign pickle before refusing it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refuses anything but tensors and plain containers
        detail = next((line.strip() for line in str(error).splitlines() if line.startswith("Unsupported")), "")
        raise CorruptFileError(path, "pickle", "holds objects other than tensors, numbers and plain containers, "
                                               "so it is not a saved TokenBatch" + (f" ({detail})" if detail else "")
                               ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise CorruptFileError(path, "archive", f"truncated or not a torch.save file "
                                                f"({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CorruptFileError(path, "format", f"not a saved glmip.TokenBatch (format {SAVE_FORMAT!r}), got "
                                               f"{found!r}")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SAVE_VERSION:
        raise CorruptFileError(path, "version", f"version {version!r}; this glmip reads versions 1..{SAVE_VERSION}")
    return state


def _member(path: Path, state: dict, key: str, kind: type | tuple[type, ...], what: str, where: str = "") -> Any:
    """`state[key]`, or CorruptFileError naming `where` + key when it is missing or not a `kind`."""
    member = f"{where}.{key}" if where else key
    if key not in state:
        raise CorruptFileError(path, member, "missing")
    if not isinstance(state[key], kind) or isinstance(state[key], bool):
        raise CorruptFileError(path, member, f"must be {what}, got {type(state[key]).__name__}")
    return state[key]


def _read_layout(path: Path, index: int, item: Any) -> TokenLayout:
    """Layout `index` of a TokenBatch file, each member checked for presence and type."""
    where = f"layouts[{index}]"
    if not isinstance(item, dict):
        raise CorruptFileError(path, where, f"must be a dict, got {type(item).__name__}")
    arrays = [_member(path, item, name, torch.Tensor, "a tensor", where).numpy() for name in LAYOUT_ARRAYS]
    patch = _member(path, item, "patch", int, "an int", where)
    size = _member(path, item, "image_size", (list, tuple), "a [width, height] list", where)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise CorruptFileError(path, f"{where}.image_size", f"must be [width, height], two ints, got {size!r}")
    relevant = item.get("relevant")
    if relevant is not None and not isinstance(relevant, torch.Tensor):
        raise CorruptFileError(path, f"{where}.relevant", f"must be a bool tensor or None, got "
                                                         f"{type(relevant).__name__}")
    return TokenLayout(*arrays, patch=patch, image_size=(size[0], size[1]),
                       relevant=None if relevant is None else relevant.numpy())
