"""Token shards as a trainer reads them: webdataset's format and reader, seeded per-epoch shuffling,
a split by rank (a real two-process gloo group) and by DataLoader worker, labels carried through,
glmip's decoder on plain webdataset samples, the first shard format still read, and every kind of
corrupt shard directory answered by one ShardError naming the shard, the member and the reason."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import glmip
from glmip.data import ShardError, Tokenizer, collate_samples, read_shards, write_shards
from glmip.data.shards import LEGACY_MANIFEST, MANIFEST

webdataset = pytest.importorskip("webdataset")

TIMEOUT_S = 180
BUDGET, PATCH = 10, 8
COUNT = 11


def images(count: int = COUNT, seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24 + 3 * i, 40 - i, 3), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """11 labelled images (label = index) in shards of 2: 6 shards."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(images(), out, Tokenizer(BUDGET, PATCH), shard_size=2, labels=list(range(COUNT)), progress=False)
    return out


def labels_read(dataset) -> list[int]:
    return [int(label) for _, labels in dataset for label in labels]


# -- the format ------------------------------------------------------------------------------------
def test_format_is_webdataset_with_the_manifest_out_of_the_way(shards):
    names = sorted(p.name for p in shards.iterdir())
    assert names == [MANIFEST] + [f"shard-{s:06d}.tar" for s in range(6)]
    with tarfile.open(shards / "shard-000000.tar") as tar:
        members = tar.getnames()
    assert members == [f"000000000.{s}" for s in ("cls", "cx.npy", "cy.npy", "json", "level.npy", "size.npy",
                                                   "tokens.npy")] + [f"000000001.{s}" for s in
                                                                    ("cls", "cx.npy", "cy.npy", "json", "level.npy",
                                                                     "size.npy", "tokens.npy")]
    with tarfile.open(shards / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile("000000001.json").read())
        assert tar.extractfile("000000001.cls").read() == b"1"
    assert meta["label"] == 1 and meta["patch"] == PATCH and meta["id"] == "item 1"


def test_collate_samples_on_plain_webdataset_equals_read_shards(ctx, shards):
    """glmip's public decoder as webdataset's collation function, on raw and on `.decode()`d samples."""
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    ours = list(read_shards(shards, batch_size=4, with_labels=True))
    for decoded in (False, True):
        dataset = webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)
        dataset = dataset.decode() if decoded else dataset
        theirs = list(dataset.batched(4, collation_fn=lambda s: collate_samples(s, with_labels=True)))
        assert len(theirs) == len(ours)
        for (a, la), (b, lb) in zip(theirs, ours, strict=True):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.cu_seqlens, b.cu_seqlens)
            assert torch.equal(la, lb) and la.dtype == torch.int64
    want = glmip.tokenize(images(), None, BUDGET, PATCH)
    assert torch.equal(torch.cat([b.tokens for b, _ in ours]), want.tokens.half().float())


def test_no_len_and_an_honest_image_count(shards):
    dataset = read_shards(shards)
    with pytest.raises(TypeError):
        len(dataset)
    assert dataset.images == COUNT


# -- shuffling -------------------------------------------------------------------------------------
def test_shuffle_is_seeded_per_epoch_and_reads_every_image_once(shards):
    ordered = labels_read(read_shards(shards, batch_size=3, with_labels=True))
    assert ordered == list(range(COUNT))
    dataset = read_shards(shards, batch_size=3, with_labels=True, shuffle=True, seed=7)
    orders = []
    for epoch in (0, 1, 0):
        dataset.set_epoch(epoch)
        orders.append(labels_read(dataset))
    assert all(sorted(order) == list(range(COUNT)) for order in orders)
    assert orders[0] == orders[2] and orders[0] != orders[1]
    assert orders[0] != ordered
    again = read_shards(shards, batch_size=3, with_labels=True, shuffle=True, seed=7)
    again.set_epoch(1)
    assert labels_read(again) == orders[1]
    other_seed = read_shards(shards, batch_size=3, with_labels=True, shuffle=True, seed=8)
    other_seed.set_epoch(0)
    assert labels_read(other_seed) != orders[0]
    auto = read_shards(shards, batch_size=3, with_labels=True, shuffle=True, seed=7)  # no set_epoch: passes advance
    assert labels_read(auto) == orders[0] and labels_read(auto) == orders[1]


def test_two_workers_split_shards_and_epochs_differ(ctx, shards):
    """Non-persistent workers, without set_epoch: each epoch reads every image once, and the two orders differ."""
    dataset = read_shards(shards, batch_size=2, with_labels=True, shuffle=4, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, timeout=TIMEOUT_S)
    epochs = [labels_read(loader) for _ in range(2)]
    assert all(Counter(order) == Counter(range(COUNT)) for order in epochs)
    assert epochs[0] != epochs[1]


def test_split_by_explicit_rank_covers_every_image_once(shards):
    seen = []
    for rank in range(3):
        dataset = read_shards(shards, batch_size=5, with_labels=True, shuffle=True, seed=2, rank=rank, world_size=3)
        dataset.set_epoch(4)
        seen.append(labels_read(dataset))
    assert all(seen) and Counter(label for part in seen for label in part) == Counter(range(COUNT))
    with pytest.raises(ValueError, match="ranks"):
        list(read_shards(shards, rank=0, world_size=7))


RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from glmip.data import read_shards

    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dataset = read_shards(out, batch_size=2, with_labels=True, shuffle=True, seed=3)
    result = {}
    for epoch in (0, 1):  # in this process: the rank comes from torch.distributed
        dataset.set_epoch(epoch)
        result[str(epoch)] = [int(x) for _, labels in dataset for x in labels]
    dataset.set_epoch(1)  # spawned workers have no process group: the rank travels with the pickled dataset
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    result["spawn"] = [int(x) for _, labels in loader for x in labels]
    print(json.dumps(result))
    dist.destroy_process_group()
""")


def test_two_gloo_ranks_read_disjoint_halves(shards):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(Path(glmip.__file__).parents[1])
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(port), str(shards)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    results = []
    for process in ranks:
        out, err = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for key in ("0", "1", "spawn"):
        halves = [set(result[key]) for result in results]
        assert halves[0] and halves[1] and not halves[0] & halves[1], (key, results)
        assert halves[0] | halves[1] == set(range(COUNT)), (key, results)
    assert [r["0"] for r in results] != [r["1"] for r in results]
    assert sorted(results[0]["spawn"]) == sorted(results[0]["1"])  # the same epoch, with or without workers


# -- labels ----------------------------------------------------------------------------------------
def test_any_json_label_and_pairs(ctx, tmp_path):
    labels = ["cat", {"boxes": [[1, 2, 3, 4]], "class": 2}, None, 3.5, np.int64(4)]
    write_shards(images(5), tmp_path, Tokenizer(BUDGET, PATCH), shard_size=2, labels=labels, progress=False)
    (batch, got), = list(read_shards(tmp_path, batch_size=8, with_labels=True))
    assert got == ["cat", {"boxes": [[1, 2, 3, 4]], "class": 2}, None, 3.5, 4] and len(batch) == 5
    pairs = tmp_path / "pairs"
    write_shards(list(zip(images(3), [7, 8, 9], strict=True)), pairs, Tokenizer(BUDGET, PATCH), progress=False)
    (_, got), = list(read_shards(pairs, batch_size=8, with_labels=True))
    assert got.tolist() == [7, 8, 9]
    with pytest.raises(TypeError, match="JSON"):
        write_shards(images(2), tmp_path / "bad", Tokenizer(BUDGET, PATCH), labels=[object(), 1], progress=False)
    with pytest.raises(ValueError, match="one label per item"):
        write_shards(images(2), tmp_path / "bad", Tokenizer(BUDGET, PATCH), labels=[1], progress=False)
    assert not (tmp_path / "bad").exists()


# -- configuration errors fail once ----------------------------------------------------------------
def test_settings_no_image_satisfies_fail_before_any_output(tmp_path):
    out = tmp_path / "out"
    tokenizer = Tokenizer(BUDGET, PATCH, glmip.data.Query("a dog", str(tmp_path)))  # a folder with no model
    with pytest.raises(ValueError, match="fail on a plain .* would fail on every input"):
        write_shards(images(3), out, tokenizer, progress=False)
    assert not out.exists()
    for make in (lambda: Tokenizer(8, 8, method="bogus"), lambda: Tokenizer(8, 2000),
                 lambda: Tokenizer(2**70, 8), lambda: glmip.data.Gaze(0.5, 0.5, float("inf"))):
        with pytest.raises(ValueError):
            make()


# -- the first format ------------------------------------------------------------------------------
def _write_legacy(out: Path, batch: glmip.TokenBatch) -> None:
    """Shards as glmip wrote them first: manifest.json beside them, the layout in one .npz member."""
    out.mkdir()
    members = []
    for index in range(len(batch)):
        tokens, layout = batch[index]
        key = f"{index:09d}"
        npy, npz = io.BytesIO(), io.BytesIO()
        np.save(npy, tokens.half().numpy())
        np.savez(npz, cx=layout.cx, cy=layout.cy, size=layout.size, level=layout.level)
        meta = {"id": f"item {index}", "width": layout.image_size[0], "height": layout.image_size[1],
                "channels": 3, "patch": PATCH, "dtype": "float16"}
        members += [(f"{key}.tokens.npy", npy.getvalue()), (f"{key}.layout.npz", npz.getvalue()),
                    (f"{key}.json", json.dumps(meta).encode())]
    _tar(out / "shard-000000.tar", members)
    manifest = {"format": "glmip.shards", "version": 1, "images": len(batch), "options": {}, "inputs": len(batch),
                "shards": [{"shard": 0, "name": "shard-000000.tar", "images": len(batch), "first": 0,
                            "tokens": int(batch.cu_seqlens[-1]), "skipped": []}]}
    (out / LEGACY_MANIFEST).write_text(json.dumps(manifest))


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_first_format_still_reads_and_refuses_to_grow(ctx, tmp_path):
    want = glmip.tokenize(images(4), None, BUDGET, PATCH)
    _write_legacy(tmp_path / "old", want)
    got = list(read_shards(tmp_path / "old", batch_size=8, with_ids=True))
    assert torch.equal(got[0][0].tokens, want.tokens.half().float()) and got[0][1][3] == "item 3"
    with pytest.raises(ValueError, match="first format.*another output directory"):
        write_shards(images(4), tmp_path / "old", Tokenizer(BUDGET, PATCH), progress=False)


# -- corrupt shard directories: one error type, naming shard, member and reason ---------------------
@pytest.fixture()
def copy(shards, tmp_path) -> Path:
    out = tmp_path / "copy"
    out.mkdir()
    for path in shards.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    return out


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _edit(path: Path, name: str, data: bytes | None) -> None:
    """Replace member `name` of a shard (None: drop it)."""
    members = [(n, data if n == name else d) for n, d in _members(path) if n != name or data is not None]
    _tar(path, members)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


SHARD = "shard-000001.tar"
CORRUPTIONS = {
    "truncated tar": (lambda d: (d / SHARD).write_bytes((d / SHARD).read_bytes()[:1500]), SHARD, None),
    "not a tar": (lambda d: (d / SHARD).write_bytes(b"\x00garbage" * 300), SHARD, None),
    "member not .npy": (lambda d: _edit(d / SHARD, "000000002.tokens.npy", b"not numpy"), SHARD,
                        "000000002.tokens.npy"),
    "tokens missing": (lambda d: _edit(d / SHARD, "000000003.tokens.npy", None), SHARD, "000000003.tokens.npy"),
    "layout array missing": (lambda d: _edit(d / SHARD, "000000002.level.npy", None), SHARD, "000000002.level.npy"),
    "json not JSON": (lambda d: _edit(d / SHARD, "000000002.json", b"{nope"), SHARD, "000000002.json"),
    "json without patch": (lambda d: _edit(d / SHARD, "000000002.json", b'{"id": "x", "width": 3, "height": 3}'),
                           SHARD, "000000002.json"),
    "wrong token shape": (lambda d: _edit(d / SHARD, "000000002.tokens.npy", _npy_bytes(np.zeros((2, 3, 4, 4),
                                                                                                 np.float16))),
                          SHARD, "000000002.tokens.npy"),
    "layout length": (lambda d: _edit(d / SHARD, "000000002.cx.npy", _npy_bytes(np.zeros(1))), SHARD,
                      "000000002.cx.npy"),
    "NaN tokens": (lambda d: _edit(d / SHARD, "000000002.tokens.npy",
                                   _npy_bytes(np.full(np.load(io.BytesIO(dict(_members(d / SHARD))[
                                       "000000002.tokens.npy"])).shape, np.nan, np.float16))),
                   SHARD, "000000002.tokens.npy"),
    "shard file missing": (lambda d: (d / SHARD).unlink(), SHARD, None),
    "manifest missing": (lambda d: (d / MANIFEST).unlink(), "copy", None),
    "manifest not JSON": (lambda d: (d / MANIFEST).write_text("{"), MANIFEST, None),
    "manifest of something else": (lambda d: (d / MANIFEST).write_text('{"format": "other"}'), MANIFEST, None),
    "manifest shards wrong": (lambda d: (d / MANIFEST).write_text('{"format": "glmip.shards", "images": 1, '
                                                                   '"shards": [{"name": 5}]}'), MANIFEST, None),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_shard_directory_raises_shard_error(copy, kind):
    corrupt, shard, member = CORRUPTIONS[kind]
    corrupt(copy)
    with pytest.raises(ShardError) as caught:
        for _ in read_shards(copy, batch_size=2):
            pass
    error = caught.value
    assert isinstance(error, ValueError) and Path(error.shard).name == shard, (kind, error)
    assert error.member == member and error.reason, (kind, error)
    assert shard in str(error) and (member is None or member in str(error)), str(error)


def test_a_directory_whose_inputs_were_all_skipped_reads_empty(tmp_path):
    manifest = write_shards([np.zeros((0, 3, 3), np.uint8), "no/such/file.png"], tmp_path, Tokenizer(BUDGET, PATCH),
                            progress=False)
    assert manifest["images"] == 0 and len(manifest["skipped"]) == 2
    assert list(read_shards(tmp_path, shuffle=True)) == [] and read_shards(tmp_path).images == 0


def test_persistent_workers_advance_the_epoch_from_the_one_set(ctx, shards):
    """set_epoch before a persistent loader starts reaches its workers once; each later pass is the next
    epoch, so the two passes differ (a copy stuck at the epoch it was given would repeat its order)."""
    dataset = read_shards(shards, batch_size=2, with_labels=True, shuffle=3, seed=4, rank=0, world_size=1)
    dataset.set_epoch(5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True,
                                         timeout=TIMEOUT_S)
    passes = [labels_read(loader) for _ in range(2)]
    assert all(sorted(order) == list(range(COUNT)) for order in passes) and passes[0] != passes[1]
