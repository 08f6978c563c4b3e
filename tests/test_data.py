"""glmip.data with real worker processes: DataLoader workers (fork and spawn) equal the single-process
`glmip.tokenize` bit for bit, corrupt files are skipped or raised with their path, token shards are
atomic and resumable (a writer killed mid-shard leaves no half shard), `read_shards` splits across
workers, and `glmip tokenize` exits 2 with a message on each bad input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glmip
from glmip.cli import main
from glmip.data import Collate, Dataset, Gaze, Query, Tokenizer, conform, read_shards, write_shards

TIMEOUT_S = 120
BUDGET, PATCH = 10, 8
SIZES = [(37, 53), (64, 64), (21, 90), (48, 33), (40, 40), (29, 61), (52, 45)]  # (height, width)
MODES = ["RGB", "RGB", "L", "RGBA", "RGB", "LA", "RGB"]


def gaze_map(pyramid):
    return glmip.gaze((pyramid.width, pyramid.height), (0.3, 0.6), 0.12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> list[str]:
    """Seven images of odd sizes and mixed modes (RGB, L, RGBA, LA), PNG and JPEG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    paths = []
    for index, ((height, width), mode) in enumerate(zip(SIZES, MODES, strict=True)):
        channels = {"RGB": 3, "L": 1, "RGBA": 4, "LA": 2}[mode]
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
        suffix = ".jpg" if index in (1, 4) else ".png"
        path = root / f"img{index}{suffix}"
        image.save(path, quality=90) if suffix == ".jpg" else image.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture()
def corrupt(tmp_path) -> list[str]:
    """A truncated PNG and a text file."""
    truncated = tmp_path / "truncated.png"
    buffer = tmp_path / "whole.png"
    Image.fromarray(np.full((30, 30, 3), 99, np.uint8)).save(buffer)
    truncated.write_bytes(buffer.read_bytes()[:60])
    buffer.unlink()
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    return [str(truncated), str(text)]


def expected(paths, relevance=gaze_map) -> glmip.TokenBatch:
    """What the data paths must give: each file decoded by PIL and converted to RGB here (grey repeated, alpha
    dropped: `conform`'s documented rules for these 8-bit files), not through `prepare_images`, then
    `glmip.tokenize`."""
    return glmip.tokenize([np.asarray(Image.open(path).convert("RGB")) for path in paths], relevance, BUDGET, PATCH)


# -- the tokenizer ---------------------------------------------------------------------------------
def test_conform_rules():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    assert np.array_equal(conform(grey, 3, None), grey.repeat(3, axis=2))
    assert np.array_equal(conform(rgba, 3, None), rgba[..., :3])
    assert np.array_equal(conform(rgba[..., :3], 4, None)[..., 3], np.full((5, 7), 255, np.uint8))
    luma = np.rint(rgba[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert np.array_equal(conform(rgba, 1, None)[..., 0], luma)
    widened = conform(grey, 1, "uint16")
    assert widened.dtype == np.uint16 and np.array_equal(widened, grey.astype(np.uint16) * 257)
    assert np.array_equal(conform(grey, 1, "float32"), grey.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="narrow"):
        conform(widened, 1, "uint8")


def test_mixed_modes_conform_or_refuse(ctx, folder):
    """Mixed RGB / L / RGBA / LA: conformed to 3 channels they tokenize as one batch; kept as they are,
    glmip.tokenize refuses the batch."""
    tokenizer = Tokenizer(BUDGET, PATCH, Gaze(0.3, 0.6))
    batch = tokenizer(folder)
    assert batch.channels == 3 and len(batch) == len(folder)
    assert torch.equal(batch.tokens, expected(folder).tokens)
    with pytest.raises(ValueError, match="channel"):
        Tokenizer(BUDGET, PATCH, channels=None)(folder)
    tokenizer.close()


def test_tokenizer_pickles_without_its_context(ctx, folder):
    tokenizer = Tokenizer(BUDGET, PATCH, "saliency")
    first = tokenizer(folder[:2])
    assert tokenizer.contexts_made == 1
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.contexts_made == 0
    assert torch.equal(copy(folder[:2]).tokens, first.tokens)
    tokenizer.close()
    copy.close()


@pytest.mark.parametrize("make", [
    lambda: Tokenizer(0), lambda: Tokenizer(8, 0), lambda: Tokenizer(8, relevance="foveal"),
    lambda: Tokenizer(8, relevance=[1, 2]), lambda: Tokenizer(8, channels=5),
    lambda: Tokenizer(4, classes=glmip.ClassBudgets(relevant=(3, 8), background=(2, 8))),
    lambda: Query("a dog", None), lambda: Query("a dog", "/no/such/model"), lambda: Query("", "."),
    lambda: Gaze(1.5, 0.5), lambda: Dataset([]), lambda: Dataset(["a.png"], on_error="ignore"),
    lambda: Dataset("a.png"), lambda: Collate("not a tokenizer"),
])
def test_bad_library_input(make):
    with pytest.raises((ValueError, TypeError)):
        make()


# -- DataLoader workers ----------------------------------------------------------------------------
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers_equal_single_process(ctx, folder, start_method):
    """2 workers, each tokenizing on its own Context (the parent's tokenizer already made one here):
    every batch equals glmip.tokenize in this process, bit for bit, with the ids in order."""
    tokenizer = Tokenizer(BUDGET, PATCH, Gaze(0.3, 0.6))
    tokenizer(folder[:1])  # the parent's Context: a fork child must not use it
    loader = torch.utils.data.DataLoader(Dataset(folder), batch_size=3, num_workers=2,
                                         collate_fn=Collate(tokenizer, return_ids=True),
                                         multiprocessing_context=start_method, timeout=TIMEOUT_S)
    batches = list(loader)
    assert [ids for _, ids, _ in batches] == [folder[0:3], folder[3:6], folder[6:7]]
    for start, (batch, _, skipped) in zip(range(0, len(folder), 3), batches, strict=True):
        assert skipped == []
        want = expected(folder[start:start + 3])
        assert torch.equal(batch.tokens, want.tokens) and torch.equal(batch.cu_seqlens, want.cu_seqlens)
        assert all(np.array_equal(a.level, b.level) and np.array_equal(a.cx, b.cx)
                   for a, b in zip(batch.layouts, want.layouts, strict=True))
    tokenizer.close()


def test_workers_skip_corrupt_files_with_path_and_reason(ctx, folder, corrupt):
    items = [folder[0], corrupt[0], folder[2], corrupt[1]]
    loader = torch.utils.data.DataLoader(Dataset(items), batch_size=2, num_workers=2,
                                         collate_fn=Collate(Tokenizer(BUDGET, PATCH), return_ids=True),
                                         timeout=TIMEOUT_S)
    batches = list(loader)
    assert [ids for _, ids, _ in batches] == [[folder[0]], [folder[2]]]
    skipped = [s for _, _, group in batches for s in group]
    assert [s.id for s in skipped] == corrupt
    assert all(s.reason and "image" in s.reason for s in skipped), skipped
    assert torch.equal(batches[1][0].tokens, expected([folder[2]], None).tokens)


def test_workers_raise_on_corrupt_file_when_asked(ctx, folder, corrupt):
    loader = torch.utils.data.DataLoader(Dataset([folder[0], corrupt[0]], on_error="raise"), batch_size=2,
                                         num_workers=2, collate_fn=Collate(Tokenizer(BUDGET, PATCH)),
                                         timeout=TIMEOUT_S)
    with pytest.raises(ValueError, match="truncated.png"):
        list(loader)


# -- shards ----------------------------------------------------------------------------------------
def _shard_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_shards_round_trip_and_manifest(ctx, folder, corrupt, tmp_path, dtype):
    items = folder + corrupt
    manifest = write_shards(items, tmp_path / "out", Tokenizer(BUDGET, PATCH, Gaze(0.3, 0.6)), shard_size=4,
                            dtype=dtype, batch_size=3, progress=False)
    assert manifest["complete"] and manifest["inputs"] == 9 and manifest["images"] == 7
    assert [s["id"] for s in manifest["skipped"]] == corrupt and all(s["reason"] for s in manifest["skipped"])
    assert _shard_files(tmp_path / "out") == ["_manifest.json", "shard-000000.tar", "shard-000001.tar"]
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", None]  # all skipped
    want = expected(folder).tokens
    want = want.half().float() if dtype == "float16" else torch.round(want.clamp(0, 1) * 255) / 255
    batches = list(read_shards(tmp_path / "out", batch_size=4, with_ids=True))
    assert [ids for _, ids in batches] == [folder[0:4], folder[4:7]]
    got = torch.cat([batch.tokens for batch, _ in batches])
    assert torch.equal(got, want)
    assert batches[0][0].image_sizes[2] == (SIZES[2][1], SIZES[2][0])


def test_read_shards_as_iterable_dataset_with_two_workers(ctx, folder, tmp_path):
    write_shards(folder, tmp_path, Tokenizer(BUDGET, PATCH), shard_size=2, progress=False)
    loader = torch.utils.data.DataLoader(read_shards(tmp_path, batch_size=2, with_ids=True), batch_size=None,
                                         num_workers=2, timeout=TIMEOUT_S)
    seen = {name: tokens for batch, ids in loader for name, tokens in zip(ids, [batch[i][0] for i in
                                                                                range(len(batch))], strict=True)}
    assert sorted(seen) == sorted(folder)
    alone = expected(folder, None)
    for index, path in enumerate(folder):
        assert torch.equal(seen[path], alone[index][0].half().float())


def test_shards_resume_keeps_finished_shards_and_refuses_other_options(ctx, folder, tmp_path):
    tokenizer = Tokenizer(BUDGET, PATCH)
    write_shards(folder, tmp_path, tokenizer, shard_size=3, progress=False)
    stats = {name: os.stat(tmp_path / name).st_ino for name in _shard_files(tmp_path) if name.endswith(".tar")}
    again = write_shards(folder, tmp_path, tokenizer, shard_size=3, progress=False)
    assert again["complete"]
    assert {name: os.stat(tmp_path / name).st_ino for name in stats} == stats  # not rewritten
    with pytest.raises(ValueError, match="another output directory"):
        write_shards(folder, tmp_path, Tokenizer(BUDGET + 1, PATCH), shard_size=3, progress=False)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, tarfile
    from glmip.data import Tokenizer, write_shards

    members = 0
    add = tarfile.TarFile.addfile

    def addfile(self, *args, **kwargs):  # SIGKILL while shard 1 is half written (6 members an image)
        global members
        members += 1
        if members == 18 + 8:
            os.kill(os.getpid(), signal.SIGKILL)
        return add(self, *args, **kwargs)

    tarfile.TarFile.addfile = addfile
    write_shards(sys.argv[2:], sys.argv[1], Tokenizer({budget}, {patch}), shard_size=3, progress=False)
""")


def test_writer_killed_mid_shard_leaves_no_half_shard_and_resumes(ctx, folder, tmp_path):
    out = tmp_path / "out"
    script = KILL_SCRIPT.format(budget=BUDGET, patch=PATCH)
    run = subprocess.run([sys.executable, "-c", script, str(out), *folder], timeout=TIMEOUT_S,
                         env={**os.environ, "PYTHONPATH": str(Path(glmip.__file__).parents[1])})
    assert run.returncode == -9, run
    names = _shard_files(out)
    assert "shard-000000.tar" in names and "shard-000001.tar" not in names
    assert any(name.startswith(".shard-000001.tar.tmp.") for name in names), names  # the half shard, unnamed
    assert [s["name"] for s in json.loads((out / "_manifest.json").read_text())["shards"]] == ["shard-000000.tar"]
    assert sum(len(batch) for batch in read_shards(out)) == 3
    inode = os.stat(out / "shard-000000.tar").st_ino
    tokenizer = Tokenizer(BUDGET, PATCH)
    manifest = write_shards(folder, out, tokenizer, shard_size=3, progress=False)
    assert manifest["complete"] and manifest["images"] == len(folder)
    assert os.stat(out / "shard-000000.tar").st_ino == inode
    assert not any(name.startswith(".") for name in _shard_files(out))
    clean = write_shards(folder, tmp_path / "clean", tokenizer, shard_size=3, progress=False)
    assert clean["shards"] == manifest["shards"]
    for resumed, fresh in zip(read_shards(out), read_shards(tmp_path / "clean"), strict=True):
        assert torch.equal(resumed.tokens, fresh.tokens)


# -- the command line ------------------------------------------------------------------------------
def test_cli_tokenize_happy_path(ctx, folder, corrupt, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    for path in folder[:4] + corrupt:
        (source / Path(path).name).write_bytes(Path(path).read_bytes())
    code = main(["tokenize", str(source), "-o", str(tmp_path / "out"), "--budget", str(BUDGET), "--patch",
                 str(PATCH), "--gaze", "0.3,0.6", "--workers", "2", "--shard-size", "2", "--dtype", "uint8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "4 images" in captured.out and "2 skipped" in captured.out
    assert "img/s" in captured.err and "skipped" in captured.err and "Traceback" not in captured.err
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["options"]["dtype"] == "uint8" and len(manifest["skipped"]) == 2
    files = sorted(str(p) for p in source.iterdir())
    images = [f for f in files if f.endswith(("0.png", "1.jpg", "2.png", "3.png"))]
    got = torch.cat([b.tokens for b in read_shards(tmp_path / "out")])
    assert torch.equal(got, torch.round(expected(images).tokens.clamp(0, 1) * 255) / 255)


def _bad_cases(tmp_path: Path, folder: list[str], corrupt: list[str]) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in corrupt:
        (broken / Path(path).name).write_bytes(Path(path).read_bytes())
    good = str(Path(folder[0]).parent)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = str(tmp_path / "out")
    budget = ["--budget", str(BUDGET)]
    return {
        "empty input directory": ([str(empty), "-o", out, *budget], "holds no files"),
        "missing input directory": ([str(tmp_path / "nope"), "-o", out, *budget], "not a directory"),
        "only unreadable files": ([str(broken), "-o", str(tmp_path / "out2"), *budget], "none of the 2 files"),
        "query without a model": ([good, "-o", out, *budget, "--query", "a dog"], "--clip-model"),
        "output is a file": ([good, "-o", str(a_file), *budget], "is a file"),
        "output not writable": ([good, "-o", str(a_file / "sub"), *budget], "cannot create"),
        "budget below class minimums": ([good, "-o", out, "--budget", "5", "--relevant", "4-8", "--background",
                                         "3-8"], "below the class minimums"),
        "two relevance sources": ([good, "-o", out, *budget, "--saliency", "--gaze", "0.5,0.5"], "one relevance"),
        "bad gaze": ([good, "-o", out, *budget, "--gaze", "left"], "--gaze"),
    }


def test_cli_tokenize_bad_inputs_exit_2(folder, corrupt, tmp_path, capsys):
    for name, (args, message) in _bad_cases(tmp_path, folder, corrupt).items():
        code = main(["tokenize", *args])
        captured = capsys.readouterr()
        assert code == 2, (name, captured)
        assert message in captured.err and "Traceback" not in captured.err, (name, captured.err)
    assert not (tmp_path / "out").exists()  # nothing written for inputs refused up front
