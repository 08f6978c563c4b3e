"""`glmip.data.TokenStream`: a loader's batches as TokenBatches, equal to tokenizing each batch on its own,
in order, with labels beside them, errors raised at the batch they belong to, and nothing left open."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import glmip
from glmip.data import Gaze, Tokenizer, TokenStream
from glmip.pyramid import PyramidBatch


def images(seed: int, count: int, size: tuple[int, int] = (48, 40)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def assert_same(a: glmip.TokenBatch, b: glmip.TokenBatch) -> None:
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.cu_seqlens, b.cu_seqlens)
    assert torch.equal(a.levels, b.levels) and torch.equal(a.centres, b.centres)


@pytest.mark.parametrize("relevance", ["uniform", "saliency", Gaze(0.3, 0.6)])
def test_stream_equals_each_batch_tokenized_alone(relevance):
    tokenizer = Tokenizer(budget=12, patch=8, relevance=relevance)
    batches = [images(seed, 3) for seed in range(4)] + [images(9, 2, (33, 57))]
    streamed = list(TokenStream(batches, tokenizer))
    assert len(streamed) == len(batches)
    for batch, out in zip(batches, streamed, strict=True):
        assert_same(out, tokenizer(batch))
    tokenizer.close()


def test_labels_pass_beside_their_batch_and_stacked_inputs_are_taken_as_they_are():
    tokenizer = Tokenizer(budget=10, patch=8)
    stacked = np.stack(images(3, 4))
    tensor = torch.from_numpy(np.stack(images(4, 2))).permute(0, 3, 1, 2).contiguous()  # BxCxHxW
    source = [(stacked, ["a", "b", "c", "d"]), (tensor, torch.tensor([1, 2]))]
    (first, labels_a), (second, labels_b) = list(TokenStream(source, tokenizer, prefetch=1))
    assert labels_a == ["a", "b", "c", "d"] and labels_b.tolist() == [1, 2]
    assert_same(first, tokenizer(list(stacked)))
    assert_same(second, tokenizer(list(np.stack(images(4, 2)))))
    tokenizer.close()


def test_a_generator_is_read_once_ahead_and_in_order():
    tokenizer = Tokenizer(budget=8, patch=8)
    pulled = []

    def source():
        for seed in range(6):
            pulled.append(seed)
            yield images(seed, 1)

    stream = iter(TokenStream(source(), tokenizer, prefetch=2))
    first = next(stream)
    assert_same(first, tokenizer(images(0, 1)))
    assert len(pulled) <= 1 + 1 + 2 + 1  # the batch out, the staged one, `prefetch` queued, one in hand
    rest = list(stream)
    assert len(rest) == 5 and pulled == list(range(6))
    tokenizer.close()


def test_an_error_in_the_source_is_raised_at_its_batch_after_the_good_ones():
    tokenizer = Tokenizer(budget=8, patch=8)

    def source():
        yield images(0, 2)
        yield ["no/such/image.png"]

    stream = iter(TokenStream(source(), tokenizer))
    assert len(next(stream)) == 2
    with pytest.raises((ValueError, OSError), match="no/such/image.png"):
        next(stream)
    tokenizer.close()


def test_breaking_out_closes_the_staged_pyramids_and_stops_the_worker():
    tokenizer = Tokenizer(budget=8, patch=8)
    closed = []
    original = PyramidBatch.close

    def counting_close(self):
        closed.append(id(self))
        original(self)

    PyramidBatch.close = counting_close
    try:
        stream = iter(TokenStream((images(seed, 2) for seed in range(50)), tokenizer, prefetch=1))
        next(stream)
        next(stream)
        stream.close()  # what a `break` out of the for loop does
    finally:
        PyramidBatch.close = original
    assert len(set(closed)) == 3  # the two batches handed out and the one staged behind them
    assert not any(t.name == "glmip-token-stream" and t.is_alive() for t in threading.enumerate())
    assert tokenizer.context.live_textures == 0
    tokenizer.close()


@pytest.mark.parametrize("bad, error, match", [
    ({"source": "folder/"}, TypeError, "source must be an iterable of batches"),
    ({"source": 3}, TypeError, "source must be an iterable of batches"),
    ({"tokenizer": glmip.tokenize}, TypeError, "tokenizer must be a glmip.data.Tokenizer"),
    ({"prefetch": 0}, ValueError, "prefetch"),
    ({"prefetch": 9}, ValueError, r"prefetch must be 1\.\.8"),
    ({"prefetch": 1.5}, TypeError, "prefetch"),
])
def test_bad_settings_are_refused_before_any_work(bad, error, match):
    settings = {"source": [images(0, 1)], "tokenizer": Tokenizer(budget=8, patch=8), "prefetch": 2, **bad}
    with pytest.raises(error, match=match):
        TokenStream(settings.pop("source"), settings.pop("tokenizer"), **settings)


def test_the_detail_criterion_goes_through_the_tokenizer_and_the_stream():
    batch = images(7, 2, (64, 48))
    batch[0][:, :32] = 100  # a flat left half: detail puts fewer tokens there than relevance alone
    tokenizer = Tokenizer(budget=16, patch=8, criterion="detail")
    want = glmip.tokenize(batch, None, 16, 8, criterion="detail", context=tokenizer.context)
    assert_same(tokenizer(batch), want)
    (streamed,) = list(TokenStream([batch], tokenizer))
    assert_same(streamed, want)
    plain = Tokenizer(budget=16, patch=8)(batch)
    assert not torch.equal(plain.centres, want.centres)
    assert "criterion=detail" in repr(tokenizer)
    with pytest.raises(ValueError, match="unknown criterion 'entropy'"):
        Tokenizer(budget=16, patch=8, criterion="entropy")
    tokenizer.close()
