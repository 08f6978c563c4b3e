"""bench/learn.py: the seeded code scenes, what glmip is told about them, the training bookkeeping, and the whole
pipeline for a few steps (`--quick`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import glmip
from bench.learn import (
    RELEVANCE_CELL,
    Cache,
    Fonts,
    Input,
    _worker_start,
    build_caches,
    coarse_relevance,
    final_slope,
    learning_rate,
    make_code_scene,
    parse_args,
    tokenise_chunk,
    tokenise_split,
)

ROOT = Path(__file__).resolve().parent.parent
ALPHABET = "0123456789"


@pytest.fixture(scope="module")
def fonts() -> Fonts:
    return Fonts.available()


def test_scene_is_a_function_of_its_seed(fonts):
    a, b = make_code_scene(7, 256, fonts, ALPHABET, 4), make_code_scene(7, 256, fonts, ALPHABET, 4)
    other = make_code_scene(8, 256, fonts, ALPHABET, 4)
    assert np.array_equal(a.image, b.image) and a.code == b.code and a.box == b.box
    assert np.array_equal(a.relevance, b.relevance)
    assert not np.array_equal(a.image, other.image)
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
    assert len(a.code) == 4 and set(a.code) <= set(ALPHABET)


def test_panel_holds_dark_ink_on_light_ground(fonts):
    """The code is drawn inside the panel box, which lies whole inside the image."""
    for seed in range(5):
        scene = make_code_scene(seed, 192, fonts, ALPHABET, 4)
        x0, y0, x1, y1 = scene.box
        assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 192
        panel = scene.image[y0:y1, x0:x1].astype(int).sum(2)
        assert np.median(panel) > 3 * 200, "the panel is light"
        assert panel.min() < 3 * 80, "and carries dark glyphs"


def test_relevance_is_coarse_and_covers_the_panel(fonts):
    """glmip sees 8-px cells of a blurred, grown box: every cell the panel touches is relevant, and the map has no
    structure finer than a cell (it cannot point at glyphs)."""
    rng = np.random.default_rng(0)
    box = (100, 60, 150, 80)
    relevance = coarse_relevance(rng, box, 256)
    assert relevance.shape == (256 // RELEVANCE_CELL,) * 2 and relevance.dtype == np.float32
    assert relevance.min() >= 0 and relevance.max() == pytest.approx(1.0)
    x0, y0, x1, y1 = (v // RELEVANCE_CELL for v in box)
    assert (relevance[y0:y1 + 1, x0:x1 + 1] > 0.3).all()
    assert relevance[0, 0] < 1e-3 and relevance[-1, -1] < 1e-3


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(step, 100, 1e-3) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False)) and rates[-1] < 1e-5


def test_final_slope_is_the_change_over_the_last_fifth():
    losses = [2.0] * 80 + [1.0 - 0.01 * i for i in range(20)]
    assert final_slope(losses) == pytest.approx(-0.19)
    assert final_slope([0.5] * 50) == pytest.approx(0.0, abs=1e-12)


def test_cached_tokens_round_trip_through_a_token_batch(ctx, fonts):
    """8-bit cached tokens come back as the float tokens, each image's rows with its own layout; dense patches cut
    from the cached images are the images' 16-px squares, row-major (cut here by slicing, not by bench code)."""
    scenes = [make_code_scene(seed, 128, fonts, ALPHABET, 2) for seed in range(3)]
    items = [Input("glmip-16", "glmip", 16), Input("uniform-16", "uniform", 16), Input("dense", "dense", None)]
    parts = [tokenise_chunk(ctx, items, scenes[:2]), tokenise_chunk(ctx, items, scenes[2:])]
    caches = build_caches(parts, items, ALPHABET, torch.device("cpu"))
    for item in items:
        cache = caches[item.name]
        assert isinstance(cache, Cache) and len(cache) == 3 and cache.tokens.dtype == torch.uint8
        batch = cache.token_batch([2, 0])
        assert batch.lengths == (len(cache.layouts[2]), len(cache.layouts[0]))
        assert batch.tokens.min() >= 0 and batch.tokens.max() <= 1
        assert cache.codes[1].tolist() == [ALPHABET.index(c) for c in scenes[1].code]
    assert caches["dense"].counts.tolist() == [64, 64, 64], "dense: every 16-px patch of 128²"
    image = scenes[2].image  # (128, 128, C) uint8: patch (row, column) cut by slicing, row-major, as dense promises
    expected = torch.stack([torch.from_numpy(image[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]).permute(2, 0, 1)
                            for r in range(8) for c in range(8)]).float() / 255
    assert torch.equal(caches["dense"].token_batch([2]).tokens, expected)
    assert torch.equal(caches["dense"].batch(torch.tensor([2])).tokens[0], expected), "the padded batch too"
    layout = caches["dense"].layouts[2]
    assert np.array_equal(layout.cx, np.tile(np.arange(8) * 16 + 8.0, 8))
    assert np.array_equal(layout.cy, np.repeat(np.arange(8) * 16 + 8.0, 8))


def test_glmip_input_is_glmip_tokenize(ctx, fonts):
    """The study's glmip-B, taken apart so the pyramids serve every input, equals `glmip.tokenize` within the
    8-bit rounding of the cache."""
    scenes = [make_code_scene(seed, 128, fonts, ALPHABET, 2) for seed in range(3)]
    part = tokenise_chunk(ctx, [Input("glmip-16", "glmip", 16)], scenes)
    batch = glmip.tokenize([s.image for s in scenes], [s.relevance for s in scenes], 16, 16, context=ctx)
    assert [len(layout) for layout in part.layouts["glmip-16"]] == list(batch.lengths)
    assert (part.tokens["glmip-16"].float() - batch.tokens * 255).abs().max() <= 0.5 + 1e-3


def test_worker_processes_give_the_same_caches(ctx, fonts):
    """Scenes drawn and tokenised in a spawned worker (its own Context) are the ones drawn here."""
    args = parse_args(["--quick"])
    items = [Input("glmip-16", "glmip", 16), Input("dense", "dense", None)]
    here = tokenise_split("val", 5, args, items, fonts, ctx)
    pool = torch.multiprocessing.get_context("spawn").Pool(1, _worker_start, (args, items))
    try:
        there = tokenise_split("val", 5, args, items, fonts, ctx, pool)
    finally:
        pool.terminate()
    for item in items:
        assert torch.equal(here[item.name].tokens, there[item.name].tokens)
        assert np.array_equal(here[item.name].counts, there[item.name].counts)
        assert torch.equal(here[item.name].codes, there[item.name].codes)


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        parse_args(["--size", "100"])
    with pytest.raises(SystemExit):
        parse_args(["--budgets", "1000", "--size", "256"])
    with pytest.raises(SystemExit):
        parse_args(["--alphabet", "aa"])
    with pytest.raises(SystemExit):
        parse_args(["--workers", "-1"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parse_args(["--device", "cuda"])


def test_quick_pipeline(tmp_path):
    """`python -m bench.learn --quick`: every input tokenised, trained and measured, JSON and plot written."""
    out, plot = tmp_path / "learn.json", tmp_path / "learn.png"
    result = subprocess.run([sys.executable, "-m", "bench.learn", "--quick", "--train-budget-s", "1000",
                             "--out", str(out), "--plot", str(plot)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert plot.stat().st_size > 0
    rows = {r["input"]: r for r in report["results"]}
    assert set(rows) == {"glmip-16", "glmip-32", "uniform-16", "uniform-32", "dense"}
    assert rows["dense"]["tokens_mean"] == 64 and rows["uniform-16"]["tokens_mean"] == 16
    for row in rows.values():
        assert len(row["losses"]) == report["config"]["steps"] and np.isfinite(row["losses"]).all()
        assert 0 <= row["exact_acc"] <= row["char_acc"] <= 1
        assert row["gflops"] > 0 and row["train_s"] > 0 and row["vit_ms"] > 0 and row["tokenise_ms"] > 0
        assert row["budget"] is None or row["tokens_max"] <= row["budget"]
    assert rows["dense"]["gflops"] > rows["glmip-32"]["gflops"] > rows["glmip-16"]["gflops"]
    assert set(report["goal"]) == {"glmip-16", "glmip-32"}
    issue = report["issue_size_flops"]
    assert set(issue["gflops_by_tokens"]) == {"64", "100", "256", "1024"}, "the issue's budgets and dense at 512²"
    assert issue["fewer_than_dense"]["1024"] == pytest.approx(1.0)
    assert issue["fewer_than_dense"]["64"] > issue["fewer_than_dense"]["100"] > issue["fewer_than_dense"]["256"] > 1
    assert "| dense |" in result.stdout
    calibration = report["calibration"]
    assert set(calibration["step_s"]) == set(rows) and min(calibration["step_s"].values()) > 0
    assert calibration["steps"] == report["config"]["steps"] == 4, "the budget allows more, --steps caps it"
