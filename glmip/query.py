"""Relevance from a text query: image windows scored against the text by a CLIP-style model the
user supplies (a transformers CLIP model, an open_clip model, or a local transformers directory).

Nothing is ever downloaded: a path must be a local directory, loaded with `local_files_only`.
The windows are cut from the image's pyramid on the GPU (`Pyramid.tokens`, one window a token at
the level that fits it to the model's input size), so a query costs one dispatch plus the model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .layout import TokenLayout
from .maps import rescale_to_unit

if TYPE_CHECKING:
    from .gl.texture import MipTexture

__all__ = ["sliding_windows", "ClipScorer", "as_rgb", "query_relevance"]

# OpenAI CLIP's pixel normalisation, used when neither the model nor a processor says otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_SCALES = (0.5, 0.25)


def sliding_windows(image_size: tuple[int, int], scales: tuple[float, ...], input_size: int) -> TokenLayout:
    """Windows of side `scale` x the image's shorter side, overlapping by half, inside the image;
    each sampled at the level that brings it to `input_size` pixels (fractional, >= 0)."""
    width, height = image_size
    cx, cy, size = [], [], []
    for scale in scales:
        side = max(1.0, scale * min(width, height))
        columns = max(1, math.ceil((width - side) / (side / 2)) + 1)
        rows = max(1, math.ceil((height - side) / (side / 2)) + 1)
        xs = np.linspace(side / 2, width - side / 2, columns) if columns > 1 else np.array([width / 2])
        ys = np.linspace(side / 2, height - side / 2, rows) if rows > 1 else np.array([height / 2])
        gx, gy = np.meshgrid(xs, ys)
        cx.append(gx.ravel())
        cy.append(gy.ravel())
        size.append(np.full(gx.size, side))
    sizes = np.concatenate(size)
    return TokenLayout(cx=np.concatenate(cx), cy=np.concatenate(cy), size=sizes,
                       level=np.maximum(np.log2(sizes / input_size), 0.0), patch=int(input_size),
                       image_size=(int(width), int(height)))


class ClipScorer:
    """A CLIP-style model behind one interface: `image_features(pixels)` and `text_features(texts)`,
    both L2-normalised (N, D) torch tensors. Build it with `ClipScorer.load(model, tokenizer)`."""

    def __init__(self, model: Any, tokenizer: Any, kind: str, input_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.input_size, self.mean, self.std = input_size, mean, std

    @classmethod
    def load(cls, model: Any, tokenizer: Any = None, *, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None) -> ClipScorer:
        """From a transformers CLIP-style model object (`get_image_features`/`get_text_features`), an
        open_clip model (`encode_image`/`encode_text`, with its tokenizer), or a local directory
        saved by transformers (model and tokenizer loaded from it, offline)."""
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_dir():
                raise ValueError(f"a query model path must be a local directory saved by transformers, got {model!r} "
                                 "(glmip never downloads models)")
            from transformers import AutoModel, AutoTokenizer

            loaded = AutoModel.from_pretrained(path, local_files_only=True)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
            return cls.load(loaded, tokenizer, mean=mean, std=std)
        if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
            if tokenizer is None or not callable(tokenizer):
                raise TypeError("a transformers model needs its tokenizer (a callable such as CLIPTokenizer)")
            vision = getattr(getattr(model, "config", None), "vision_config", None)
            size = getattr(vision, "image_size", None)
            processor = getattr(tokenizer, "image_processor", None)
            mean = mean or tuple(getattr(processor, "image_mean", None) or CLIP_MEAN)
            std = std or tuple(getattr(processor, "image_std", None) or CLIP_STD)
            if hasattr(tokenizer, "tokenizer"):  # a processor: its text half
                tokenizer = tokenizer.tokenizer
            kind = "transformers"
        elif hasattr(model, "encode_image") and hasattr(model, "encode_text"):
            if tokenizer is None or not callable(tokenizer):
                raise TypeError("an open_clip model needs its tokenizer (open_clip.get_tokenizer(name))")
            visual = getattr(model, "visual", None)
            size = getattr(visual, "image_size", None)
            config = getattr(visual, "preprocess_cfg", {}) or {}
            mean = mean or tuple(config.get("mean", CLIP_MEAN))
            std = std or tuple(config.get("std", CLIP_STD))
            kind = "open_clip"
        else:
            raise TypeError(f"query models are transformers CLIP-style models, open_clip models or local "
                            f"directories; got {type(model).__name__}")
        if isinstance(size, (tuple, list)):
            size = size[0]
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"cannot tell the model's input image size (got {size!r})")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean!r}, {std!r}")
        return cls(model, tokenizer, kind, size, tuple(mean), tuple(std))

    def _features(self, output: Any) -> Any:
        import torch

        if not isinstance(output, torch.Tensor):  # transformers 5 returns a model output
            output = output.pooler_output
        return torch.nn.functional.normalize(output.float(), dim=-1)

    def image_features(self, pixels: Any) -> Any:
        """(N, D) features of (N, 3, S, S) float images in [0, 1], normalised here."""
        import torch

        mean = torch.tensor(self.mean, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype).view(1, 3, 1, 1)
        pixels = (pixels - mean) / std
        with torch.no_grad():
            if self.kind == "transformers":
                return self._features(self.model.get_image_features(pixel_values=pixels))
            return self._features(self.model.encode_image(pixels))

    def text_features(self, texts: list[str]) -> Any:
        import torch

        with torch.no_grad():
            if self.kind == "transformers":
                encoded = self.tokenizer(texts, return_tensors="pt", padding=True)
                return self._features(self.model.get_text_features(input_ids=encoded["input_ids"],
                                                                   attention_mask=encoded.get("attention_mask")))
            return self._features(self.model.encode_text(self.tokenizer(texts)))


def as_rgb(windows: Any) -> Any:
    """(N, C, S, S) samples as 3 channels: grey repeated, alpha dropped."""
    channels = windows.shape[1]
    if channels >= 3:
        return windows[:, :3]
    return windows[:, :1].expand(-1, 3, -1, -1)


def query_relevance(pyramid: MipTexture, text: str, model: Any, tokenizer: Any = None, *,
                    scales: tuple[float, ...] = DEFAULT_SCALES, size: tuple[int, int] | None = None,
                    batch: int = 64, return_scores: bool = False) -> Any:
    """Relevance of each image region to `text`: float32 (h, w) in [0, 1] (min-max of the scores).

    Every window (side = scale x the shorter side, half-overlapping) is cut from the pyramid at
    the model's input size and scored by cosine similarity with the text; a pixel's relevance is
    the mean score of the windows covering it, each weighted by a tent peaking at its centre (so
    the map at a window's centre is that window's score, and bilinear between neighbours).
    `model`/`tokenizer` as in `ClipScorer.load` (or a ready `ClipScorer`). `size` = (width, height)
    of the map, default 1/8 of the image.
    With `return_scores`, also the windows and their scores.
    """
    import torch

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the query must be a non-empty string, got {text!r}")
    if not scales or any(not (0.0 < float(s) <= 1.0) for s in scales):
        raise ValueError(f"scales are fractions of the image's shorter side in (0, 1], got {scales!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    scorer = model if isinstance(model, ClipScorer) else ClipScorer.load(model, tokenizer)
    width, height = size or (max(1, pyramid.width // 8), max(1, pyramid.height // 8))
    if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (width, height)):
        raise ValueError(f"size must be two positive ints (width, height), got {size!r}")
    windows = sliding_windows((pyramid.width, pyramid.height), tuple(scales), scorer.input_size)
    crops = as_rgb(pyramid.tokens(windows))
    text_features = scorer.text_features([text])
    scores = torch.cat([scorer.image_features(crops[i:i + batch]) @ text_features.T
                        for i in range(0, len(crops), batch)])[:, 0].numpy().astype(np.float64)

    total = np.zeros((height, width))
    weight = np.zeros((height, width))
    sx, sy = width / pyramid.width, height / pyramid.height
    columns, rows = (np.arange(width) + 0.5) / sx, (np.arange(height) + 0.5) / sy  # map pixel centres, image px
    for x, y, side, score in zip(windows.cx, windows.cy, windows.size, scores, strict=True):
        tent_x = np.clip(1 - np.abs(columns - x) / (side / 2), 0, None) + 1e-3 * (np.abs(columns - x) <= side / 2)
        tent_y = np.clip(1 - np.abs(rows - y) / (side / 2), 0, None) + 1e-3 * (np.abs(rows - y) <= side / 2)
        w = tent_y[:, None] * tent_x[None, :]
        total += w * score
        weight += w
    mean = total / np.maximum(weight, 1e-12)
    relevance = rescale_to_unit(mean).astype(np.float32)
    return (relevance, windows, scores) if return_scores else relevance
