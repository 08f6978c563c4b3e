"""Benchmark: one small ViT trained to read a code through glmip tokens, uniform tokens and dense patches.

The task. Seeded W x W RGB scenes (default 128², see "Size" below): a noisy grey background under
clutter (stripes, checkerboards, uniform noise, smooth photo-like blobs, and strings of letters and
digits at 10 to 28 px in random colours; two patches and two strings at 128²) and one light panel
holding a code of ``--code-length`` (2) characters from ``--alphabet`` (the 10 digits), drawn at 17,
18 or 19 pt (digits 12 to 14 px high, about one glyph per 16-px level-0 token) in Pillow's bundled
Aileron or, where installed, DejaVu Sans Mono, the character pitch the font's widest digit + 1 or
2 px. The answer is the code; the model has one 10-way classification head per character position.

What glmip is told. A relevance map of (W/8)² cells: the panel's box grown by a random margin of
6-20 px on each side, shifted by up to ±8 px, rasterised at 8-px cells and blurred (Gaussian,
sigma one cell): where a query or a gaze would point, coarse, never the glyph positions.

Inputs, every one through the same ViT and the same `glmip.nn.LodPatchEmbed` (16-px patch, sin-cos
position, level embedding on, one class token):

* ``glmip-<B>``: `glmip.tokenize(scenes, relevance maps, budget=B, context=ctx)` (hardware
  mipmaps, trilinear), B in ``--budgets`` (64, 100): the library's quadtree on the map.
* ``uniform-<B>``: one grid of square tokens, the finest that fits B (`bench.tokens.uniform_side`:
  side s >= 16 with ceil(W/s)² <= B, level log2(s/16), fractional), sampled by glmip from the
  same kind of pyramid (`glmip.sampling.tokens_batch`).
* ``dense``: every 16x16 patch of the full-resolution scene (`bench.tokens.dense_tokens`, an
  ``unfold``: (W/16)² tokens, a uniform level-0 layout).

Rows given no relevance at all (the oracle-free rows, ``ORACLE_FREE``):

* ``detail-<B>``: `glmip.tokenize_pyramids(..., criterion="detail")`, the quadtree that minimises the
  detail lost by coarser cells, computed from the scene's own mip chain.
* ``saliency-<B>``: the same quadtree on `glmip.saliency`'s centre-surround map.
* ``c2f-<B>``: coarse to fine by the model's own class attention (`glmip.nn.scored_forward`): the 2x2
  level-2 cells, then splits of the highest-scored tokens per `refine_schedule` (16: 4 -> 10 -> 16
  tokens), every pass through the same ViT; the loss is the mean over passes and the coarse passes'
  FLOPs count against the row.

And ``mipvit-dense`` / ``mipvit-<B>``: `glmip.hierarchy.MipViT` (stages of levels 0, 1, 2; by default
widths 64 / 64 / 128, 3 / 1 / 1 blocks, a class token through every stage: ``--mip-dims``,
``--mip-depths``, ``--mip-head``) on the level grids, every cell or the sparse fine stages `mip_budgets`
keeps by the given relevance, against the plain ViT on the same budget. Each row records its
configuration; ``--reuse`` refuses a mipvit row of another configuration.

``--reuse A.json [B.json ...]`` merges the rows of earlier complete runs trained with the same settings
(``TRAINING_KEYS``) into this report (``--inputs none``: merge only). Every split of every chosen input is
held in memory (about 2 GB per input at the default size), so on a 24 GiB machine run a few inputs per
process and merge.

Every input is tokenised once, up front, for all its train / validation / test scenes and cached as
8-bit values (the texture's own precision; trilinear blends between texels are rounded to the nearest
1/255) on ``--device``, padded to one length per input (the budget for glmip; dense's patches cut once)
with a per-token valid mask, levels and centres, so a training step gathers its batch on the device with
one index tensor and runs `TokenClassifier.forward_padded`: no host work, fixed shapes, the loss read
only every ``--log-every`` steps; ``--compile`` hands the gather and forward to `torch.compile` (CUDA
graphs on CUDA). Each
scene's pyramid is built once and sampled by every GL input. With ``--workers N`` the scenes are drawn
and tokenised in N spawned processes, each with its own `glmip.Context` (the GPU run: 15 of the
machine's 16 cores). Scene seeds: train ``seed * 10^6 + i``, validation ``seed * 10^6 + 500000 + i``,
test ``seed * 10^6 + 700000 + i``.

Training, identical for every input: the same initial weights (``torch.manual_seed(seed)``), the same
batch order, ``--steps`` AdamW steps (lr ``--lr``, weight decay 0.05, batch ``--batch``, linear warm-up
over the first 10% then cosine to zero; ``--precision bf16`` runs the forward under bfloat16 autocast),
no augmentation (no scene repeats across splits). With ``--train-budget-s`` the step count, still one for
every input, is chosen from each input's timed steps so that all trainings fit the budget (and
``--deadline-s``, the whole run's limit). The loss is the mean cross-entropy of the per-character heads.
The final slope of each training curve is the least-squares slope of the per-step loss over the last 20%
of steps, given as the loss change over that stretch. The validation split is read four times during
training (curve only; the test figures are of the last weights, nothing is selected on validation).

Measures, on the test scenes: exact-code accuracy (all characters right) and per-character accuracy;
tokens per image (mean); ViT FLOPs per image counted by ``torch.utils.flop_counter.FlopCounterMode`` over
one forward (embedding + encoder + head, batch 1) on each of the first 8 test scenes, averaged (it counts
matrix products and attention, not norms or activations); tokenisation ms per image (wall time of
tokenising the first ``--timing-scenes`` test scenes in this process in chunks of ``--chunk``, the second
of two passes: pyramid upload and build, allocation, sampling, read-back into torch, each input charged
the whole pyramid build; dense: stacking and cutting patches; the relevance maps are given, not timed);
ViT ms per image (a forward in ``inference_mode`` over a batch of ``--batch`` test scenes, median of 3,
divided by the batch); training wall time. CPU torch and llvmpipe share a 2-core machine with other work:
timings carry tens of percent noise.

Size. The issue asks for 512² scenes, 4-6 characters and budgets 64, 100 and 256. On the 2-core CPU a
step of this ViT takes 2.6 s at 256 tokens (256², batch 64), and 250 steps at 256² learned nothing
(every input at chance); at 128² a batch-32 step takes about 57 ms for dense (64 tokens) and 20 ms for
glmip-16, and a model's loss first leaves ln 10 after some 1000-2000 steps. So on the CPU every input
shrinks alike: 128² scenes (64 dense patches), a 2-character code, glyphs about one level-0 token high,
32000 training scenes, 24000 steps of 32 (at 12000 every loss was still
falling), budgets 16 and 25 (a quarter and 0.39 of dense, as 64 and 100 are of dense at 256²). At this
size the issue's 10x FLOP ratio cannot be reached by construction, so the report also counts the same
ViT's FLOPs at 512² for 64, 100 and 256 tokens against dense's 1024 (``issue_size_flops``). The issue's
size runs on a GPU: scripts/gpu-run.sh has the command. Dense runs first and the report is rewritten
after each input, so a run cut short keeps what it finished (``complete`` says whether every input did).

Usage::

    python -m bench.learn --seed 0 [--quick] [--out bench/results/learn-<device>.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ticker import NullFormatter
from PIL import Image, ImageDraw, ImageFont
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import glmip
from bench.harness import environment, figure, markdown_table, save_figure, sync, torch_device_label, write_report
from bench.tokens import INK, PANEL, _texture, dense_patches, font, grid_layout, uniform_side
from glmip.grids import LevelGrid
from glmip.hierarchy import MipViT
from glmip.layout import TokenLayout
from glmip.models import TokenClassifier
from glmip.nn import scored_forward
from glmip.refine import cover_layout
from glmip.sampling import tokens_batch
from glmip.token_batch import TokenBatch

ROOT = Path(__file__).resolve().parent.parent
PATCH = 16
RELEVANCE_CELL = 8  # pixels per relevance-map cell
FONT_SIZES = (17, 18, 19)  # digits 12-14 px high: about one glyph per level-0 token
SYSTEM_FONTS = ("DejaVuSansMono.ttf",)
DISTRACTOR_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz0123456789 "
SPLIT_OFFSETS = {"train": 0, "val": 500_000, "test": 700_000}
FLOP_SCENES = 8
PYRAMID_METHOD = "hardware"
ISSUE_SIZE, ISSUE_BUDGETS = 512, (64, 100, 256)  # where the FLOP ratio is also counted
REFINE_LEVELS = (2, 1, 0)  # coarse to fine: the level-2 cover, refined twice, down to level 0
MIP_LEVELS = (0, 1, 2)  # MipViT's stages, finest first, 16-texel cells
# Default stages: the finest as wide and deep as the plain ViT (it reads the glyphs), channels growing as MViT's.
MIP_DIMS, MIP_DEPTHS, MIP_HEADS = (64, 64, 128), (3, 1, 1), (2, 4, 4)


# -- scenes ---------------------------------------------------------------------------------
@dataclass
class CodeScene:
    image: np.ndarray  # (H, W, 3) uint8
    code: str
    box: tuple[int, int, int, int]  # panel x0, y0, x1, y1 (half-open)
    relevance: np.ndarray  # (H / 8, W / 8) float32 in [0, 1], what glmip.tokenize sees
    font: str = ""


@dataclass(frozen=True)
class Fonts:
    """The fonts scenes are drawn in: Pillow's bundled one always, the system fonts found."""

    names: tuple[str, ...]
    paths: tuple[str | None, ...]  # None = Pillow's bundled font

    @classmethod
    def available(cls) -> Fonts:
        names, paths = [" ".join(_font(None, FONT_SIZES[0]).getname())], [None]
        for path in SYSTEM_FONTS:
            try:
                loaded = ImageFont.truetype(path, FONT_SIZES[0])
            except OSError:
                continue
            names.append(" ".join(loaded.getname()))
            paths.append(path)
        return cls(tuple(names), tuple(paths))

    def load(self, index: int, size: int) -> ImageFont.FreeTypeFont:
        return _font(self.paths[index], size)


@functools.lru_cache(maxsize=64)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    """A loaded font, kept: loading one costs more than drawing a scene's text with it."""
    return font(size) if path is None else ImageFont.truetype(path, size)


def _blobs(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth, photo-like colour noise: a coarse random grid upsampled bilinearly."""
    coarse = torch.from_numpy(rng.random((1, 3, int(rng.integers(3, 9)), int(rng.integers(3, 9))))).float()
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return (smooth.numpy() * 255).clip(0, 255).astype(np.uint8)


def _blur(values: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 0, values)
    return np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, out)


def coarse_relevance(rng: np.random.Generator, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """(size / 8)² float32: the panel box grown by 6-20 px, shifted by up to ±8 px, at 8-px cells, blurred."""
    x0, y0, x1, y1 = box
    margin = rng.uniform(6, 20, 4)
    shift = rng.uniform(-8, 8, 2)
    cells = math.ceil(size / RELEVANCE_CELL)
    lo_x, hi_x = (x0 - margin[0] + shift[0]) / RELEVANCE_CELL, (x1 + margin[1] + shift[0]) / RELEVANCE_CELL
    lo_y, hi_y = (y0 - margin[2] + shift[1]) / RELEVANCE_CELL, (y1 + margin[3] + shift[1]) / RELEVANCE_CELL
    centres = np.arange(cells) + 0.5
    inside = ((centres >= lo_y) & (centres <= hi_y))[:, None] & ((centres >= lo_x) & (centres <= hi_x))[None]
    blurred = _blur(inside.astype(np.float64), sigma=1.0)
    return (blurred / max(blurred.max(), 1e-9)).astype(np.float32)


def make_code_scene(seed: int, size: int, fonts: Fonts, alphabet: str, length: int) -> CodeScene:
    """One cluttered size x size scene with a light panel holding a `length`-character code."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(128, 6, (size, size, 1)), 0, 255).astype(np.uint8).repeat(3, 2)  # grey: one channel, 3x
    area = size * size
    for _ in range(max(2, area // 30000)):  # textures and photo-like blobs
        w, h = int(rng.integers(size // 12, size // 3)), int(rng.integers(size // 12, size // 3))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        image[y:y + h, x:x + w] = _blobs(rng, w, h) if rng.random() < 0.3 else _texture(rng, w, h)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(max(2, area // 30000)):  # distracting text, digits included, many sizes and colours
        text = "".join(rng.choice(list(DISTRACTOR_CHARS), int(rng.integers(4, 14))))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.text((int(rng.integers(0, size - 30)), int(rng.integers(0, size - 16))), text,
                  font=_font(None, int(rng.choice([10, 12, 14, 18, 28]))), fill=colour)
    face = int(rng.integers(len(fonts.paths)))
    f = fonts.load(face, int(rng.choice(FONT_SIZES)))
    boxes = [f.getbbox(c) for c in alphabet]
    pitch = max(b[2] for b in boxes) + int(rng.integers(1, 3))
    top, bottom = min(b[1] for b in boxes), max(b[3] for b in boxes)
    pad = int(rng.integers(3, 6))
    pw, ph = length * pitch + 2 * pad, bottom - top + 2 * pad
    x0, y0 = int(rng.integers(2, size - pw - 2)), int(rng.integers(2, size - ph - 2))
    tint = rng.integers(-12, 13, 3)
    draw.rectangle([x0, y0, x0 + pw - 1, y0 + ph - 1], fill=tuple(int(c) for c in np.clip(np.add(PANEL, tint), 0,
                                                                                           255)))
    code = "".join(str(rng.choice(list(alphabet))) for _ in range(length))
    for i, c in enumerate(code):
        draw.text((x0 + pad + i * pitch, y0 + pad - top), c, font=f, fill=INK)
    box = (x0, y0, x0 + pw, y0 + ph)
    return CodeScene(np.asarray(canvas).copy(), code, box, coarse_relevance(rng, box, size), fonts.names[face])


def draw_scenes(split: str, start: int, count: int, args: argparse.Namespace, fonts: Fonts) -> list[CodeScene]:
    """Scenes `start` .. `start + count - 1` of `split` (seeds ``seed * 10^6 + SPLIT_OFFSETS[split] + i``)."""
    base = args.seed * 1_000_000 + SPLIT_OFFSETS[split]
    return [make_code_scene(base + i, args.size, fonts, args.alphabet, args.code_length)
            for i in range(start, start + count)]


# -- inputs and their token caches ------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """One row of the study. kind: "dense", "glmip" (given relevance), "uniform", "detail" (no relevance: the
    content quadtree), "saliency" (`glmip.saliency` as relevance), "c2f" (coarse to fine by the model's own
    class attention) or "mipvit" (`glmip.hierarchy.MipViT` on level grids, sparse fine stages by the given
    relevance; budget None: every cell)."""

    name: str
    kind: str
    budget: int | None


ORACLE_FREE = ("detail", "saliency", "c2f")  # kinds given no relevance at all
GL_KINDS = ("glmip", "uniform", "detail", "saliency")  # kinds whose tokens are one layout per image

class PaddedBatch(NamedTuple):
    """A batch gathered from a `Cache` on its device, fixed shapes: what `TokenClassifier.forward_padded` takes."""

    tokens: torch.Tensor  # (n, L, C, P, P) float in [0, 1]
    levels: torch.Tensor  # (n, L) float32
    positions: torch.Tensor  # (n, L, 2) float32, token centres x, y in level-0 pixels
    valid: torch.Tensor | None  # (n, L) bool, True = a real token; None where every row is full
    codes: torch.Tensor  # (n, length) int64 character indices


@dataclass
class Cache:
    """One split's tokens for one input, padded to one length and kept on the training device.

    A batch is one `index_select` per tensor with a device index tensor (`batch`): no loop over images, no
    host work, the same shapes every step (L is fixed per input: the budget for glmip, the grid's count for
    uniform and dense). `token_batch` gives the same images as a packed `TokenBatch` (host work: FLOP counts,
    the packed path's checks).

    Convention: image b's k-th token, in its layout's order, is tokens[b, k] for k < counts[b]; the rows after
    it are zeros with valid False. Token values are 8-bit (value / 255 is what the model sees)."""

    tokens: torch.Tensor  # (B, L, C, P, P) uint8
    levels: torch.Tensor  # (B, L) float32
    positions: torch.Tensor  # (B, L, 2) float32, centres in level-0 pixels
    valid: torch.Tensor | None  # (B, L) bool; None where every image has L tokens
    layouts: list[TokenLayout]
    codes: torch.Tensor  # (B, length) int64 character indices

    def __len__(self) -> int:
        return len(self.layouts)

    def batch(self, index: torch.Tensor) -> PaddedBatch:
        """(n,) int64 image indices on the cache's device -> their padded batch, gathered on the device."""
        return PaddedBatch(self.tokens.index_select(0, index).float().div(255), self.levels.index_select(0, index),
                           self.positions.index_select(0, index),
                           None if self.valid is None else self.valid.index_select(0, index),
                           self.codes.index_select(0, index))

    def token_batch(self, index: Sequence[int]) -> TokenBatch:
        """Images `index` as a packed `TokenBatch` (each image's real tokens with its layout), assembled on the
        host as bench.learn did per step before its caches were padded."""
        counts = self.counts
        picked = torch.cat([self.tokens[i, :counts[i]] for i in index])
        return TokenBatch.from_packed(picked.float().div_(255), [self.layouts[i] for i in index])

    @property
    def counts(self) -> np.ndarray:
        """(B,) int64 tokens per image."""
        return np.fromiter((len(layout) for layout in self.layouts), np.int64, len(self.layouts))

    @property
    def length(self) -> int:
        """L, the padded length."""
        return int(self.tokens.shape[1])


def patches_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8, H and W multiples of 16 -> (B, (H / 16) * (W / 16), C, 16, 16) uint8, each image's
    16-px squares row-major (`bench.tokens.dense_patches` without the float conversion)."""
    b, c, h, w = images.shape
    grid = images.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b, (h // PATCH) * (w // PATCH), c, PATCH, PATCH)


def inputs_for(budgets: list[int]) -> list[Input]:
    """Dense first (the reference), then MipViT on every cell, then at each budget, smallest first: glmip, uniform,
    the oracle-free rows (detail, saliency, coarse to fine) and sparse MipViT."""
    return [Input("dense", "dense", None), Input("mipvit-dense", "mipvit", None)] + [
        Input(f"{kind}-{b}", kind, b) for b in sorted(budgets)
        for kind in ("glmip", "uniform", *ORACLE_FREE, "mipvit")]


def _to_uint8(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.clamp(0, 1).mul(255).round_().to(torch.uint8)


@dataclass
class Tokenised:
    """What one chunk of scenes gives every chosen input: 8-bit tokens (dense: the images), layouts, MipViT's level
    grids (per level: 8-bit tokens, positions, valid, grid) and the seconds each input's tokenisation took (its
    share of the pyramid builds included)."""

    tokens: dict[str, torch.Tensor]
    layouts: dict[str, list[TokenLayout]]
    seconds: dict[str, float]
    codes: list[str]
    grids: dict[str, list[tuple[torch.Tensor, ...]]] = field(default_factory=dict)


def superset_layout(width: int, height: int) -> TokenLayout:
    """Every quadtree cell at `REFINE_LEVELS` (coarsest first, each level row-major, `glmip.cover_layout`'s
    order): any layout coarse-to-fine reaches from the level-2 cover is a subset of it, so its tokens, sampled
    once, serve every pass of every training step by a gather on the device."""
    parts = [cover_layout((width, height), PATCH, level) for level in REFINE_LEVELS]
    return TokenLayout(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("cx", "cy", "size", "level")),
                       patch=PATCH, image_size=(width, height))


def mip_budgets(budget: int | None, size: int) -> list[int | None] | None:
    """Cells MipViT keeps per stage (levels `MIP_LEVELS`) at `budget` tokens in all on size² scenes: the coarsest
    grid whole, what is left split between levels 1 and 0 (level 0 the larger half), each at most its grid (what
    one cannot hold goes to the other);
    None (budget None): every cell of every level."""
    if budget is None:
        return None
    grid = [math.ceil(size / (PATCH << level)) ** 2 for level in MIP_LEVELS]
    rest = budget - grid[-1]
    fine = min(grid[0], math.ceil(rest / 2))
    middle = min(grid[1], rest - fine)
    return [min(grid[0], rest - middle), middle, None]  # what level 1 cannot hold goes back to level 0


def _relevant_tokens(batch: Any, item: Input, scenes: list[CodeScene]) -> TokenBatch:
    """The budgeted quadtree of a relevance-driven input, through `glmip.tokenize_pyramids` as a user would call it."""
    if item.kind == "glmip":
        return glmip.tokenize_pyramids(batch, [s.relevance for s in scenes], item.budget, PATCH)
    if item.kind == "detail":  # no relevance: where a coarser token would lose the most
        return glmip.tokenize_pyramids(batch, None, item.budget, PATCH, criterion="detail")
    return glmip.tokenize_pyramids(batch, glmip.saliency, item.budget, PATCH)


def tokenise_chunk(ctx: glmip.Context, items: list[Input], scenes: list[CodeScene]) -> Tokenised:
    """Every input in `items` for `scenes`: one `PyramidBatch` is built and sampled by every GL input.

    glmip-B, detail-B and saliency-B are `glmip.tokenize_pyramids` on it (the given maps; criterion "detail" and
    no relevance; `glmip.saliency`); uniform-B samples one grid; c2f-B samples the quadtree superset
    (`superset_layout`) the passes gather from; mipvit-* takes `PyramidBatch.grids` of `MIP_LEVELS` (sparse fine
    levels by the given maps at `mip_budgets`); dense keeps the images whole (patches are cut when cached)."""
    images = [s.image for s in scenes]
    height, width = images[0].shape[:2]
    out = Tokenised({}, {}, {}, [s.code for s in scenes])
    gl_items = [item for item in items if item.kind != "dense"]
    if gl_items:
        begin = time.perf_counter()
        with ctx.pyramids(images, method=PYRAMID_METHOD) as batch:
            build_s = time.perf_counter() - begin
            for item in gl_items:
                begin = time.perf_counter()
                if item.kind == "mipvit":
                    maps = None if item.budget is None else [s.relevance for s in scenes]
                    grids = batch.grids(list(MIP_LEVELS), PATCH, relevance=maps, budget=mip_budgets(item.budget, width))
                    out.grids[item.name] = [(_to_uint8(g.tokens), g.positions, g.valid, g.grid) for g in grids]
                    out.seconds[item.name] = build_s + time.perf_counter() - begin
                    continue
                if item.kind in ("glmip", "detail", "saliency"):
                    sampled = _relevant_tokens(batch, item, scenes)
                    tokens, layouts = sampled.tokens, list(sampled.layouts)
                else:
                    if item.kind == "uniform":
                        layout = grid_layout(width, height, uniform_side(width, height, item.budget, integer=False))
                    else:
                        layout = superset_layout(width, height)
                    layouts = [layout] * len(scenes)
                    tokens = tokens_batch(batch, layouts, PATCH)
                out.seconds[item.name] = build_s + time.perf_counter() - begin
                out.tokens[item.name], out.layouts[item.name] = _to_uint8(tokens), layouts
    for item in items:
        if item.kind == "dense":
            begin = time.perf_counter()
            out.tokens[item.name] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
            out.seconds[item.name] = time.perf_counter() - begin
            out.layouts[item.name] = [grid_layout(width, height, PATCH)] * len(scenes)
    return out


@dataclass
class GridCache:
    """One split's level grids for a MipViT input, kept on the training device; a batch is one `index_select` per
    tensor, returned as `glmip.grids.LevelGrid`s (what `MipViT` takes).

    Convention: per level l (`MIP_LEVELS` order), tokens (B, N_l, C, P, P) uint8 (value / 255 is what the model
    sees), positions (B, N_l, 2) int64 (row, col), valid (B, N_l) bool, grid (B, 2) int64, as `PyramidBatch.grids`
    returns them; N_l is the same in every chunk (every cell, or the level's fixed budget)."""

    levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    shapes: list[tuple[int, int]]
    codes: torch.Tensor

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def batch(self, index: torch.Tensor) -> list[LevelGrid]:
        return [LevelGrid(level, PATCH, tokens.index_select(0, index).float().div(255),
                          positions.index_select(0, index), valid.index_select(0, index), grid.index_select(0, index),
                          shape)
                for level, (tokens, positions, valid, grid), shape in zip(MIP_LEVELS, self.levels, self.shapes,
                                                                            strict=True)]

    @property
    def counts(self) -> np.ndarray:
        """(B,) int64 cells per image over every stage."""
        return sum(valid.sum(1) for _, _, valid, _ in self.levels).cpu().numpy().astype(np.int64)


def build_caches(parts: list[Tokenised], items: list[Input], alphabet: str,
                 device: torch.device) -> dict[str, Cache | GridCache]:
    """One padded `Cache` (a `GridCache` for MipViT inputs) per input from the chunks of one split, in scene
    order, on `device`.

    L is the budget for the budgeted quadtrees (glmip, detail, saliency: so every split of an input has one
    shape), else the (uniform) token count; each chunk is scattered into a tensor allocated once on `device`
    (no second copy of a split)."""
    caches: dict[str, Cache | GridCache] = {}
    codes = torch.tensor([[alphabet.index(c) for c in code] for part in parts for code in part.codes],
                         dtype=torch.int64, device=device)
    for item in items:
        if item.kind == "mipvit":
            levels = [tuple(torch.cat([part.grids[item.name][i][j] for part in parts]).to(device) for j in range(4))
                      for i in range(len(MIP_LEVELS))]
            shapes = [tuple(int(v) for v in grid.max(0).values) for _, _, _, grid in levels]
            caches[item.name] = GridCache(levels, shapes, codes)
            continue
        layouts = [layout for p in parts for layout in p.layouts[item.name]]
        counts = np.fromiter((len(layout) for layout in layouts), np.int64, len(layouts))
        budgeted = item.kind in ("glmip", "detail", "saliency")
        length = max(int(item.budget), int(counts.max())) if budgeted else int(counts.max())
        channels = int(parts[0].tokens[item.name].shape[1])
        tokens = torch.zeros((len(layouts), length, channels, PATCH, PATCH), dtype=torch.uint8, device=device)
        start = 0
        for part in parts:
            chunk = part.tokens[item.name].to(device)
            n = len(part.layouts[item.name])
            if item.kind == "dense":
                tokens[start:start + n] = patches_uint8(chunk)
            else:
                chunk_counts = torch.from_numpy(counts[start:start + n]).to(device)
                image = torch.repeat_interleave(torch.arange(n, device=device), chunk_counts, output_size=len(chunk))
                first = torch.cumsum(chunk_counts, 0) - chunk_counts
                tokens[start + image, torch.arange(len(chunk), device=device) - first[image]] = chunk
            start += n
        valid = torch.from_numpy(np.arange(length)[None] < counts[:, None]).to(device)
        per_token = np.zeros((len(layouts), length, 3), np.float32)  # level, x, y
        rows = np.repeat(np.arange(len(layouts)), counts)
        columns = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        per_token[rows, columns] = np.stack([np.concatenate([np.asarray(getattr(layout, name), np.float64)
                                                             for layout in layouts]) for name in ("level", "cx", "cy")],
                                            1)
        per_token = torch.from_numpy(per_token).to(device)
        caches[item.name] = Cache(tokens, per_token[..., 0].contiguous(), per_token[..., 1:].contiguous(),
                                  None if bool(valid.all()) else valid, layouts, codes)
    return caches


_WORKER: dict[str, Any] = {}


def _worker_start(args: argparse.Namespace, items: list[Input]) -> None:
    """A spawned tokenising process: one thread for torch, its own glmip.Context, the fonts loaded once."""
    torch.set_num_threads(1)
    _WORKER.update(args=args, items=items, fonts=Fonts.available(), ctx=glmip.Context())


def _worker_chunk(task: tuple[str, int, int]) -> Tokenised:
    split, start, count = task
    scenes = draw_scenes(split, start, count, _WORKER["args"], _WORKER["fonts"])
    return tokenise_chunk(_WORKER["ctx"], _WORKER["items"], scenes)


def tokenise_split(split: str, count: int, args: argparse.Namespace, items: list[Input], fonts: Fonts,
                   ctx: glmip.Context, pool: Any = None) -> dict[str, Cache]:
    """Scenes `split`[0:count] drawn and tokenised for every input, in chunks of `args.chunk`: in `pool`'s
    worker processes when given (each with its own Context), else here with `ctx`."""
    tasks = [(split, start, min(args.chunk, count - start)) for start in range(0, count, args.chunk)]
    progress = dict(desc=f"scenes + tokens {split}", unit="chunk", leave=False)
    device = torch.device(args.device)
    if pool is not None:
        parts = []
        for part in tqdm(pool.imap(_worker_chunk, tasks), total=len(tasks), **progress):
            # a worker's tensors arrive in shared memory, one open file each: copy them out as they come
            part.tokens = {name: tokens.to(device, copy=True) for name, tokens in part.tokens.items()}
            part.grids = {name: [tuple(t.to(device, copy=True) for t in level) for level in levels]
                          for name, levels in part.grids.items()}
            parts.append(part)
    else:
        parts = [tokenise_chunk(ctx, items, draw_scenes(split, start, n, args, fonts))
                 for _, start, n in tqdm(tasks, **progress)]
    return build_caches(parts, items, args.alphabet, device)


# -- readers: how each input's cache reaches the model ---------------------------------------------
def make_model(args: argparse.Namespace) -> TokenClassifier:
    """The study's plain ViT (`TokenClassifier`) with the seed's initial weights."""
    torch.manual_seed(args.seed)
    return TokenClassifier(PATCH, 3, dim=args.dim, depth=args.depth, heads=args.heads,
                           classes=args.code_length * len(args.alphabet)).to(args.device)


class CacheReader:
    """What every reader shares: its split's cache on the device, the code length, the codes, and FLOPs counted
    over every forward `passes` makes for one image (mean of the first `FLOP_SCENES` scenes)."""

    def __init__(self, cache: Cache | GridCache, length: int) -> None:
        self.cache, self.length = cache, length

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def codes(self) -> torch.Tensor:
        return self.cache.codes

    def passes(self, model: torch.nn.Module, index: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def flops(self, model: torch.nn.Module) -> float:
        flops = []
        with torch.inference_mode():
            for i in range(min(FLOP_SCENES, len(self))):
                with FlopCounterMode(display=False) as counter:
                    self.passes(model, torch.tensor([i], device=self.codes.device))
                flops.append(counter.get_total_flops())
        return float(statistics.fmean(flops))


class PlainReader(CacheReader):
    """A `TokenClassifier` on a padded `Cache`: one forward per batch (dense, glmip, uniform, detail, saliency)."""

    def make_model(self, args: argparse.Namespace) -> torch.nn.Module:
        return make_model(args)

    def passes(self, model: torch.nn.Module, index: torch.Tensor) -> list[torch.Tensor]:
        """Per-character logits (n, length, alphabet) of every forward the input makes for images `index`, the
        model's answer last."""
        return [logits_of(model, self.cache.batch(index), self.length)]

    def flops(self, model: torch.nn.Module) -> float:
        """The packed path's FLOPs (each image's real tokens, no padding)."""
        return count_flops(model, self.cache, self.length)

    def summary(self) -> dict[str, Any]:
        counts = self.cache.counts
        return {"tokens_mean": float(counts.mean()), "tokens_min": int(counts.min()), "tokens_max": int(counts.max()),
                "levels": sorted({round(float(v), 3) for v in np.concatenate(
                    [layout.level for layout in self.cache.layouts[:FLOP_SCENES]])})}


def refine_schedule(budget: int, size: int) -> tuple[int, ...]:
    """Splits per refinement pass of coarse to fine at `budget` tokens on size² scenes: from the level-2 cover
    (n tokens) every split adds 3, so K = (budget - n) // 3 splits, over two passes, the first taking half
    (rounded up) or every cover cell if fewer. 128², 16 tokens: 4 -> 10 -> 16; 25 tokens: 4 -> 16 -> 25."""
    cover = (size // (PATCH << REFINE_LEVELS[0])) ** 2
    total = (budget - cover) // 3
    first = min(cover, math.ceil(total / 2))
    return first, total - first


class RefineReader(PlainReader):
    """Coarse to fine by the model's own class attention, every pass on the device.

    The cache holds each scene's `superset_layout` tokens (sampled once from its pyramid). A forward over images
    `index`: pass 0 reads the level-2 cover; after each pass, `glmip.nn.scored_forward`'s class-attention scores
    pick the `schedule[p]` tokens above level 0 with the highest score per image and each is replaced by its four
    children (`glmip.refine`'s rule on a cover whose every split adds 3 tokens, with the token order left as
    `torch.topk` leaves it: the ViT is order-free; tests hold the token sets equal to `glmip.refine_batch`'s); the
    new token set is a gather from the superset. Every pass's logits are returned; the loss is their mean, so the
    coarse passes learn to find the panel whose tokens the last pass reads (the scores carry no gradient).

    Shapes: superset of S tokens (84 at 128²); pass p holds n_0 + 3·(k_0 + ... + k_{p-1}) tokens per image."""

    def __init__(self, cache: Cache, length: int, schedule: tuple[int, ...]) -> None:
        super().__init__(cache, length)
        layout = cache.layouts[0]
        device = cache.tokens.device
        levels = np.asarray(layout.level, np.int64)
        left = np.asarray(layout.cx - layout.size / 2, np.int64)
        top = np.asarray(layout.cy - layout.size / 2, np.int64)
        where = {(int(lv), int(x), int(y)): i for i, (lv, x, y) in enumerate(zip(levels, left, top, strict=True))}
        children = np.zeros((len(layout), 4), np.int64)  # level-0 rows stay 0: never split
        for i, (lv, x, y) in enumerate(zip(levels, left, top, strict=True)):
            if lv > 0:
                half = (PATCH << int(lv)) // 2
                children[i] = [where[(int(lv) - 1, int(x) + dx, int(y) + dy)] for dy in (0, half) for dx in (0, half)]
        self.schedule = schedule
        self.children = torch.from_numpy(children).to(device)
        self.finest = torch.from_numpy(levels == 0).to(device)
        self.start = torch.from_numpy(np.flatnonzero(levels == REFINE_LEVELS[0])).to(device)

    def refine(self, index: torch.Tensor, scores: torch.Tensor, splits: int) -> torch.Tensor:
        """index (n, L) superset indices and their scores (n, L) -> (n, L + 3·splits): the `splits` best-scored
        tokens above level 0 of each row replaced by their children."""
        scores = scores.float().masked_fill(self.finest[index], -math.inf)
        top = scores.topk(splits, dim=1).indices
        chosen = torch.zeros_like(index, dtype=torch.bool).scatter_(1, top, True)
        kept = index[~chosen].view(len(index), index.shape[1] - splits)
        return torch.cat([kept, self.children[index.gather(1, top)].flatten(1)], 1)

    def layouts(self, model: torch.nn.Module, index: torch.Tensor) -> list[torch.Tensor]:
        """The superset indices of every pass for images `index` (what `passes` reads), scoring with `model`."""
        return [step for step, _ in self._run(model, index)]

    def _run(self, model: torch.nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = self.start.expand(len(images), -1)
        out = []
        for step in range(len(self.schedule) + 1):
            rows = images[:, None]
            logits, scores = scored_forward(model, self.cache.tokens[rows, index].float().div(255),
                                            self.cache.levels[rows, index], self.cache.positions[rows, index])
            out.append((index, logits.float().view(len(images), self.length, -1)))
            if step < len(self.schedule):
                index = self.refine(index, scores, self.schedule[step])
        return out

    def passes(self, model: torch.nn.Module, index: torch.Tensor) -> list[torch.Tensor]:
        return [logits for _, logits in self._run(model, index)]

    flops = CacheReader.flops  # every pass of a batch-1 forward, the coarse ones included

    def summary(self) -> dict[str, Any]:
        counts = [len(self.start)]
        for splits in self.schedule:
            counts.append(counts[-1] + 3 * splits)
        return {"tokens_mean": float(counts[-1]), "tokens_min": counts[-1], "tokens_max": counts[-1],
                "levels": list(range(REFINE_LEVELS[-1], REFINE_LEVELS[0] + 1)), "pass_tokens": counts,
                "tokens_seen": sum(counts)}


class GridReader(CacheReader):
    """`glmip.hierarchy.MipViT` on a `GridCache`: stages of levels `MIP_LEVELS` with widths `dims` and `depths`
    blocks (heads `MIP_HEADS`), the head `head` ("class": a class token through every stage; "mean": the mean
    of the coarsest stage)."""

    def __init__(self, cache: GridCache, length: int, head: str, dims: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__(cache, length)
        self.head, self.dims, self.depths = head, list(dims), list(depths)

    def make_model(self, args: argparse.Namespace) -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return MipViT(PATCH, 3, dims=self.dims, depths=self.depths, heads=MIP_HEADS,
                      classes=args.code_length * len(args.alphabet), head=self.head).to(args.device)

    def passes(self, model: torch.nn.Module, index: torch.Tensor) -> list[torch.Tensor]:
        return [model(self.cache.batch(index)).float().view(len(index), self.length, -1)]

    def summary(self) -> dict[str, Any]:
        counts = self.cache.counts
        per_level = [int(valid[0].sum()) for _, _, valid, _ in self.cache.levels]
        return {"tokens_mean": float(counts.mean()), "tokens_min": int(counts.min()), "tokens_max": int(counts.max()),
                "levels": list(MIP_LEVELS), "cells_per_level": per_level, "head": self.head,
                "dims": self.dims, "depths": self.depths}


def reader_for(item: Input, cache: Cache | GridCache, args: argparse.Namespace) -> CacheReader:
    if item.kind == "mipvit":
        return GridReader(cache, args.code_length, args.mip_head, args.mip_dims, args.mip_depths)
    if item.kind == "c2f":
        return RefineReader(cache, args.code_length, refine_schedule(item.budget, args.size))
    return PlainReader(cache, args.code_length)


# -- training, evaluation ---------------------------------------------------------------------
def precision(args: argparse.Namespace) -> Any:
    """The forward's autocast: bfloat16 matrix products and attention with `--precision bf16`, else float32."""
    device = torch.device(args.device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def logits_of(model: TokenClassifier, batch: PaddedBatch, length: int) -> torch.Tensor:
    """(n, length, alphabet) per-character logits of a padded batch: the head's outputs, one head per character."""
    logits, _ = model.forward_padded(batch.tokens, batch.levels, batch.positions, batch.valid)
    return logits.float().view(len(batch.tokens), length, -1)


def packed_logits_of(model: TokenClassifier, batch: TokenBatch, length: int) -> torch.Tensor:
    """`logits_of` for a packed `TokenBatch` (FLOP counting: every image's real tokens and nothing else)."""
    logits, _ = model(batch, None)
    return logits.float().view(len(batch), length, -1)


def learning_rate(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, reader: CacheReader, args: argparse.Namespace) -> dict[str, float]:
    """Exact-code and per-character accuracy on every image of `reader` (its last pass), counted on the device,
    read once."""
    model.eval()
    device = reader.codes.device
    exact = torch.zeros((), dtype=torch.int64, device=device)
    chars = torch.zeros_like(exact)
    for start in range(0, len(reader), args.batch):
        index = torch.arange(start, min(start + args.batch, len(reader)), device=device)
        with precision(args):
            hits = reader.passes(model, index)[-1].argmax(-1) == reader.codes.index_select(0, index)
        exact += hits.all(1).sum()
        chars += hits.sum()
    model.train()
    exact_hits, char_hits = torch.stack([exact, chars]).tolist()
    return {"exact": exact_hits / len(reader), "char": char_hits / (len(reader) * args.code_length)}


def final_slope(losses: list[float]) -> float:
    """Loss change over the last 20% of steps, from the least-squares line through them."""
    tail = np.asarray(losses[-max(2, len(losses) // 5):], dtype=np.float64)
    slope = np.polyfit(np.arange(len(tail)), tail, 1)[0]
    return float(slope * (len(tail) - 1))


def batch_loss(model: torch.nn.Module, reader: CacheReader,
               args: argparse.Namespace) -> Callable[[torch.Tensor], torch.Tensor]:
    """`loss(index)`: the mean cross-entropy of the per-character heads on images `index` ((batch,) int64 on the
    reader's device), averaged over the input's passes (one, but for coarse to fine) -- the gather and the
    forward, fixed shapes. With `args.compile` it is `torch.compile`d (mode "reduce-overhead", CUDA graphs,
    on CUDA)."""
    def loss(index: torch.Tensor) -> torch.Tensor:
        codes = reader.codes.index_select(0, index).flatten()
        with precision(args):
            passes = reader.passes(model, index)
        return torch.stack([F.cross_entropy(logits.flatten(0, 1), codes) for logits in passes]).mean()
    if not args.compile:
        return loss
    cuda = torch.device(args.device).type == "cuda"
    return torch.compile(loss, mode="reduce-overhead" if cuda else None, fullgraph=True)


def make_optimiser(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW (weight decay 0.05), fused: one kernel per step on CUDA; on the 2-core CPU a quarter of foreach's
    time for the 1-block dim-8 ViT (docs/learning.md)."""
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, fused=True)


def train_step(loss_of: Callable[[torch.Tensor], torch.Tensor], optimiser: torch.optim.Optimizer,
               index: torch.Tensor) -> torch.Tensor:
    """One AdamW step on the images `index` (device tensor) through `loss_of` (`batch_loss`); the loss, left on
    the device (reading it waits for the step)."""
    loss = loss_of(index)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.detach()


def batch_order(count: int, steps: int, batch: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """(steps, batch) int64 on `device`: image indices per step, epoch after epoch of seeded permutations of
    `count` images (an epoch's tail carries into the next step), made once up front."""
    order = np.random.default_rng(seed)
    epochs = math.ceil(steps * batch / count)
    flat = np.concatenate([order.permutation(count) for _ in range(epochs)])[:steps * batch]
    return torch.from_numpy(flat.reshape(steps, batch)).to(device)


def train(model: torch.nn.Module, train_reader: CacheReader, val_reader: CacheReader, args: argparse.Namespace,
          name: str) -> dict[str, Any]:
    """`args.steps` AdamW steps in a batch order fixed by the seed; per-step losses, validation curve, wall time.

    The step does no host work: batches are gathered on the device, losses kept there; the host reads the
    device only every `args.log_every` steps (progress) and at the validation checkpoints."""
    optimiser = make_optimiser(model, args)
    loss_of = batch_loss(model, train_reader, args)
    order = batch_order(len(train_reader), args.steps, args.batch, args.seed, args.device)
    losses = torch.zeros(args.steps, device=args.device)
    curve = []
    checkpoints = {max(1, round(args.steps * q / 4)) for q in (1, 2, 3, 4)}
    log_every = args.log_every
    seconds = 0.0
    model.train()
    progress = tqdm(range(args.steps), desc=f"train {name}", unit="step", leave=False)
    begin = time.perf_counter()
    for step in progress:
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        losses[step] = train_step(loss_of, optimiser, order[step])
        if step % log_every == log_every - 1:
            progress.set_postfix(loss=f"{float(losses[step + 1 - log_every:step + 1].mean()):.3f}")
        if step + 1 in checkpoints:
            sync(args.device)
            seconds += time.perf_counter() - begin
            curve.append({"step": step + 1, **evaluate(model, val_reader, args)})
            begin = time.perf_counter()
    sync(args.device)
    seconds += time.perf_counter() - begin
    values = losses.float().cpu().tolist()
    return {"train_s": seconds, "steps": args.steps, "losses": values, "val_curve": curve,
            "final_loss": statistics.fmean(values[-max(1, len(values) // 20):]), "final_slope": final_slope(values)}


def step_seconds(train_reader: CacheReader, args: argparse.Namespace, warm: int = 3, timed: int = 8) -> float:
    """Seconds per training step for `train_reader`'s input, timed on a throwaway model (`warm` steps first)."""
    model = train_reader.make_model(args)
    optimiser = make_optimiser(model, args)
    loss_of = batch_loss(model, train_reader, args)
    index = torch.arange(args.batch, device=args.device) % len(train_reader)
    for step in range(warm + timed):
        if step == warm:
            sync(args.device)
            begin = time.perf_counter()
        train_step(loss_of, optimiser, index)
    sync(args.device)
    return (time.perf_counter() - begin) / timed


def count_flops(model: TokenClassifier, cache: Cache, length: int) -> float:
    """Mean FLOPs of one batch-1 forward over the first `FLOP_SCENES` scenes of `cache` (each image's real tokens,
    the packed path: padding is not counted)."""
    flops = []
    with torch.inference_mode():
        for i in range(min(FLOP_SCENES, len(cache))):
            batch = cache.token_batch([i])
            with FlopCounterMode(display=False) as counter:
                packed_logits_of(model, batch, length)
            flops.append(counter.get_total_flops())
    return float(statistics.fmean(flops))


def vit_seconds(model: torch.nn.Module, reader: CacheReader, args: argparse.Namespace) -> float:
    """Seconds per image of an inference forward (every pass) over one batch of `reader` (median of 3 after a
    warm-up)."""
    count = min(args.batch, len(reader))
    index = torch.arange(count, device=reader.codes.device)
    times = []
    model.eval()
    with torch.inference_mode(), precision(args):
        for _ in range(4):
            sync(args.device)
            begin = time.perf_counter()
            reader.passes(model, index)
            sync(args.device)
            times.append(time.perf_counter() - begin)
    model.train()
    return statistics.median(times[1:]) / count


def tokenise_ms(ctx: glmip.Context, items: list[Input], scenes: list[CodeScene], chunk: int) -> dict[str, float]:
    """Milliseconds per image of each input's tokenisation of `scenes` in this process, in chunks of `chunk`
    (the second of two passes; each input is charged the whole pyramid build, as if tokenised alone; dense is
    charged the patch cutting its cache does per batch)."""
    for _ in range(2):
        seconds = dict.fromkeys((item.name for item in items), 0.0)
        for start in range(0, len(scenes), chunk):
            part = tokenise_chunk(ctx, items, scenes[start:start + chunk])
            for item in items:
                seconds[item.name] += part.seconds[item.name]
                if item.kind == "dense":
                    begin = time.perf_counter()
                    dense_patches(part.tokens[item.name])
                    seconds[item.name] += time.perf_counter() - begin
    return {name: value / len(scenes) * 1e3 for name, value in seconds.items()}


def flops_at_size(args: argparse.Namespace, size: int, counts: tuple[int, ...]) -> dict[str, float]:
    """GFLOPs of one batch-1 forward of this study's ViT (fresh weights) on `size`² scenes at each token count in
    `counts` and at dense ((size / 16)² patches). FLOPs depend only on the token count, so each count is a grid
    layout of that many tokens (`uniform_side`, fractional) over random pixels."""
    model = make_model(args)
    out = {}
    with torch.inference_mode():
        for count in (*counts, (size // PATCH) ** 2):
            layout = grid_layout(size, size, uniform_side(size, size, count, integer=False))
            batch = TokenBatch.from_packed(torch.rand(len(layout), 3, PATCH, PATCH, device=args.device), [layout])
            with FlopCounterMode(display=False) as counter:
                packed_logits_of(model, batch, args.code_length)
            out[str(len(layout))] = counter.get_total_flops() / 1e9
    return out


# -- running --------------------------------------------------------------------------------
def run(args: argparse.Namespace, on_input: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every chosen input tokenised, trained and measured in turn; `on_input` gets the report so far after each one
    (so a run stopped early keeps the inputs it finished)."""
    fonts = Fonts.available()
    chosen = [item for item in inputs_for(args.budgets) if not args.inputs or item.name in args.inputs]
    results: list[dict[str, Any]] = []
    with glmip.Context() as ctx:
        renderer = str(ctx.info()["renderer"])
        pool = None
        if args.workers:
            pool = torch.multiprocessing.get_context("spawn").Pool(args.workers, _worker_start, (args, chosen))
        caches: dict[str, dict[str, Cache | GridCache]] = {}
        data_s, tokenise_times = None, {}
        try:
            if chosen:  # else the run only merges the reports of --reuse
                begin = time.perf_counter()
                caches = {split: tokenise_split(split, count, args, chosen, fonts, ctx, pool)
                          for split, count in (("train", args.train), ("val", args.val), ("test", args.test))}
                data_s = time.perf_counter() - begin
        finally:
            if pool is not None:
                pool.terminate()
        if chosen:
            timing_scenes = draw_scenes("test", 0, min(args.timing_scenes, args.test), args, fonts)
            tokenise_times = tokenise_ms(ctx, chosen, timing_scenes, args.chunk)
    calibration = None
    if args.train_budget_s:
        per_step = {item.name: step_seconds(reader_for(item, caches["train"][item.name], args), args)
                    for item in chosen}
        budget = args.train_budget_s
        if args.deadline_s:  # what is left of the run's wall-clock limit, less a reserve for measuring each input
            budget = min(budget, args.deadline_s - (time.perf_counter() - args.started) - 15 - 6 * len(chosen))
        # steps in the loop ran ~25% slower than these timed ones on the H100 (batch order, validation reads)
        args.steps = max(1, min(args.steps, int(budget / (1.25 * sum(per_step.values())))))
        calibration = {"step_s": per_step, "steps": args.steps, "train_budget_s": args.train_budget_s,
                       "budget_used_s": budget}
    extra = {"data_s": data_s, "calibration": calibration}
    order = [item.name for item in inputs_for(args.budgets)]
    reused = reused_rows(args, {item.name for item in chosen})

    def report_so_far(complete: bool) -> dict[str, Any]:
        rows = sorted(reused + results, key=lambda r: order.index(r["input"]) if r["input"] in order else len(order))
        return assemble(args, renderer, fonts, rows, complete=complete, **extra)

    for item in tqdm(chosen, desc="inputs", unit="input"):
        split = {name: reader_for(item, caches[name][item.name], args) for name in caches}
        model = split["train"].make_model(args)
        trained = train(model, split["train"], split["val"], args, item.name)
        test = evaluate(model, split["test"], args)
        results.append({
            "input": item.name, "kind": item.kind, "budget": item.budget, **split["test"].summary(),
            "exact_acc": test["exact"], "char_acc": test["char"],
            "gflops": split["test"].flops(model) / 1e9,
            "tokenise_ms": tokenise_times[item.name],
            "vit_ms": vit_seconds(model, split["test"], args) * 1e3,
            **trained,
        })
        del model
        if on_input is not None:
            on_input(report_so_far(len(results) == len(chosen)))
    return report_so_far(True)


TRAINING_KEYS = ("seed", "size", "train", "val", "test", "alphabet", "code_length", "steps", "batch", "lr", "dim",
                 "depth", "heads", "precision")  # what a row's training depends on
# What a mipvit row's training depends on besides, as reports before these options were added ran it.
MIP_KEYS = {"mip_head": "mean", "mip_dims": [32, 64, 128], "mip_depths": [1, 1, 1]}


def reused_rows(args: argparse.Namespace, running: set[str]) -> list[dict[str, Any]]:
    """The rows of the reports in `args.reuse` not run now (the first file's row where two hold one input), each
    marked with the file it came from; refused (SystemExit naming the key) unless every such run trained with the
    same `TRAINING_KEYS` settings and to the end. With no input chosen to run, a run only merges reports."""
    rows: dict[str, dict[str, Any]] = {}
    for path in args.reuse or ():
        earlier = json.loads(Path(path).read_text())
        mismatched = [key for key in TRAINING_KEYS if earlier["config"].get(key) != getattr(args, key)]
        if mismatched or not earlier.get("complete", False):
            raise SystemExit(f"--reuse {path}: its rows were trained with other settings ("
                             + (", ".join(f"{k}={earlier['config'].get(k)!r} here {getattr(args, k)!r}"
                                          for k in mismatched) or "an incomplete run") + ")")
        mip_mismatch = [key for key, default in MIP_KEYS.items()
                        if earlier["config"].get(key, default) != getattr(args, key)]
        for row in earlier["results"]:
            if row["kind"] == "mipvit" and row["input"] not in running and mip_mismatch:
                raise SystemExit(f"--reuse {path}: its {row['input']} row is of another MipViT ("
                                 + ", ".join(f"{k}={earlier['config'].get(k, MIP_KEYS[k])!r} here {getattr(args, k)!r}"
                                             for k in mip_mismatch) + ")")
            if row["input"] not in running and row["input"] not in rows:
                rows[row["input"]] = {**row, "reused_from": row.get("reused_from", str(path))}
    return list(rows.values())


def assemble(args: argparse.Namespace, renderer: str, fonts: Fonts, results: list[dict[str, Any]],
             complete: bool, data_s: float | None = None, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of the inputs in `results`: configuration, notes, goal verdicts, FLOPs at the issue's size."""
    report: dict[str, Any] = {
        "complete": complete,
        "device": renderer,
        "torch_device": torch_device_label() if torch.device(args.device).type == "cuda" else "cpu",
        "precision": args.precision,
        "data_s": data_s,
        "calibration": calibration,
        **environment(numpy=np.__version__, pillow=Image.__version__),
        "config": {key: [str(path) for path in value] if key == "reuse" and value else value
                   for key, value in vars(args).items() if key not in ("out", "plot", "started")},
        "fonts": list(fonts.names), "font_sizes": list(FONT_SIZES),
        "vit": {"dim": args.dim, "depth": args.depth, "heads": args.heads, "patch": PATCH,
                "embed": "glmip.nn.LodPatchEmbed(position='sincos', prefix_tokens=1), level embedding on",
                "head": f"{args.code_length} x {len(args.alphabet)}-way heads on the class token"},
        "notes": [
            "relevance: the panel box grown by 6-20 px and shifted by up to 8 px, 8-px cells, Gaussian blur sigma 1 "
            "cell; never glyph positions",
            "FLOPs: torch.utils.flop_counter.FlopCounterMode, one batch-1 forward (embedding + encoder + head), "
            f"mean of the first {FLOP_SCENES} test scenes; matmuls and attention only",
            f"tokenise_ms: wall time per image of tokenising the first {args.timing_scenes} test scenes in one "
            f"process in chunks of {args.chunk} (second of two passes), each input charged the whole pyramid build "
            "(upload, mipmaps), allocation, sampling and read-back into torch; vit_ms: inference forward over one "
            "batch, per image, median of 3",
            "data_s: drawing and tokenising every split for every input"
            + (f" in {args.workers} worker processes, each with its own glmip.Context" if args.workers else ""),
            "final_slope: loss change over the last 20% of steps (least-squares line)",
            "tokens cached as 8-bit values for all inputs",
        ],
        "results": results,
    }
    report["goal"] = goal(results)
    issue_flops = flops_at_size(args, ISSUE_SIZE, ISSUE_BUDGETS)
    dense_at_issue = issue_flops[str((ISSUE_SIZE // PATCH) ** 2)]
    report["issue_size_flops"] = {"size": ISSUE_SIZE, "gflops_by_tokens": issue_flops,
                                  "fewer_than_dense": {n: dense_at_issue / g for n, g in issue_flops.items()}}
    return report


def goal(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budgeted row (glmip, the oracle-free rows, sparse MipViT): exact accuracy against dense and uniform at
    the same budget, FLOPs fewer than dense. `met`: the study's first goal (glmip at <= 100 tokens: >= 95% of
    dense at >= 10x fewer FLOPs); `within_5pct`: >= 95% of dense's exact-code accuracy (the oracle-free goal)."""
    by_name = {r["input"]: r for r in results}
    dense = by_name.get("dense")
    if dense is None:
        return {}
    out = {}
    for r in results:
        if r["budget"] is None or r["kind"] == "uniform":
            continue
        uniform = by_name.get(f"uniform-{r['budget']}")
        accuracy_ratio = r["exact_acc"] / dense["exact_acc"] if dense["exact_acc"] > 0 else None
        flops_ratio = dense["gflops"] / r["gflops"]
        out[r["input"]] = {"oracle_free": r["kind"] in ORACLE_FREE, "exact_vs_dense": accuracy_ratio,
                           "flops_fewer": flops_ratio,
                           "uniform_exact": None if uniform is None else uniform["exact_acc"],
                           "within_5pct": accuracy_ratio is not None and accuracy_ratio >= 0.95,
                           "met": (r["kind"] == "glmip" and r["budget"] <= 100 and accuracy_ratio is not None
                                   and accuracy_ratio >= 0.95 and flops_ratio >= 10)}
    return out


# -- reporting ------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    rows = [[r["input"] + (" (earlier run)" if "reused_from" in r else ""), f"{r['exact_acc']:.3f}",
             f"{r['char_acc']:.3f}", f"{r['tokens_mean']:.1f}", f"{r['gflops']:.4f}", f"{r['tokenise_ms']:.1f}",
             f"{r['vit_ms']:.2f}", f"{r['train_s']:.0f}",
             f"{r['final_loss']:.3f}", f"{r['final_slope']:+.3f}", f"{r['val_curve'][-1]['exact']:.3f}"]
            for r in report["results"]]
    return markdown_table(["input", "exact code", "per char", "tokens / image", "ViT GFLOPs / image",
                           "tokenise ms / image", "ViT ms / image", "train s", "final loss",
                           "loss change, last 20%", "val exact"], rows)


def plot(report: dict[str, Any], path: Path) -> Path:
    colours = {"glmip": "C0", "uniform": "C1", "dense": "C3", "detail": "C2", "saliency": "C4", "c2f": "C5",
               "mipvit": "C6"}
    fig, axes = figure(1, 2, figsize=(14, 5))
    ax = axes[0]
    for kind, colour in colours.items():
        points = sorted((r["gflops"], r["exact_acc"], r["char_acc"], r["input"]) for r in report["results"]
                        if r["kind"] == kind)
        if not points:
            continue
        xs, exact, char, names = zip(*points, strict=True)
        ax.plot(xs, exact, "-o", color=colour, label=kind)
        ax.plot(xs, char, ":s", color=colour, alpha=0.5, markersize=3)
        for x, y, name in zip(xs, exact, names, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
    chance = 1 / len(report["config"]["alphabet"])
    ax.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
    ax.text(min(r["gflops"] for r in report["results"]), chance, " chance per char",
            va="bottom", fontsize=7, color="grey")
    size = report["config"]["size"]
    ax.set(xscale="log", xlabel="ViT GFLOPs per image (counted, batch-1 forward)", ylabel="test accuracy",
           ylim=(-0.02, 1.02), title=f"Reading a {report['config']['code_length']}-character code, {size}² scenes "
                                     "(solid: exact code; dotted: per character)")
    ax.xaxis.set_minor_formatter(NullFormatter())  # a log axis over less than a decade labels its minor ticks
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", ncol=3)
    ax = axes[1]
    budgets = sorted(report["config"]["budgets"])
    for r in report["results"]:
        losses = np.asarray(r["losses"])
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        rank = 1.0 if r["budget"] is None else budgets.index(r["budget"]) / max(1, len(budgets) - 1)
        ax.plot(np.arange(len(smooth)) + window, smooth, color=colours[r["kind"]],
                alpha=1.0 if r["budget"] is None else 0.45 + 0.3 * rank, label=r["input"])
    ax.set(xlabel="step", ylabel=f"training loss (mean of {window})", title="Training curves (same steps, same init)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="scene seeds, initial weights and batch order")
    parser.add_argument("--size", type=int, default=128, help="scene side in pixels (a multiple of 16)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 25])
    parser.add_argument("--train", type=int, default=32000, help="training scenes")
    parser.add_argument("--val", type=int, default=100, help="validation scenes")
    parser.add_argument("--test", type=int, default=300, help="test scenes")
    parser.add_argument("--alphabet", default="0123456789")
    parser.add_argument("--code-length", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24000, help="optimiser steps, the same for every input")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mip-head", choices=("class", "mean"), default="class",
                        help="MipViT's head: a class token through every stage, or the mean of the coarsest stage")
    parser.add_argument("--mip-dims", type=int, nargs=len(MIP_LEVELS), default=list(MIP_DIMS),
                        help="MipViT's stage widths, finest first")
    parser.add_argument("--mip-depths", type=int, nargs=len(MIP_LEVELS), default=list(MIP_DEPTHS),
                        help="MipViT's blocks per stage, finest first")
    parser.add_argument("--inputs", nargs="+", default=None, metavar="NAME",
                        help="run only these inputs (e.g. glmip-64 dense); default all")
    parser.add_argument("--chunk", type=int, default=32, help="scenes per tokenisation call")
    parser.add_argument("--device", default="cpu", help="torch device the ViTs train on (cpu, cuda, cuda:1)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="the forward in float32, or under bfloat16 autocast")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training step's gather and forward (CUDA graphs on CUDA)")
    parser.add_argument("--log-every", type=int, default=200,
                        help="steps between progress readings of the loss (the only device reads while training)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that draw and tokenise the scenes, each with its own Context (0: this one)")
    parser.add_argument("--train-budget-s", type=float, default=None,
                        help="choose the step count (at most --steps, the same for every input) so that all "
                             "trainings together take about this many seconds, from each input's timed steps")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="with --train-budget-s: the whole run's wall-clock limit; the training budget shrinks "
                             "to what the scenes and tokens left of it")
    parser.add_argument("--timing-scenes", type=int, default=64, help="test scenes the tokenisation is timed on")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of the whole pipeline: 128² scenes, budgets 16 and 32, 24/8/8 scenes, "
                             "4 steps of batch 8 through a 1-block dim-32 ViT")
    parser.add_argument("--reuse", type=Path, nargs="+", default=None, metavar="JSON",
                        help="carry the rows of earlier reports trained with the same settings (seed, sizes, "
                             "steps, model) into this one, for the inputs not run now (each marked reused_from); "
                             "with --inputs none, only merge them")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/learn-<device>.json)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "learn-accuracy-flops.png")
    args = parser.parse_args(argv)
    args.started = time.perf_counter()
    if args.quick:
        args.size, args.budgets, args.train, args.val, args.test = 128, [16, 32], 24, 8, 8
        args.steps, args.batch, args.dim, args.depth, args.heads = 4, 8, 32, 1, 2
        args.chunk, args.timing_scenes = 8, 8
    if args.size % PATCH or args.size < 128:
        parser.error(f"--size must be a multiple of {PATCH}, at least 128, got {args.size}")
    if min(args.budgets) < 4 or max(args.budgets) > (args.size // PATCH) ** 2:
        parser.error(f"--budgets must lie in 4..{(args.size // PATCH) ** 2} (the dense count), got {args.budgets}")
    if min(args.train, args.val, args.test, args.steps, args.batch, args.chunk, args.code_length,
           args.timing_scenes, args.log_every) < 1 or args.workers < 0:
        parser.error("--train, --val, --test, --steps, --batch, --chunk, --code-length, --timing-scenes and "
                     "--log-every must be positive, --workers at least 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch has no CUDA device here")
    known = [item.name for item in inputs_for(args.budgets)]
    unknown = [name for name in args.inputs or () if name not in known and name != "none"]
    if unknown:
        parser.error(f"--inputs {unknown[0]!r} is not an input of budgets {args.budgets}: choose from "
                     f"{', '.join(known)} (or none, to merge --reuse reports only)")
    if any(name.startswith("mipvit") for name in args.inputs or known):
        try:  # MipViT's own checks, before minutes of tokenising
            MipViT(PATCH, 3, dims=args.mip_dims, depths=args.mip_depths, heads=MIP_HEADS, head=args.mip_head)
        except ValueError as error:
            parser.error(f"--mip-dims {args.mip_dims} --mip-depths {args.mip_depths} (heads {list(MIP_HEADS)}): "
                         f"{error}")
    if args.size % (PATCH << REFINE_LEVELS[0]) and any(name.startswith("c2f") for name in args.inputs or known):
        parser.error(f"coarse to fine starts from whole {PATCH << REFINE_LEVELS[0]}-px cells: --size must be a "
                     f"multiple of {PATCH << REFINE_LEVELS[0]} for the c2f inputs, got {args.size}")
    if len(set(args.alphabet)) != len(args.alphabet) or len(args.alphabet) < 2:
        parser.error(f"--alphabet needs at least 2 distinct characters, got {args.alphabet!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()

    def save(report: dict[str, Any]) -> Path:
        report["runtime_s"] = time.perf_counter() - start
        plot(report, args.plot)
        return write_report(report, "learn", args.out)

    report = run(args, on_input=save)
    out = save(report)
    print(f"\ndevice: {report['device']}   torch: {report['torch_device']}   runtime {report['runtime_s']:.0f} s\n")
    print(table(report))
    for name, verdict in report["goal"].items():
        print(f"goal at {name}: {verdict}")
    print(f"\nwrote {out}, {args.plot}")
    return report


if __name__ == "__main__":
    main()
