"""glmip.data with labels and augmentation, and its configuration errors: `(image, label)` items through
Dataset/Collate (a transform applied before tokenizing, in DataLoader workers), Collate on plain arrays,
`glmip tokenize --labels`, and settings that fail a run once — in the library and on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glmip
from glmip.cli import main
from glmip.data import Collate, Dataset, Tokenizer, prepare_images, read_shards

TIMEOUT_S = 120
BUDGET, PATCH = 10, 8


def arrays(count: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + 4 * i, 41 - 2 * i, 3), dtype=np.uint8) for i in range(count)]


def flip(image: torch.Tensor) -> torch.Tensor:
    """A left-right flip of a (C, H, W) tensor: what torchvision's RandomHorizontalFlip(p=1) does."""
    return image.flip(-1)


# -- Dataset / Collate -----------------------------------------------------------------------------
def test_collate_given_arrays_tokenizes_them(ctx):
    images = arrays(2)
    batch = Collate(Tokenizer(BUDGET, PATCH))(images)
    assert batch is not None and len(batch) == 2
    assert torch.equal(batch.tokens, glmip.tokenize(images, None, BUDGET, PATCH).tokens)
    with pytest.raises(ValueError, match="item 1"):
        Collate(Tokenizer(BUDGET, PATCH))([images[0], np.zeros((0, 4, 3), np.uint8)])


def test_labelled_items_with_a_transform_in_workers(ctx):
    """(image, label) items, a flip before tokenizing, two fork workers: (batch, labels) equal to the
    flipped images tokenized here, labels an int64 tensor in order."""
    images = arrays(5)
    dataset = Dataset(list(zip(images, [10, 11, 12, 13, 14], strict=True)), transform=flip)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2,
                                         collate_fn=Collate(Tokenizer(BUDGET, PATCH)), timeout=TIMEOUT_S)
    out = list(loader)
    assert [labels.tolist() for _, labels in out] == [[10, 11, 12], [13, 14]]
    flipped = [np.ascontiguousarray(image[:, ::-1]) for image in images]
    want = glmip.tokenize(flipped, None, BUDGET, PATCH)
    assert torch.equal(torch.cat([batch.tokens for batch, _ in out]), want.tokens)
    plain = glmip.tokenize(images, None, BUDGET, PATCH)
    assert not torch.equal(want.tokens, plain.tokens)  # the flip mattered


def test_labels_of_any_kind_and_ids(ctx):
    images = arrays(2)
    collate = Collate(Tokenizer(BUDGET, PATCH), return_ids=True)
    batch, labels, ids, skipped = collate([Dataset([(images[0], "cat"), (images[1], "dog")])[i] for i in range(2)])
    assert labels == ["cat", "dog"] and ids == ["item 0", "item 1"] and skipped == [] and len(batch) == 2
    _, labels = Collate(Tokenizer(BUDGET, PATCH))([(images[0], {"box": [1, 2]}), (images[1], {"box": [3, 4]})])
    assert torch.equal(labels["box"][0], torch.tensor([1, 3]))
    with pytest.raises(TypeError, match="mixes"):
        Collate(Tokenizer(BUDGET, PATCH))([(images[0], 1), images[1]])


def test_transform_errors_are_raised_not_skipped(ctx):
    def broken(image):
        raise RuntimeError("augmentation bug")

    with pytest.raises(RuntimeError, match="augmentation bug"):
        Dataset(arrays(1), transform=broken)[0]
    with pytest.raises(TypeError, match="transform returned str"):
        Dataset(arrays(1), transform=lambda image: "not an image")[0]
    with pytest.raises(TypeError, match="callable"):
        Dataset(arrays(1), transform="flip")


def test_transform_sees_chw_tensors_of_the_image_dtype(ctx):
    seen = []

    def record(image):
        seen.append((type(image), tuple(image.shape), image.dtype))
        return image.permute(1, 2, 0).numpy()  # an (H, W, C) array back is accepted too

    grey16 = np.arange(12 * 7, dtype=np.uint16).reshape(12, 7)
    decoded = Dataset([grey16], channels=3, transform=record)[0]
    assert seen == [(torch.Tensor, (1, 12, 7), torch.uint16)]
    assert decoded.image.shape == (12, 7, 3) and decoded.image.dtype == np.uint16


def test_dataset_index_checked():
    dataset = Dataset(arrays(1))
    with pytest.raises(TypeError, match="index must be an int"):
        dataset["a"]
    with pytest.raises(IndexError, match="out of range"):
        dataset[1]
    assert dataset[-1].index == 0


def test_relevance_map_tokenizer(ctx):
    """A relevance map is a documented option: it used to fail with numpy's "truth value ... ambiguous"."""
    relevance = np.random.default_rng(0).random((6, 6))
    images = arrays(2)
    got = Tokenizer(BUDGET, PATCH, relevance=relevance)(images)
    assert torch.equal(got.tokens, glmip.tokenize(prepare_images(images), relevance, BUDGET, PATCH).tokens)


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture()
def folder(tmp_path) -> Path:
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    for index, image in enumerate(arrays(3)):
        Image.fromarray(image).save(source / ("sub" if index == 2 else ".") / f"img{index}.png")
    return source


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_labels_file_into_every_sample(ctx, folder, tmp_path, capsys, suffix):
    labels = tmp_path / f"labels{suffix}"
    if suffix == ".csv":
        labels.write_text("path,label\nimg0.png,3\nimg1.png,cat\nsub/img2.png,\"{\"\"box\"\": [1, 2]}\"\nnone.png,9\n")
        want = [3, "cat", {"box": [1, 2]}]
    else:
        labels.write_text('{"path": "img0.png", "label": 3}\n{"path": "img1.png", "label": [1, 2]}\n'
                          f'{{"path": "{folder / "sub" / "img2.png"}", "score": 0.5}}\n')
        want = [3, [1, 2], {"score": 0.5}]
    code = main(["tokenize", str(folder), "-o", str(tmp_path / "out"), "--budget", str(BUDGET), "--patch", str(PATCH),
                 "--labels", str(labels), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert ("1 label(s)" in captured.err) == (suffix == ".csv")
    (_, got, ids), = list(read_shards(tmp_path / "out", batch_size=8, with_labels=True, with_ids=True))
    assert [Path(i).name for i in ids] == ["img0.png", "img1.png", "img2.png"] and got == want


def test_cli_configuration_errors_exit_2_once_before_any_output(folder, tmp_path, capsys):
    out = tmp_path / "out"
    labels = tmp_path / "labels.csv"
    labels.write_text("img0.png,1\n")
    cases = {
        "patch over the limit": (["--patch", "2000"], "MAX_PATCH"),
        "infinite radius": (["--gaze", "0.5,0.5", "--radius", "inf"], "radius"),
        "a budget past int32": (["--budget", str(10**20)], "at most"),
        "a folder that is no CLIP model": (["--query", "a dog", "--clip-model", str(tmp_path)], "every input"),
        "an input without a label": (["--labels", str(labels)], "have no label"),
        "a labels file of another kind": (["--labels", str(folder / "img0.png")], ".csv or .jsonl"),
    }
    for name, (extra, message) in cases.items():
        code = main(["tokenize", str(folder), "-o", str(out), "--budget", str(BUDGET), *extra, "-q"])
        captured = capsys.readouterr()
        assert code == 2, (name, captured)
        assert message in captured.err and "Traceback" not in captured.err, (name, captured.err)
        assert captured.err.count("\n") == 1 and "skipped" not in captured.err, (name, captured.err)
    assert not out.exists()


def test_manifest_totals_in_the_cli_summary(ctx, folder, tmp_path, capsys):
    assert main(["tokenize", str(folder), "-o", str(tmp_path / "out"), "--budget", str(BUDGET), "-q"]) == 0
    summary = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert f"{manifest['images']} images, {manifest['tokens']} tokens" in summary and "_manifest.json" in summary


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["tokenize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "samples per token side (default: 16)" in text and "images per shard (default: 256)" in text
    assert "--labels FILE" in text
