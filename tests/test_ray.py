"""glmip on a real local Ray cluster (ray.init(num_cpus=2), torn down after): paths -> from_items ->
map_batches(GlmipTokenize) on 2 actors -> shards in glmip's format, equal to the single-process result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import glmip
from glmip.data import Gaze, Tokenizer, collate_samples, prepare_images, read_shards, write_shards

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'glmip[ray]') is not installed")
from glmip.data.ray import GlmipTokenize, ray_write_shards  # noqa: E402

BUDGET, PATCH = 10, 8
SIZES = [(37, 53), (64, 64), (21, 90), (48, 33), (40, 40)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    out = []
    for index, (height, width) in enumerate(SIZES):
        path = root / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    return out + [str(broken)]


def test_map_batches_columns_equal_single_process(ctx, cluster, paths):
    """GlmipTokenize over ray.data.from_items on 2 actors: per-image tokens and layouts equal glmip.tokenize;
    each actor holds one Context; the broken file comes back with its reason."""
    tokenizer = Tokenizer(BUDGET, PATCH, Gaze(0.3, 0.6))
    rows = [{"index": i, "path": p} for i, p in enumerate(paths)]
    ds = ray.data.from_items(rows).map_batches(
        GlmipTokenize, fn_constructor_kwargs={"tokenizer": tokenizer, "dtype": "float16"}, batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=2), batch_format="numpy")
    out = sorted(ds.take_all(), key=lambda row: row["index"])
    assert [row["index"] for row in out] == list(range(len(paths)))
    assert all(row["contexts"] == 1 for row in out)
    assert "cannot read" in out[-1]["error"] and "broken.png" in out[-1]["error"]
    want = glmip.tokenize(prepare_images(paths[:-1]), lambda p: glmip.gaze((p.width, p.height), (0.3, 0.6), 0.12),
                          BUDGET, PATCH)
    for index, row in enumerate(out[:-1]):
        tokens, layout = want[index]
        assert row["error"] == "" and (row["width"], row["height"]) == layout.image_size
        assert np.array_equal(row["tokens"], tokens.half().numpy())
        assert np.array_equal(row["level"], layout.level) and np.array_equal(row["cx"], layout.cx)


def test_ray_shards_equal_local_shards(ctx, cluster, paths, tmp_path):
    tokenizer = Tokenizer(BUDGET, PATCH)
    manifest = ray_write_shards(paths, tmp_path / "ray", tokenizer, shard_size=2, concurrency=2, batch_size=2,
                                dtype="uint8")
    local = write_shards(paths, tmp_path / "local", tokenizer, shard_size=2, dtype="uint8", progress=False)
    assert manifest["shards"] == local["shards"] and manifest["images"] == len(paths) - 1
    assert json.loads((tmp_path / "ray" / "_manifest.json").read_text())["skipped"][0]["id"] == paths[-1]
    for from_ray, from_local in zip(read_shards(tmp_path / "ray"), read_shards(tmp_path / "local"), strict=True):
        assert torch.equal(from_ray.tokens, from_local.tokens) and from_ray.image_sizes == from_local.image_sizes


def test_read_webdataset_on_the_folder_as_written(ctx, cluster, paths, tmp_path):
    """`ray.data.read_webdataset(OUT)` reads ray_write_shards' folder as it is (the manifest and temporary
    files out of its way): tokens and layouts are Arrow tensor columns, not pickled objects, the labels
    come through, and glmip's decoder turns the rows into the TokenBatch read_shards gives."""
    out = tmp_path / "ray"
    ray_write_shards(paths, out, Tokenizer(BUDGET, PATCH), shard_size=2, concurrency=1, batch_size=2,
                     labels=[f"label {i}" for i in range(len(paths))])
    (out / ".shard-000099.tar.tmp.1").write_bytes(b"half a shard")
    ds = ray.data.read_webdataset(str(out))
    schema = ds.schema()
    types = dict(zip(schema.names, schema.types, strict=True))
    for column in ("tokens.npy", "cx.npy", "level.npy"):
        assert "Tensor" in type(types[column]).__name__, (column, types[column])
    rows = sorted(ds.take_all(), key=lambda row: row["__key__"])
    batch, labels, ids = collate_samples(rows, with_labels=True, with_ids=True)
    (want, want_labels, want_ids), = list(read_shards(out, batch_size=16, with_labels=True, with_ids=True))
    assert torch.equal(batch.tokens, want.tokens) and batch.image_sizes == want.image_sizes
    assert labels == want_labels == [f"label {i}" for i in range(len(paths) - 1)] and ids == want_ids == paths[:-1]


def test_readme_recipe_on_a_cpu_only_cluster(ctx, cluster, paths, tmp_path):
    """The Ray recipe of docs/data.md picks num_gpus=0 here and finishes; asking for a GPU the cluster lacks is refused
    at once instead of waiting for it forever."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    assert gpus == 0
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths[:2])])
    tokens = ds.map_batches(GlmipTokenize, fn_constructor_kwargs={"tokenizer": Tokenizer(BUDGET, PATCH)},
                            batch_size=16, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=8), num_gpus=gpus)
    assert sorted(row["index"] for row in tokens.take_all()) == [0, 1]
    with pytest.raises(ValueError, match="CPU-only"):
        ray_write_shards(paths, tmp_path / "gpu", Tokenizer(BUDGET, PATCH), num_gpus=1)
    assert not (tmp_path / "gpu").exists()
