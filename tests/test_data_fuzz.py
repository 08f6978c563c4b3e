"""Randomised calls of glmip.data's public surface, valid and invalid values of every argument: each call
returns a result or raises one of the documented types (ValueError — ShardError among them — TypeError,
and IndexError for a Dataset index), never anything else, and the tokenizer's Context is left with
GL_NO_ERROR. Example counts stay small: the whole file runs in well under a minute on 2 cores."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import glmip
from glmip.data import (
    Collate,
    Dataset,
    Gaze,
    Query,
    ShardError,
    Tokenizer,
    collate_samples,
    conform,
    decode_sample,
    prepare_images,
    read_shards,
    write_shards,
)

DOCUMENTED = (ValueError, TypeError)
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

junk = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=6), st.binary(max_size=6), st.lists(st.integers(-3, 3), max_size=3),
                 st.just(object()), st.just(np.zeros((2, 2))), st.just(torch.zeros(3)))
small_int = st.integers(-3, 24)
image = hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32, np.int32]),
                   st.tuples(st.integers(0, 9), st.integers(1, 9), st.integers(0, 6)))
valid_image = st.builds(lambda h, w, c, seed: np.random.default_rng(seed).integers(0, 256, (h, w, c), np.uint8),
                        st.integers(1, 21), st.integers(1, 21), st.sampled_from([1, 3, 4]), st.integers(0, 9))
relevance = st.one_of(st.sampled_from(["foveal", ""]),
                      st.builds(lambda h, w, s: np.random.default_rng(s).random((h, w)), st.integers(1, 7),
                                st.integers(1, 7), st.integers(0, 9)),
                      st.just(np.full((3, 3), np.nan)), st.just(np.zeros((0, 3))), st.just(np.zeros((2, 2, 2))),
                      st.builds(Gaze, st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1)), junk)


def outcome(call):
    """The call's result, or None when it raised a documented error type; anything else fails the test."""
    try:
        return call()
    except DOCUMENTED:
        return None


def one_bad(valid: dict, bad: dict):
    """(keyword arguments, the name of the one replaced by a value of its `bad` strategy, or None: all valid)."""
    names = sorted(bad)
    return st.tuples(st.fixed_dictionaries(valid), st.one_of(st.none(), st.sampled_from(names).flatmap(
        lambda name: st.tuples(st.just(name), bad[name])))).map(
        lambda pair: (pair[0], None) if pair[1] is None else ({**pair[0], pair[1][0]: pair[1][1]}, pair[1][0]))


def must_succeed(call):
    """The call's result: every argument was valid, so no error is acceptable."""
    return call()


relevance_map = st.builds(lambda h, w, s: np.random.default_rng(s).random((h, w)), st.integers(1, 7),
                          st.integers(1, 7), st.integers(0, 9))
TOKENIZER_VALID = {"budget": st.integers(1, 24), "patch": st.integers(1, 12),
                   "relevance": st.one_of(st.sampled_from(["uniform", "saliency"]), relevance_map,
                                          st.builds(Gaze, st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1))),
                   "channels": st.sampled_from([None, 1, 2, 3, 4]),
                   "method": st.sampled_from(["hardware", "box", "lanczos"]),
                   "filter": st.sampled_from(["trilinear", "anisotropic"]), "srgb": st.booleans(),
                   "out_device": st.just("cpu")}
TOKENIZER_BAD = {"budget": st.one_of(st.integers(-3, 0), junk, st.just(2**40)),
                 "patch": st.one_of(st.integers(-2, 0), junk, st.just(2000)), "relevance": relevance,
                 "channels": st.one_of(st.sampled_from([0, 5]), junk),
                 "method": st.one_of(st.just("bogus"), junk),
                 "filter": st.one_of(st.sampled_from(["x", "nearest"]), junk),
                 "srgb": junk, "out_device": st.one_of(st.sampled_from(["cuda", "xyz", "meta"]), junk)}


@FAST
@given(kwargs=one_bad(TOKENIZER_VALID, TOKENIZER_BAD),
       images=st.one_of(st.lists(valid_image, min_size=1, max_size=3),
                        st.lists(st.one_of(valid_image, junk), min_size=0, max_size=3)))
def test_tokenizer(ctx, kwargs, images):
    kwargs, bad = kwargs
    if kwargs["srgb"] is True and kwargs["channels"] in (1, 2):
        bad = "srgb"  # sRGB decoding is for colour: refused with grey channels
    tokenizer = outcome(lambda: Tokenizer(**kwargs)) if bad else must_succeed(lambda: Tokenizer(**kwargs))
    if tokenizer is None:
        return
    valid = bool(images) and all(isinstance(i, np.ndarray) and i.dtype == np.uint8 for i in images) and (
        kwargs["channels"] is not None or len({i.shape[2] for i in images}) == 1) and not (
        kwargs["srgb"] and kwargs["channels"] is None and any(i.shape[2] < 3 for i in images))
    try:
        batch = must_succeed(lambda: tokenizer(images)) if valid and not bad else outcome(lambda: tokenizer(images))
        assert batch is None or len(batch) == len(images)
        assert tokenizer.contexts_made == 0 or tokenizer.context.gl.error == "GL_NO_ERROR"
    finally:
        tokenizer.close()


@settings(max_examples=60, deadline=None)
@given(x=st.one_of(st.floats(allow_nan=True), junk), y=st.one_of(st.floats(-1, 2), junk),
       radius=st.one_of(st.floats(allow_nan=True, allow_infinity=True), junk),
       text=st.one_of(st.text(max_size=4), junk),
       model=st.one_of(st.just("/no/such/model"), junk))
def test_gaze_and_query(x, y, radius, text, model):
    gaze = outcome(lambda: Gaze(x, y, radius))
    assert gaze is None or (0 <= gaze.x <= 1 and np.isfinite(gaze.radius) and gaze.radius > 0)
    outcome(lambda: Query(text, model))


@settings(max_examples=80, deadline=None)
@given(kwargs=one_bad({"array": valid_image, "channels": st.sampled_from([None, 1, 2, 3, 4]),
                       "dtype": st.sampled_from([None, "uint8", "uint16", "float32"])},
                      {"array": st.one_of(image, junk), "channels": st.one_of(st.sampled_from([0, 5]), junk),
                       "dtype": st.one_of(st.sampled_from(["uint32", "int8"]), junk)}))
def test_conform_and_prepare(kwargs):
    kwargs, bad = kwargs
    out = (outcome if bad else must_succeed)(lambda: conform(**kwargs))
    if out is not None:
        assert out.ndim == 3 and (kwargs["channels"] is None or out.shape[2] == kwargs["channels"])
        assert out.dtype.name == (kwargs["dtype"] or "uint8")
    (outcome if bad else must_succeed)(lambda: prepare_images([kwargs["array"]], kwargs["channels"]))


@FAST
@given(items=st.one_of(st.lists(st.one_of(valid_image, st.tuples(valid_image, junk), junk), max_size=3), junk),
       channels=st.one_of(st.sampled_from([None, 3, 0]), junk), on_error=st.one_of(st.sampled_from(["skip", "raise"]),
                                                                                   junk),
       transform=st.sampled_from([None, lambda t: t.flip(-1), "flip"]), index=st.one_of(small_int, junk))
def test_dataset_and_collate(ctx, items, channels, on_error, transform, index):
    dataset = outcome(lambda: Dataset(items, channels=channels, on_error=on_error, transform=transform))
    if dataset is None:
        return
    try:
        item = dataset[index]
    except (ValueError, TypeError, IndexError):
        return
    tokenizer = Tokenizer(8, 4)
    try:
        outcome(lambda: Collate(tokenizer)([item]))
        assert tokenizer.contexts_made == 0 or tokenizer.context.gl.error == "GL_NO_ERROR"
    finally:
        tokenizer.close()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


member_value = st.one_of(junk, st.just(_npy(np.zeros((1, 3, 4, 4), np.float16))), st.just(_npy(np.zeros(1))),
                         st.just(np.zeros((1, 3, 4, 4), np.uint8)), st.just(np.zeros(2)),
                         st.just(b'{"id": "a", "width": 4, "height": 4, "patch": 4}'),
                         st.just({"id": "a", "width": 4, "height": 4, "patch": 4, "label": 1}),
                         st.just(b"{"), st.just(json.dumps({"id": 1, "width": -1}).encode()))
sample = st.dictionaries(st.sampled_from(["tokens.npy", "cx.npy", "cy.npy", "size.npy", "level.npy", "relevant.npy",
                                          "json", "layout.npz", "__key__", "__url__"]), member_value, max_size=10)


@settings(max_examples=120, deadline=None)
@given(samples=st.one_of(st.lists(sample, max_size=3), junk), with_labels=st.booleans(), with_ids=st.booleans())
def test_decoder(samples, with_labels, with_ids):
    result = outcome(lambda: collate_samples(samples, with_labels=with_labels, with_ids=with_ids))
    if result is not None:
        batch = result[0] if isinstance(result, tuple) else result
        assert len(batch) == len(samples)
    if isinstance(samples, list) and samples:
        outcome(lambda: decode_sample(samples[0]))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz_shards")
    rng = np.random.default_rng(0)
    write_shards([rng.integers(0, 256, (9 + i, 12, 3), np.uint8) for i in range(5)], out, Tokenizer(8, 4),
                 shard_size=2, labels=[0, 1, 2, 3, 4], progress=False)
    return out


READ_VALID = {"batch_size": st.integers(1, 6), "device": st.just("cpu"), "with_ids": st.booleans(),
              "with_labels": st.booleans(), "shuffle": st.one_of(st.booleans(), st.integers(1, 5)),
              "seed": st.integers(0, 9), "rank": st.none(), "world_size": st.none()}
READ_BAD = {"batch_size": st.one_of(st.integers(-2, 0), junk), "device": st.one_of(st.sampled_from(["cuda", "xyz"]),
                                                                                    junk),
            "with_ids": junk, "with_labels": junk, "shuffle": st.one_of(st.integers(-2, 0), junk),
            "seed": junk, "rank": st.one_of(st.integers(-1, 4), junk),
            "world_size": st.one_of(st.integers(-1, 4), junk)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kwargs=one_bad(READ_VALID, READ_BAD), epoch=st.one_of(st.integers(0, 5), junk))
def test_read_shards(shard_dir, kwargs, epoch):
    kwargs, bad = kwargs
    dataset = (outcome if bad else must_succeed)(lambda: read_shards(shard_dir, **kwargs))
    if dataset is None:
        return
    outcome(lambda: dataset.set_epoch(epoch))
    batches = (outcome if bad else must_succeed)(lambda: list(dataset))
    if batches is not None:
        got = [b[0] if isinstance(b, tuple) else b for b in batches]
        assert all(len(b) <= kwargs["batch_size"] for b in got)
        if kwargs.get("world_size") in (None, 1):
            assert sum(len(b) for b in got) == 5
    with pytest.raises(ShardError):
        read_shards(shard_dir / "missing")


WRITE_VALID = {"shard_size": st.integers(1, 3), "dtype": st.sampled_from(["float16", "uint8"]),
               "workers": st.just(0), "batch_size": st.integers(1, 3), "labels": st.none(), "ids": st.none()}
WRITE_BAD = {"shard_size": st.one_of(st.integers(-1, 0), junk), "dtype": st.one_of(st.just("float64"), junk),
             "workers": st.one_of(st.just(-1), junk), "batch_size": st.one_of(st.integers(-1, 0), junk),
             "labels": st.one_of(st.lists(st.one_of(st.integers(), st.text(max_size=3), junk), max_size=3), junk),
             "ids": st.one_of(st.lists(st.one_of(st.text(max_size=3), junk), max_size=3), junk)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=st.lists(st.one_of(valid_image, valid_image, junk), min_size=1, max_size=3),
       kwargs=one_bad(WRITE_VALID, WRITE_BAD))
def test_write_shards(ctx, images, kwargs):
    kwargs, bad = kwargs
    with tempfile.TemporaryDirectory() as out:
        tokenizer = Tokenizer(8, 4)
        try:
            write = lambda: write_shards(images, Path(out) / "s", tokenizer, progress=False, **kwargs)  # noqa: E731
            manifest = outcome(write) if bad else must_succeed(write)
            assert tokenizer.contexts_made == 0 or tokenizer.context.gl.error == "GL_NO_ERROR"
        finally:
            tokenizer.close()
        if manifest is not None:
            assert manifest["images"] + len(manifest["skipped"]) == len(images)
            assert sum(len(batch) for batch in read_shards(Path(out) / "s")) == manifest["images"]


def test_shard_error_is_a_value_error_and_pickles():
    import pickle

    error = pickle.loads(pickle.dumps(ShardError("a/shard-000000.tar", "000000001.json", "not JSON")))
    assert isinstance(error, ValueError) and error.member == "000000001.json" and "a/shard-000000.tar" in str(error)
    assert glmip.data.ShardError is ShardError
