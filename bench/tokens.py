"""Benchmark: how much of an image, and of its small text, survives as tokens at a fixed token budget.

What is measured. Every image becomes a glmip pyramid (``method="box"``, ``srgb=False``: 8-bit
values filtered as stored), a token layout per method and budget (patch 16), its tokens
``pyramid.tokens(layout)`` (one GL dispatch, trilinear at each token's level) and the image those
tokens carry, ``glmip.reconstruct.reconstruct(tokens, layout)`` (each pixel bilinear inside its
covering token's 16x16 grid), rounded to 8 bits. Methods, all covering the image with no gaps
or overlaps and using at most ``budget`` tokens:

* ``relevance``: ``glmip.allocate(relevance, budget)``, the library's quadtree on the relevance map.
* ``uniform``: one grid of square tokens of side s from the top-left corner, s the smallest side
  >= 16 px with ceil(W / s) * ceil(H / s) <= budget (searched over s = W / a and s = H / b for
  integers a, b), sampled at the fractional level log2(s / 16): the plain downsampling that
  spends the budget as fully as one grid can.
* ``uniform-int``: the same with s restricted to 16 * 2^L (an integer pyramid level), the
  finest L whose grid fits.
* ``content``: a content-only quadtree in the manner of Quadformer's pixel-blur scorer, with the
  cell's actual token reconstruction as the blur: the same
  roots as ``allocate`` (the finest level whose grid holds at most budget // 8 tokens) and the
  same split rule (a cell splits into its quadrants inside the image while the budget allows),
  but the cell split next is the one with the largest sum of squared error (over its pixels
  and channels) between the image and its reconstruction from the cell's own token. The error
  of every cell at every level comes from glmip tokens of an aligned grid at that level,
  reconstructed with ``reconstruct``; it reads level 0, not any relevance.

Scenes. ``--scenes`` generated W x H RGB images (seed = index): a grey background under
distractors (stripes of random period and angle, checkerboards, uniform noise, and strings of
the same font at 10 to 28 px, each in a random rectangle), and one light panel, the known
relevant region, holding 3 lines x 12 or 6 lines x 24 characters (alternating by seed) of ~10-px
text (Pillow's bundled FreeType font ``ImageFont.load_default(size)``, Aileron Regular, size 10,
11 or 12 by seed; cap height 8 to 10 px) drawn one character per fixed cell. The relevance map
given to ``allocate`` is the panel's indicator (1 inside, 0 outside; ties among zero cells fall
to allocate's own order).
Plus ``coffee``: ``glmip.DEFAULT_IMAGE`` (600x400) with ``glmip.gaze(point=(0.45, 0.35))`` as
relevance, its relevant region the disc of radius sigma (0.12 x 600 = 72 px) around the point.

Quality. PSNR (dB, peak 255) of the 8-bit reconstruction against the image, over the relevant
region and over the whole image; over the generated scenes the MSEs are averaged and one PSNR
taken ("lossless" when every pixel rounds back to the original). Legibility: every character
cell of the panel is cut from the reconstruction (grey = 0.299 R + 0.587 G + 0.114 B) and
compared by zero-mean normalised cross-correlation with every glyph of the alphabet rendered
the same way (same font, size, colours, cell); the best match is the reading, a flat cell
reads as nothing. Alphabet: A-Z and 2-9 without O, I, 0, 1 (32 glyphs, chance 1/32). To calibrate
the reader, the same text is also read through one whole-image grid at each level 0..3.

Timing (last). On scene 0 (W x H), per budget: ``tokens`` = pyramid build + allocate +
tokens (read back into torch), wall clock; ``vit`` = the forward pass of a small plain-torch
ViT on those tokens; ``dense`` = the same ViT on every 16x16 patch of the full-resolution image
(``unfold``; patches past the edge zero-padded), its tokenisation timed separately. The ViT:
``--depth`` (12) pre-norm blocks of width ``--dim`` (192) with ``--heads`` (3), torch SDPA attention,
a class token and a linear head (ViT-Ti/16's shape, random weights, ``inference_mode``):
``glmip.models.TokenClassifier``, whose patch embedding is
``glmip.nn.LodPatchEmbed(position="sincos", prefix_tokens=1)``, the same for both paths.
Median of ``--repeats`` after one warm-up; CPU torch on a 2-core machine shared with llvmpipe:
expect noise of tens of percent.

Usage::

    python -m bench.tokens [--scenes 12] [--size 1024 768] [--quick] [--out bench/results/tokens-<device>.json]
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import glmip
from bench.harness import environment, figure, markdown_table, measure, save_figure, torch_device_label, write_report
from glmip.allocate import TokenLayout
from glmip.image import as_image_array
from glmip.models import TokenClassifier
from glmip.reconstruct import reconstruct

ROOT = Path(__file__).resolve().parent.parent
PATCH = 16
PSNR_BUDGETS = (64, 256, 1024)
LEGIBILITY_BUDGETS = (64, 100, 256, 400)  # DeepSeek-OCR's token modes
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # A-Z, 2-9 without the confusable O/0, I/1
FONT_SIZES = (10, 11, 12)
PANELS = ((3, 12), (6, 24))  # text lines x characters per line, alternating by seed
METHODS = ("relevance", "uniform", "uniform-int", "content")
CALIBRATION_LEVELS = (0, 1, 2, 3)
COFFEE_GAZE, COFFEE_RADIUS = (0.45, 0.35), 0.12
PYRAMID_METHOD = "box"
PANEL, INK = (236, 233, 222), (24, 24, 32)


# -- scenes ---------------------------------------------------------------------------------
@dataclass
class Scene:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    relevance: np.ndarray  # (H, W) float32, what allocate sees
    mask: np.ndarray  # (H, W) bool, the relevant region PSNR is measured in
    font_size: int | None = None
    chars: list[tuple[str, int, int]] = field(default_factory=list)  # (character, cell x, cell y)
    cell: tuple[int, int] = (0, 0)  # (width, height) of a character cell
    box: tuple[int, int, int, int] | None = None  # relevant panel x0, y0, x1, y1


def font(size: int) -> ImageFont.FreeTypeFont:
    loaded = ImageFont.load_default(size=size)
    if not isinstance(loaded, ImageFont.FreeTypeFont):
        raise SystemExit("Pillow has no FreeType here: ImageFont.load_default(size) gave a bitmap font")
    return loaded


def cell_size(f: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """A character cell that holds every glyph of the alphabet whole, one pixel apart."""
    boxes = [f.getbbox(c) for c in ALPHABET]
    return max(b[2] for b in boxes) + 1, max(b[3] for b in boxes) + 2


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # stripes
        period, angle = rng.uniform(2.5, 9), rng.uniform(0, np.pi)
        y, x = np.mgrid[:h, :w]
        t = (np.cos(angle) * x + np.sin(angle) * y) / period
        value = (np.sin(2 * np.pi * t) > 0).astype(np.float64)
    elif kind == 1:  # checkerboard
        cell = int(rng.integers(1, 7))
        y, x = np.mgrid[:h, :w]
        value = ((x // cell + y // cell) % 2).astype(np.float64)
    else:  # noise
        value = rng.random((h, w))
    lo, hi = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return (lo + value[..., None] * (hi - lo)).clip(0, 255).astype(np.uint8)


def make_scene(seed: int, width: int, height: int) -> Scene:
    """Grey background, textured and lettered distractors, one light panel of small text (the relevant box)."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(128, 6, (height, width, 1)).repeat(3, 2), 0, 255).astype(np.uint8)
    area = width * height
    for _ in range(max(3, area // 40000)):  # textures
        w, h = int(rng.integers(width // 12, width // 4)), int(rng.integers(height // 12, height // 4))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        image[y:y + h, x:x + w] = _texture(rng, w, h)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(max(4, area // 20000)):  # distracting text, same font, many sizes
        size = int(rng.choice([10, 11, 12, 14, 18, 28]))
        text = "".join(rng.choice(list(ALPHABET + "abcdefghijkmnpqrstuvwxyz "), int(rng.integers(6, 24))))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.text((int(rng.integers(0, width - 40)), int(rng.integers(0, height - 20))), text, font=font(size),
                  fill=colour)
    size = FONT_SIZES[seed % len(FONT_SIZES)]
    f = font(size)
    cw, ch = cell_size(f)
    pad = 4
    lines, columns = PANELS[seed % len(PANELS)]
    pw, ph = columns * cw + 2 * pad, lines * ch + 2 * pad
    x0, y0 = int(rng.integers(pad, width - pw - pad)), int(rng.integers(pad, height - ph - pad))
    draw.rectangle([x0, y0, x0 + pw - 1, y0 + ph - 1], fill=PANEL)
    chars = []
    for row in range(lines):
        for col in range(columns):
            c = str(rng.choice(list(ALPHABET)))
            cx, cy = x0 + pad + col * cw, y0 + pad + row * ch
            draw.text((cx, cy), c, font=f, fill=INK)
            chars.append((c, cx, cy))
    image = np.asarray(canvas).copy()
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + ph, x0:x0 + pw] = True
    return Scene(f"scene-{seed}", image, mask.astype(np.float32), mask, size, chars, (cw, ch),
                 (x0, y0, x0 + pw, y0 + ph))


def coffee_scene() -> Scene:
    image = as_image_array(glmip.DEFAULT_IMAGE)[..., :3]
    height, width = image.shape[:2]
    relevance = glmip.gaze((width, height), COFFEE_GAZE, COFFEE_RADIUS)
    radius = COFFEE_RADIUS * max(width, height)
    y, x = np.mgrid[:height, :width] + 0.5
    mask = (x - COFFEE_GAZE[0] * width) ** 2 + (y - COFFEE_GAZE[1] * height) ** 2 <= radius**2
    return Scene("coffee", np.ascontiguousarray(image), relevance, mask)


# -- layouts --------------------------------------------------------------------------------
def grid_layout(width: int, height: int, side: float, patch: int = PATCH) -> TokenLayout:
    """One grid of `side`-pixel tokens from the top-left corner, sampled at level log2(side / patch)."""
    cols, rows = math.ceil(width / side - 1e-9), math.ceil(height / side - 1e-9)
    x, y = np.meshgrid(np.arange(cols), np.arange(rows))
    n = cols * rows
    return TokenLayout(cx=(x.ravel() + 0.5) * side, cy=(y.ravel() + 0.5) * side, size=np.full(n, float(side)),
                       level=np.full(n, math.log2(side / patch)), patch=patch, image_size=(width, height))


def grid_count(width: int, height: int, side: float) -> int:
    return math.ceil(width / side - 1e-9) * math.ceil(height / side - 1e-9)


def uniform_side(width: int, height: int, budget: int, integer: bool) -> float:
    """The smallest token side (>= PATCH) whose single grid fits in `budget` tokens."""
    if integer:
        level = 0
        while grid_count(width, height, PATCH << level) > budget:
            level += 1
        return float(PATCH << level)
    candidates = [float(PATCH)] + [width / a for a in range(1, budget + 1)] + [height / b for b in range(1, budget + 1)]
    fitting = [s for s in candidates if s >= PATCH and grid_count(width, height, s) <= budget]
    return min(fitting)


def root_level(width: int, height: int, budget: int, patch: int = PATCH) -> int:
    """allocate's default roots: the finest level whose grid takes at most budget // 8 tokens."""
    level = 0
    while grid_count(width, height, patch << level) > max(1, budget // 8) and (patch << level) < max(width, height):
        level += 1
    return level


class ContentErrors:
    """Per level L, the sum of squared error of each aligned 16 * 2^L cell reconstructed from its own glmip token."""

    def __init__(self, pyramid: glmip.Pyramid, image: np.ndarray) -> None:
        self.pyramid = pyramid
        self.truth = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        self.height, self.width = image.shape[:2]
        self.cells: dict[int, np.ndarray] = {}

    def level(self, level: int) -> np.ndarray:
        """(rows, cols) float64 SSE of the grid at `level`."""
        if level not in self.cells:
            side = PATCH << level
            layout = grid_layout(self.width, self.height, side)
            picture = reconstruct(self.pyramid.tokens(layout), layout)
            error = ((picture - self.truth) ** 2).sum(0).double()
            rows, cols = math.ceil(self.height / side), math.ceil(self.width / side)
            padded = F.pad(error, (0, cols * side - self.width, 0, rows * side - self.height))
            self.cells[level] = padded.reshape(rows, side, cols, side).sum((1, 3)).numpy()
        return self.cells[level]


def content_quadtree(errors: ContentErrors, budget: int) -> TokenLayout:
    """allocate's quadtree and budget rule, splitting the cell with the largest reconstruction SSE first."""
    width, height = errors.width, errors.height
    top = root_level(width, height, budget)
    side0 = PATCH << top
    if grid_count(width, height, side0) > budget:
        raise ValueError(f"budget {budget} cannot cover {width}x{height}")

    def score(x: int, y: int, level: int) -> float:
        side = PATCH << level
        return float(errors.level(level)[y // side, x // side])

    cells = [(x * side0, y * side0, top) for y in range(math.ceil(height / side0)) for x in range(math.ceil(width /
                                                                                                          side0))]
    heap = [(-score(*c), i, c) for i, c in enumerate(cells) if c[2] > 0]
    heapq.heapify(heap)
    leaves = set(cells)
    order = len(cells)
    while heap:
        _, _, (x, y, level) = heapq.heappop(heap)
        half = PATCH << (level - 1)
        children = [(cx, cy, level - 1) for cy in (y, y + half) for cx in (x, x + half) if cx < width and cy < height]
        if len(leaves) - 1 + len(children) > budget:
            continue
        leaves.remove((x, y, level))
        for child in children:
            leaves.add(child)
            if child[2] > 0:
                order += 1
                heapq.heappush(heap, (-score(*child), order, child))
    ordered = np.array(sorted(leaves, key=lambda c: (c[1], c[0], c[2])), dtype=np.int64)
    sizes = (PATCH << ordered[:, 2]).astype(np.float64)
    return TokenLayout(cx=ordered[:, 0] + sizes / 2, cy=ordered[:, 1] + sizes / 2, size=sizes, level=ordered[:, 2],
                       patch=PATCH, image_size=(width, height))


def make_layout(method: str, scene: Scene, budget: int, errors: ContentErrors) -> TokenLayout:
    height, width = scene.image.shape[:2]
    if method == "relevance":
        return glmip.allocate(scene.relevance, budget, patch=PATCH, image_size=(width, height))
    if method in ("uniform", "uniform-int"):
        return grid_layout(width, height, uniform_side(width, height, budget, method == "uniform-int"))
    if method == "content":
        return content_quadtree(errors, budget)
    raise ValueError(method)


# -- measures -------------------------------------------------------------------------------
def to_uint8(picture: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8, rounded."""
    return (picture.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    return float(diff[mask].mean() if mask is not None else diff.mean())


def psnr(error: float) -> float | None:
    """dB at peak 255; None when lossless (error 0)."""
    return None if error == 0 else 10 * math.log10(255.0**2 / error)


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def glyph_templates(size: int, cell: tuple[int, int]) -> np.ndarray:
    """(K, cell_h * cell_w) zero-mean, unit-norm grey cells of every glyph, drawn as the scenes draw them."""
    f = font(size)
    rows = []
    for c in ALPHABET:
        canvas = Image.new("RGB", cell, PANEL)
        ImageDraw.Draw(canvas).text((0, 0), c, font=f, fill=INK)
        rows.append(grey(np.asarray(canvas)).ravel())
    return _normalise(np.stack(rows))


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(1, keepdims=True)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 1e-9)


def read_text(picture: np.ndarray, scene: Scene, templates: np.ndarray) -> tuple[int, str]:
    """How many of the scene's characters normalised cross-correlation reads back right, and the reading."""
    cw, ch = scene.cell
    g = grey(picture)
    crops = _normalise(np.stack([g[y:y + ch, x:x + cw].ravel() for _, x, y in scene.chars]))
    scores = crops @ templates.T
    flat = np.abs(crops).sum(1) == 0  # nothing there to read
    reading = ["?" if f else ALPHABET[i] for i, f in zip(scores.argmax(1), flat, strict=True)]
    correct = sum(r == c for r, (c, _, _) in zip(reading, scene.chars, strict=True))
    return correct, "".join(reading)


def evaluate(ctx: glmip.Context, scene: Scene, budgets: list[int], keep: int | None,
             bar: tqdm) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Quality of every method at every budget on one scene; the budget-`keep` reconstructions and layouts."""
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}
    templates = glyph_templates(scene.font_size, scene.cell) if scene.chars else None
    with ctx.pyramid(scene.image, method=PYRAMID_METHOD) as pyramid:
        errors = ContentErrors(pyramid, scene.image)
        for budget in budgets:
            for method in METHODS:
                bar.set_description(f"{scene.name} {method} {budget}")
                layout = make_layout(method, scene, budget, errors)
                picture = to_uint8(reconstruct(pyramid.tokens(layout), layout))
                assert len(layout) <= budget
                levels, counts = np.unique(np.round(layout.level, 3), return_counts=True)
                row: dict[str, Any] = {
                    "scene": scene.name, "method": method, "budget": budget, "tokens": len(layout),
                    "levels": {f"{lv:g}": int(n) for lv, n in zip(levels, counts, strict=True)},
                    "mse_relevant": mse(picture, scene.image, scene.mask), "mse_whole": mse(picture, scene.image),
                }
                row["psnr_relevant"], row["psnr_whole"] = psnr(row["mse_relevant"]), psnr(row["mse_whole"])
                if templates is not None:
                    correct, reading = read_text(picture, scene, templates)
                    row.update(chars=len(scene.chars), correct=correct, reading=reading)
                rows.append(row)
                if budget == keep:
                    kept[method] = (picture, layout)
                bar.update()
        if templates is not None:  # what the reader makes of the text at each whole level, budget aside
            height, width = scene.image.shape[:2]
            for level in CALIBRATION_LEVELS:
                layout = grid_layout(width, height, PATCH << level)
                picture = to_uint8(reconstruct(pyramid.tokens(layout), layout))
                correct, reading = read_text(picture, scene, templates)
                rows.append({"scene": scene.name, "method": f"grid level {level}", "budget": None,
                             "tokens": len(layout), "chars": len(scene.chars), "correct": correct, "reading": reading,
                             "mse_relevant": mse(picture, scene.image, scene.mask)})
    return rows, kept


def summarise(rows: list[dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    """Per method and budget: pooled PSNR over generated scenes, coffee's PSNR, legibility accuracy."""
    out: dict[str, Any] = {"scenes": {}, "coffee": {}, "legibility": {}}
    for method in METHODS:
        for key in out:
            out[key][method] = {}
        for budget in budgets:
            sel = [r for r in rows if r["method"] == method and r["budget"] == budget]
            gen = [r for r in sel if r["scene"] != "coffee"]
            coffee = [r for r in sel if r["scene"] == "coffee"]
            b = str(budget)
            if gen:
                rel, whole = (statistics.fmean(r[k] for r in gen) for k in ("mse_relevant", "mse_whole"))
                out["scenes"][method][b] = {"psnr_relevant": psnr(rel), "psnr_whole": psnr(whole),
                                            "tokens_mean": statistics.fmean(r["tokens"] for r in gen)}
                correct, total = sum(r["correct"] for r in gen), sum(r["chars"] for r in gen)
                out["legibility"][method][b] = {"correct": correct, "total": total, "accuracy": correct / total}
            if coffee:
                out["coffee"][method][b] = {k: coffee[0][k] for k in ("psnr_relevant", "psnr_whole", "tokens")}
    out["reader_by_level"] = {}
    for level in CALIBRATION_LEVELS:
        sel = [r for r in rows if r["method"] == f"grid level {level}"]
        if sel:
            correct, total = sum(r["correct"] for r in sel), sum(r["chars"] for r in sel)
            out["reader_by_level"][str(level)] = {
                "correct": correct, "total": total, "accuracy": correct / total,
                "psnr_relevant": psnr(statistics.fmean(r["mse_relevant"] for r in sel))}
    return out


# -- timing ---------------------------------------------------------------------------------
EMBED_NAME = "glmip.nn.LodPatchEmbed(position='sincos', prefix_tokens=1)"  # TokenClassifier's embedding


def dense_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 images -> (B * ceil(H / 16) * ceil(W / 16), C, 16, 16) float patches in [0, 1], each
    image's row-major, zero-padded at the right and bottom edges."""
    x = images.float().div_(255)
    x = F.pad(x, (0, -x.shape[3] % PATCH, 0, -x.shape[2] % PATCH))
    return F.unfold(x, PATCH, stride=PATCH).transpose(1, 2).reshape(-1, x.shape[1], PATCH, PATCH)


def dense_tokens(image: np.ndarray) -> tuple[torch.Tensor, TokenLayout]:
    """Every 16x16 patch of the full-resolution (H, W, C) uint8 image (zero-padded at the edges): (N, C, 16, 16),
    level-0 grid."""
    height, width = image.shape[:2]
    return dense_patches(torch.from_numpy(image).permute(2, 0, 1)[None]), grid_layout(width, height, PATCH)


def _times(prefix: str, times: list[float]) -> dict[str, Any]:
    return {f"{prefix}_s": statistics.median(times), f"{prefix}_times_s": times}


def timing(ctx: glmip.Context, scene: Scene, budgets: list[int], repeats: int, vit: dict[str, int]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TokenClassifier(PATCH, 3, **vit).eval()
    height, width = scene.image.shape[:2]
    out: dict[str, Any] = {"scene": scene.name, "size": [width, height], "vit": vit, "embed": EMBED_NAME,
                           "results": []}

    def glmip_tokens(budget: int) -> Any:
        with ctx.pyramid(scene.image, method=PYRAMID_METHOD) as pyramid:
            layout = glmip.allocate(scene.relevance, budget, patch=PATCH, image_size=(width, height))
            return pyramid.tokens(layout), layout

    with torch.inference_mode():
        for budget in tqdm(budgets, desc="timing", unit="budget"):
            tok = measure(lambda b=budget: glmip_tokens(b), repeats)
            tokens, layout = tok.result
            vit = measure(lambda t=tokens, lay=layout: model(t, lay), repeats)
            out["results"].append({"method": "glmip relevance", "budget": budget, "tokens": len(layout),
                                   **_times("tokenise", tok.times), **_times("vit", vit.times)})
        tok = measure(lambda: dense_tokens(scene.image), repeats)
        tokens, layout = tok.result
        vit = measure(lambda: model(tokens, layout), repeats)
        out["results"].append({"method": "dense 16x16", "budget": None, "tokens": len(layout),
                               **_times("tokenise", tok.times), **_times("vit", vit.times)})
    return out


# -- pictures -------------------------------------------------------------------------------
def reconstruction_picture(scene: Scene, kept: dict[str, Any], budget: int, path: Path) -> None:
    """Row 1: original and each method's reconstruction (half size); row 2: the text panel, enlarged (nearest);
    row 3: each layout (level colours) over the image, the original column showing the relevant region."""
    from glmip.pictures import overlay

    height, width = scene.image.shape[:2]
    region = np.zeros(scene.image.shape[:2] + (3,), np.uint8)
    region[scene.mask] = (255, 0, 0)
    columns = [("original (relevant region in red, below)", scene.image, overlay(scene.image, region, alpha=0.5))]
    columns += [(f"{m}: {len(kept[m][1])} tokens", kept[m][0], kept[m][1].draw(kept[m][0]))
                for m in ("relevance", "uniform", "content")]
    half = (width // 2, height // 2)
    x0, y0, x1, y1 = scene.box
    margin = 12
    crop = (max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin))
    factor = max(1, min(4, half[0] // (crop[2] - crop[0])))
    zoom = ((crop[2] - crop[0]) * factor, (crop[3] - crop[1]) * factor)
    label_h = 16
    sheet = Image.new("RGB", (half[0] * len(columns), label_h + half[1] * 2 + zoom[1]), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, picture, drawn) in enumerate(columns):
        x = i * half[0]
        draw.text((x + 4, 2), f"{label} (budget {budget})" if i else label, font=font(12), fill=(0, 0, 0))
        sheet.paste(Image.fromarray(picture).resize(half, Image.Resampling.BOX), (x, label_h))
        sheet.paste(Image.fromarray(picture).crop(crop).resize(zoom, Image.Resampling.NEAREST), (x, label_h + half[1]))
        sheet.paste(Image.fromarray(drawn).resize(half, Image.Resampling.BOX), (x, label_h + half[1] + zoom[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def plot(report: dict[str, Any], path: Path) -> None:
    summary = report["summary"]
    styles = {"relevance": "C0", "uniform": "C1", "uniform-int": "C2", "content": "C3"}
    fig, axes = figure(1, 3, figsize=(15, 4.4))
    finite = [v[k] for src in ("scenes", "coffee") for m in summary[src].values() for v in m.values()
              for k in ("psnr_relevant", "psnr_whole") if v[k] is not None]
    ceiling = math.ceil(max(finite, default=30.0) / 5 + 1) * 5  # where lossless points are drawn
    for ax, key, title in ((axes[0], "psnr_relevant", "PSNR in the relevant region"),
                           (axes[1], "psnr_whole", "PSNR over the whole image")):
        for method, colour in styles.items():
            for source, style, label in (("scenes", "-o", "text scenes"), ("coffee", "--s", "coffee, gaze")):
                points = sorted((int(b), ceiling if v[key] is None else v[key])
                                for b, v in summary[source][method].items())
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, color=colour, label=f"{method} ({label})", markersize=4)
        ax.axhline(ceiling, color="grey", linestyle=":", linewidth=0.8)
        ax.text(report["budgets"][-1], ceiling, "lossless ", va="bottom", ha="right", fontsize=7, color="grey")
        ax.set(xscale="log", xlabel="token budget", ylabel="dB", title=title, ylim=(None, ceiling + 2))
        ax.set_xticks(report["budgets"], [str(b) for b in report["budgets"]])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    ax = axes[2]
    for method, colour in styles.items():
        items = sorted((int(b), v["accuracy"]) for b, v in summary["legibility"][method].items())
        if items:
            xs, ys = zip(*items, strict=True)
            ax.plot(xs, ys, "-o", color=colour, label=method, markersize=4)
    ax.axhline(1 / len(ALPHABET), color="grey", linestyle=":", label="chance")
    ax.set(xscale="log", xlabel="token budget", ylabel="characters read right", ylim=(0, 1.02),
           title=f"Legibility of ~10-px text ({report['config']['scenes']} scenes)")
    ax.set_xticks(report["budgets"], [str(b) for b in report["budgets"]])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


# -- tables ---------------------------------------------------------------------------------
def _db(value: float | None) -> str:
    return "lossless" if value is None else f"{value:.2f}"


def tables(report: dict[str, Any]) -> str:
    s = report["summary"]
    psnr_budgets = [b for b in report["budgets"] if b in PSNR_BUDGETS]
    legible = [b for b in report["budgets"] if b in LEGIBILITY_BUDGETS]
    out = []
    for source, title in (("scenes", f"text scenes ({report['config']['scenes']}, pooled MSE)"),
                          ("coffee", "coffee.png, gaze disc")):
        if not any(s[source][m] for m in METHODS):
            continue
        out.append(f"PSNR dB, relevant / whole, {title}:\n")
        rows = [[method] + ["–" if c is None else f"{_db(c['psnr_relevant'])} / {_db(c['psnr_whole'])}"
                            for c in (s[source][method].get(str(b)) for b in psnr_budgets)] for method in METHODS]
        out.append(markdown_table(["method"] + [f"{b} tokens" for b in psnr_budgets], rows))
        out.append("")
    out.append(f"Legibility, characters read right (of {s['legibility']['relevance'][str(legible[0])]['total']}, "
               f"chance {1 / len(ALPHABET):.3f}):\n")
    out.append(markdown_table(["method"] + [f"{b} tokens" for b in legible],
                              [[method] + [f"{s['legibility'][method][str(b)]['accuracy']:.3f}" for b in legible]
                               for method in METHODS]))
    if s["reader_by_level"]:
        levels = s["reader_by_level"]
        out.append("\nReader calibration, the text through one whole-image grid at each level:\n")
        out.append(markdown_table([""] + [f"level {lv}" for lv in levels], [
            ["characters read right"] + [f"{v['accuracy']:.3f}" for v in levels.values()],
            ["PSNR in the panel, dB"] + [_db(v["psnr_relevant"]) for v in levels.values()]]))
    if report.get("timing"):
        t = report["timing"]
        out.append(f"\nTiming ({t['size'][0]}x{t['size'][1]}, ViT dim {t['vit']['dim']} depth {t['vit']['depth']}, "
                   f"{t['embed']}; median of {report['config']['repeats']}):\n")
        out.append(markdown_table(["tokens", "count", "tokenise ms", "ViT forward ms", "total ms"], [
            [r["method"] + (f", budget {r['budget']}" if r["budget"] else ""), str(r["tokens"]),
             f"{r['tokenise_s'] * 1e3:.1f}", f"{r['vit_s'] * 1e3:.1f}", f"{(r['tokenise_s'] + r['vit_s']) * 1e3:.1f}"]
            for r in t["results"]]))
    return "\n".join(out)


# -- running --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    width, height = args.size
    budgets = sorted(set(args.budgets))
    scenes = [make_scene(seed, width, height) for seed in range(args.scenes)]
    if not args.no_coffee:
        scenes.append(coffee_scene())
    rows: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}
    with glmip.Context() as ctx:
        renderer = str(ctx.info()["renderer"])
        with tqdm(total=len(scenes) * len(budgets) * len(METHODS), unit="layout") as bar:
            for i, scene in enumerate(scenes):
                scene_rows, scene_kept = evaluate(ctx, scene, budgets, args.picture_budget if i == 0 else None, bar)
                rows += scene_rows
                kept = kept or scene_kept
        report: dict[str, Any] = {
            "device": renderer,
            "torch_device": torch_device_label(),
            **environment(numpy=np.__version__, pillow=Image.__version__),
            "config": {"scenes": args.scenes, "size": [width, height], "patch": PATCH, "pyramid": PYRAMID_METHOD,
                       "srgb": False, "repeats": args.repeats, "quick": args.quick},
            "budgets": budgets,
            "font": {"name": " ".join(font(FONT_SIZES[0]).getname()), "sizes": list(FONT_SIZES),
                     "source": "PIL.ImageFont.load_default(size) (FreeType)"},
            "alphabet": ALPHABET,
            "chance": 1 / len(ALPHABET),
            "methods": {
                "relevance": "glmip.allocate(relevance, budget, patch=16)",
                "uniform": "one grid, smallest side s >= 16 with ceil(W/s)*ceil(H/s) <= budget, level log2(s/16) "
                           "(fractional, trilinear)",
                "uniform-int": "one grid at the finest integer level L whose 16*2^L grid fits the budget",
                "content": "allocate's quadtree and roots, splitting the cell of largest reconstruction SSE "
                           "against level 0 first",
            },
            "notes": [
                "PSNR on 8-bit rounded reconstructions, peak 255; null = lossless; scenes pooled by mean MSE",
                "legibility: NCC of each character cell against every glyph rendered the same way; chance 1/32",
                "relevance for scenes = indicator of the text panel; coffee = glmip.gaze((0.45, 0.35)), region = "
                "disc of radius 72 px",
                "timing: CPU torch and llvmpipe share 2 cores; expect tens of percent noise",
            ],
            "quality": rows,
        }
        report["summary"] = summarise(rows, budgets)
        if not args.no_timing:
            report["timing"] = timing(ctx, scenes[0], sorted(set(args.timing_budgets or budgets)), args.repeats,
                                      {"dim": args.dim, "depth": args.depth, "heads": args.heads})
    if kept and args.picture:
        reconstruction_picture(scenes[0], kept, args.picture_budget, args.picture)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=12, help="generated text scenes (seeds 0..n-1)")
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 768], metavar=("W", "H"))
    parser.add_argument("--budgets", type=int, nargs="+", default=sorted(set(PSNR_BUDGETS + LEGIBILITY_BUDGETS)))
    parser.add_argument("--no-coffee", action="store_true", help="skip the bundled coffee.png scene")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-budgets", type=int, nargs="+", default=None, help="default: --budgets")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per timing case (after one warm-up)")
    parser.add_argument("--dim", type=int, default=192, help="ViT width (ViT-Ti/16: 192)")
    parser.add_argument("--depth", type=int, default=12, help="ViT blocks (ViT-Ti/16: 12)")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--picture-budget", type=int, default=256)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 scene of 512x384, no coffee, timing of budgets 64 and 256 and dense "
                             "through a 1-block ViT, 1 repeat")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/tokens-<device>.json)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "tokens-quality.png")
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "tokens-reconstruction.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.scenes, args.size, args.no_coffee, args.depth, args.repeats = 1, [512, 384], True, 1, 1
        args.timing_budgets = [64, 256]
    if args.scenes < 1 or args.repeats < 1 or min(args.budgets + (args.timing_budgets or [])) < 1 \
            or min(args.size) < 128:
        parser.error("--scenes, --repeats and --budgets must be positive, --size at least 128")
    if args.picture_budget not in args.budgets:
        parser.error(f"--picture-budget {args.picture_budget} is not among --budgets")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    report = run(args)
    report["runtime_s"] = time.perf_counter() - start
    out = write_report(report, "tokens", args.out)
    plot(report, args.plot)
    print(f"\ndevice: {report['device']}   torch: {report['torch_device']}   runtime {report['runtime_s']:.0f} s\n")
    print(tables(report))
    print(f"\nwrote {out}, {args.plot}" + (f", {args.picture}" if args.picture else ""))


if __name__ == "__main__":
    main()
