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
    GridCache,
    Input,
    RefineReader,
    _worker_start,
    build_caches,
    coarse_relevance,
    final_slope,
    learning_rate,
    make_code_scene,
    make_model,
    mip_budgets,
    parse_args,
    refine_schedule,
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


def test_oracle_free_inputs_ignore_the_given_relevance(ctx, fonts):
    """detail-B and saliency-B are `glmip.tokenize` with criterion "detail" and no relevance, and with
    `glmip.saliency`: the scene's relevance map (the oracle) changes nothing."""
    scenes = [make_code_scene(seed, 128, fonts, ALPHABET, 2) for seed in range(3)]
    items = [Input("detail-16", "detail", 16), Input("saliency-16", "saliency", 16)]
    part = tokenise_chunk(ctx, items, scenes)
    for scene in scenes:
        scene.relevance = np.random.default_rng(0).random(scene.relevance.shape).astype(np.float32)
    again = tokenise_chunk(ctx, items, scenes)
    images = [s.image for s in scenes]
    expected = {"detail-16": glmip.tokenize(images, None, 16, 16, context=ctx, criterion="detail"),
                "saliency-16": glmip.tokenize(images, glmip.saliency, 16, 16, context=ctx)}
    for item in items:
        assert torch.equal(part.tokens[item.name], again.tokens[item.name])
        assert [len(layout) for layout in part.layouts[item.name]] == list(expected[item.name].lengths)
        assert (part.tokens[item.name].float() - expected[item.name].tokens * 255).abs().max() <= 0.5 + 1e-3
    assert all(len(set(np.asarray(layout.level).tolist())) > 1 for layout in part.layouts["detail-16"]), \
        "the content quadtree mixes levels on cluttered scenes (not one uniform grid)"


@pytest.mark.parametrize("budget", [16, 25])
def test_coarse_to_fine_passes_are_glmip_refine(ctx, fonts, budget):
    """Each device pass of c2f-B splits the tokens `glmip.refine_batch` splits for the same scores (as token sets:
    the pass leaves them in another order), and the tokens it gathers from the superset are the refined layout
    sampled afresh from the scene's pyramid (within 1 LSB of the 8-bit cache)."""
    scenes = [make_code_scene(seed, 128, fonts, ALPHABET, 2) for seed in range(4)]
    item = Input(f"c2f-{budget}", "c2f", budget)
    cache = build_caches([tokenise_chunk(ctx, [item], scenes)], [item], ALPHABET, torch.device("cpu"))[item.name]
    reader = RefineReader(cache, 2, refine_schedule(budget, 128))
    superset = cache.layouts[0]
    assert len(superset) == 4 + 16 + 64
    rng = np.random.default_rng(budget)
    index = reader.start.expand(len(scenes), -1)
    layouts = [glmip.cover_layout((128, 128), 16, 2)] * len(scenes)

    def cells(layout, rows=slice(None)):
        return sorted(zip(np.asarray(layout.level)[rows].astype(int).tolist(), np.asarray(layout.cx)[rows].tolist(),
                          np.asarray(layout.cy)[rows].tolist(), strict=True))

    for splits in reader.schedule:
        scores = torch.from_numpy(rng.random(index.shape)).float()
        index = reader.refine(index, scores, splits)
        expected = glmip.refine_batch(layouts, [scores[b].numpy() for b in range(len(scenes))],
                                      len(layouts[0]) + 3 * splits)
        layouts = [r.layout for r in expected]
        for b in range(len(scenes)):
            assert cells(superset, index[b].numpy()) == cells(layouts[b])
        order = [np.argsort(index[b].numpy()) for b in range(len(scenes))]  # both sides in superset order
        index = torch.stack([index[b][torch.from_numpy(order[b])] for b in range(len(scenes))])
        layouts = [glmip.TokenLayout(*(np.asarray(getattr(superset, n))[index[b].numpy()] for n in (
            "cx", "cy", "size", "level")), patch=16, image_size=(128, 128)) for b in range(len(scenes))]
    assert index.shape[1] == budget - (budget - 4) % 3
    with ctx.pyramids([s.image for s in scenes]) as batch:
        fresh = glmip.sampling.tokens_batch(batch, layouts, 16).clamp(0, 1) * 255
    gathered = cache.tokens[torch.arange(len(scenes))[:, None], index].flatten(0, 1).float()
    assert (gathered - fresh).abs().max() <= 0.5 + 1e-3


def test_coarse_to_fine_runs_its_passes_and_scores_them_with_the_model(ctx, fonts):
    """Every pass holds the scheduled token count, never reaches past level 0, and the refined tokens follow the
    model's class attention: the split tokens are the best-scored ones of the pass before."""
    scenes = [make_code_scene(seed, 128, fonts, ALPHABET, 2) for seed in range(3)]
    item = Input("c2f-16", "c2f", 16)
    cache = build_caches([tokenise_chunk(ctx, [item], scenes)], [item], ALPHABET, torch.device("cpu"))[item.name]
    reader = RefineReader(cache, 2, refine_schedule(16, 128))
    args = parse_args(["--quick"])
    model = make_model(args).eval()
    images = torch.arange(3)
    with torch.no_grad():
        passes = reader.layouts(model, images)
        logits = reader.passes(model, images)
    assert [p.shape for p in passes] == [(3, 4), (3, 10), (3, 16)] and len(logits) == 3
    assert all(lg.shape == (3, 2, len(ALPHABET)) for lg in logits)
    levels = cache.levels[0]
    assert int(levels[passes[-1]].min()) >= 0 and int(levels[passes[1]].max()) == 2
    from glmip.nn import scored_forward

    with torch.no_grad():
        rows = images[:, None]
        _, scores = scored_forward(model, cache.tokens[rows, passes[0]].float() / 255, cache.levels[rows, passes[0]],
                                   cache.positions[rows, passes[0]])
    best = scores.topk(2, 1).indices
    for b in range(3):
        split = set(passes[0][b, best[b]].tolist())
        assert not split & set(passes[1][b].tolist()), "the two best-scored level-2 tokens were split"


def test_schedules_and_level_budgets():
    assert refine_schedule(16, 128) == (2, 2) and refine_schedule(25, 128) == (4, 3)
    assert refine_schedule(64, 128) == (4, 16), "the whole level-0 grid at dense's budget"
    assert mip_budgets(16, 128) == [6, 6, None] and mip_budgets(25, 128) == [11, 10, None]
    assert mip_budgets(None, 128) is None
    assert mip_budgets(84, 128) == [64, 16, None]


def test_mipvit_input_caches_the_sparse_level_grids(ctx, fonts):
    """mipvit-B keeps the `mip_budgets` cells per level picked by the given relevance (the coarsest whole), as
    `PyramidBatch.grids` returns them; mipvit-dense every cell."""
    scenes = [make_code_scene(seed, 128, fonts, ALPHABET, 2) for seed in range(3)]
    items = [Input("mipvit-25", "mipvit", 25), Input("mipvit-dense", "mipvit", None)]
    caches = build_caches([tokenise_chunk(ctx, items, scenes[:2]), tokenise_chunk(ctx, items, scenes[2:])], items,
                          ALPHABET, torch.device("cpu"))
    sparse, dense = caches["mipvit-25"], caches["mipvit-dense"]
    assert isinstance(sparse, GridCache) and len(sparse) == 3
    assert sparse.counts.tolist() == [25, 25, 25] and dense.counts.tolist() == [84, 84, 84]
    grids = sparse.batch(torch.tensor([2, 0]))
    assert [g.tokens.shape[1] for g in grids] == [11, 10, 4] and [g.level for g in grids] == [0, 1, 2]
    with ctx.pyramids([scenes[2].image]) as batch:
        expected = batch.grids([0, 1, 2], 16, relevance=[scenes[2].relevance], budget=[11, 10, None])
    for got, want in zip(grids, expected, strict=True):
        assert torch.equal(got.positions[0], want.positions[0])
        assert (got.tokens[0] * 255 - want.tokens[0] * 255).abs().max() <= 0.5 + 1e-3
    panel = scenes[2].box
    rows, cols = grids[0].positions[0, :, 0], grids[0].positions[0, :, 1]
    centre_y, centre_x = (panel[1] + panel[3]) / 2 // 16, (panel[0] + panel[2]) / 2 // 16
    assert bool(((rows == centre_y) & (cols == centre_x)).any()), "the panel's centre cell is kept at level 0"


def test_reuse_takes_rows_only_from_runs_with_the_same_training(tmp_path):
    """--reuse carries an earlier report's rows into a merge-only run (--inputs none) and refuses a report trained
    otherwise, or one cut short."""
    args = parse_args(["--quick"])
    rows = [{"input": "dense", "kind": "dense", "budget": None}]
    good, other, cut = tmp_path / "good.json", tmp_path / "other.json", tmp_path / "cut.json"
    config = {key: value for key, value in vars(args).items() if key not in ("out", "plot", "started")}
    config = json.loads(json.dumps(config, default=str))
    good.write_text(json.dumps({"complete": True, "config": config, "results": rows}))
    other.write_text(json.dumps({"complete": True, "config": {**config, "steps": 5}, "results": rows}))
    cut.write_text(json.dumps({"complete": False, "config": config, "results": rows}))
    from bench.learn import reused_rows

    args.reuse = [good]
    assert reused_rows(args, set()) == [{**rows[0], "reused_from": str(good)}]
    assert reused_rows(args, {"dense"}) == [], "a row run now is not reused"
    for bad, words in ((other, "steps=5"), (cut, "incomplete")):
        args.reuse = [bad]
        with pytest.raises(SystemExit, match=words):
            reused_rows(args, set())


def test_reuse_refuses_a_mipvit_row_of_another_configuration(tmp_path):
    """A mipvit row is MipViT's configuration too: a report without the options (the first configuration: mean
    head, widths 32/64/128, one block a stage) or with others is refused unless the row is run now."""
    from bench.learn import reused_rows

    args = parse_args(["--quick"])
    config = json.loads(json.dumps({key: value for key, value in vars(args).items()
                                    if key not in ("out", "plot", "started")}, default=str))
    rows = [{"input": "mipvit-16", "kind": "mipvit", "budget": 16}]
    same, older = tmp_path / "same.json", tmp_path / "older.json"
    same.write_text(json.dumps({"complete": True, "config": config, "results": rows}))
    older.write_text(json.dumps({"complete": True, "config": {k: v for k, v in config.items()
                                                              if not k.startswith("mip_")}, "results": rows}))
    args.reuse = [same]
    assert [row["input"] for row in reused_rows(args, set())] == ["mipvit-16"]
    args.reuse = [older]
    with pytest.raises(SystemExit, match="mipvit-16 row is of another MipViT.*mip_head='mean' here 'class'"):
        reused_rows(args, set())
    assert reused_rows(args, {"mipvit-16"}) == [], "run now, the older row is not needed"
    args = parse_args(["--quick", "--mip-head", "mean", "--mip-dims", "32", "64", "128", "--mip-depths", "1", "1", "1"])
    args.reuse = [older]
    assert [row["input"] for row in reused_rows(args, set())] == ["mipvit-16"]


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        parse_args(["--inputs", "glmip-17"])
    with pytest.raises(SystemExit):
        parse_args(["--size", "144", "--inputs", "c2f-16"])
    with pytest.raises(SystemExit):
        parse_args(["--size", "100"])
    with pytest.raises(SystemExit):
        parse_args(["--budgets", "1000", "--size", "256"])
    with pytest.raises(SystemExit):
        parse_args(["--alphabet", "aa"])
    with pytest.raises(SystemExit):
        parse_args(["--workers", "-1"])
    for bad in (["--mip-dims", "30", "64", "128"], ["--mip-depths", "0", "1", "1"]):
        with pytest.raises(SystemExit):
            parse_args([*bad, "--inputs", "mipvit-16"])
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
    assert set(rows) == {"dense", "mipvit-dense"} | {f"{kind}-{b}" for b in (16, 32) for kind in (
        "glmip", "uniform", "detail", "saliency", "c2f", "mipvit")}
    assert rows["dense"]["tokens_mean"] == 64 and rows["uniform-16"]["tokens_mean"] == 16
    assert rows["c2f-16"]["pass_tokens"] == [4, 10, 16] and rows["c2f-32"]["pass_tokens"] == [4, 16, 31]
    assert rows["c2f-16"]["gflops"] > rows["glmip-16"]["gflops"], "the coarse passes count against coarse to fine"
    assert rows["mipvit-dense"]["tokens_mean"] == 84 and rows["mipvit-16"]["cells_per_level"] == [6, 6, 4]
    for row in rows.values():
        assert len(row["losses"]) == report["config"]["steps"] and np.isfinite(row["losses"]).all()
        assert 0 <= row["exact_acc"] <= row["char_acc"] <= 1
        assert row["gflops"] > 0 and row["train_s"] > 0 and row["vit_ms"] > 0 and row["tokenise_ms"] > 0
        assert row["budget"] is None or row["tokens_max"] <= row["budget"]
    assert rows["dense"]["gflops"] > rows["glmip-32"]["gflops"] > rows["glmip-16"]["gflops"]
    assert set(report["goal"]) == {f"{kind}-{b}" for b in (16, 32) for kind in (
        "glmip", "detail", "saliency", "c2f", "mipvit")}
    assert [report["goal"][f"{kind}-16"]["oracle_free"] for kind in ("glmip", "detail", "c2f")] == [False, True, True]
    issue = report["issue_size_flops"]
    assert set(issue["gflops_by_tokens"]) == {"64", "100", "256", "1024"}, "the issue's budgets and dense at 512²"
    assert issue["fewer_than_dense"]["1024"] == pytest.approx(1.0)
    assert issue["fewer_than_dense"]["64"] > issue["fewer_than_dense"]["100"] > issue["fewer_than_dense"]["256"] > 1
    assert "| dense |" in result.stdout
    calibration = report["calibration"]
    assert set(calibration["step_s"]) == set(rows) and min(calibration["step_s"].values()) > 0
    assert calibration["steps"] == report["config"]["steps"] == 4, "the budget allows more, --steps caps it"

    merged = tmp_path / "merged.json"
    result = subprocess.run([sys.executable, "-m", "bench.learn", "--quick", "--inputs", "none", "--reuse", str(out),
                             "--out", str(merged), "--plot", str(tmp_path / "merged.png")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    merged_report = json.loads(merged.read_text())
    assert merged_report["config"]["reuse"] == [str(out)]
    assert [r["input"] for r in merged_report["results"]] == [r["input"] for r in report["results"]]
    assert all(r["reused_from"] == str(out) for r in merged_report["results"])
    assert "(earlier run)" in result.stdout
