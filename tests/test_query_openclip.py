"""`glmip.query_relevance` with a real open_clip model: a tiny randomly initialised CLIP built from a
config written here (open_clip's `local-dir:` schema, no weights) and open_clip's own SimpleTokenizer,
whose BPE vocabulary ships inside the package. Sockets are blocked while the model is built and
queried, so the test proves nothing is downloaded."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

import glmip
from glmip import reference
from glmip.query import ClipScorer, query_relevance, sliding_windows

TINY_CONFIG = {
    "model_cfg": {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "preprocess_cfg": {"mean": [0.5, 0.45, 0.4], "std": [0.25, 0.26, 0.27]},
}


def _import_open_clip():
    try:
        import open_clip
    except (ImportError, RuntimeError) as error:  # a torchvision built for another torch raises RuntimeError
        pytest.skip(f"open_clip cannot be imported here ({type(error).__name__}: {error}); "
                    "the integration stage (scripts/integration.sh) has it")
    return open_clip


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_open_clip(tmp_path, no_network):
    open_clip = _import_open_clip()
    (tmp_path / "open_clip_config.json").write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{tmp_path}", load_weights=False).eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    assert isinstance(tokenizer, open_clip.SimpleTokenizer) and tokenizer.context_length == 16
    return model, tokenizer


def test_open_clip_scorer_takes_size_and_normalisation_from_the_model(tiny_open_clip):
    model, tokenizer = tiny_open_clip
    scorer = ClipScorer.load(model, tokenizer)
    assert scorer.kind == "open_clip" and scorer.input_size == 32
    assert scorer.mean == (0.5, 0.45, 0.4) and scorer.std == (0.25, 0.26, 0.27)
    features = scorer.text_features(["a red cup", "coffee"])
    assert features.shape == (2, 16)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))


def test_open_clip_query_scores_are_the_models_scores_of_the_windows(ctx, tiny_open_clip):
    """Each window's score is open_clip's cosine similarity (its own encode_image/encode_text on its
    own tokens) of the reference crop of that window and the text; the map spans [0, 1]."""
    model, tokenizer = tiny_open_clip
    with ctx.pyramid(glmip.DEFAULT_IMAGE, method="box") as pyramid:
        relevance, windows, scores = query_relevance(pyramid, "a cup of coffee", model, tokenizer,
                                                     return_scores=True)
        levels = [pyramid.level(i) for i in range(pyramid.levels)]
        width, height = pyramid.width, pyramid.height
    assert relevance.shape == (height // 8, width // 8) and relevance.min() == 0.0 and relevance.max() == 1.0
    assert len(windows.cx) == len(sliding_windows((width, height), (0.5, 0.25), 32).cx)
    crops = torch.from_numpy(reference.tokens(levels, windows.cx, windows.cy, windows.size, windows.level, 32))
    mean = torch.tensor(TINY_CONFIG["preprocess_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(TINY_CONFIG["preprocess_cfg"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image((crops[:, :3].float() - mean) / std), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(["a cup of coffee"])), dim=-1)
    expected = (image @ text.T)[:, 0].numpy()
    assert np.abs(expected).max() > 0  # a real, non-degenerate score
    np.testing.assert_allclose(scores, expected, atol=2e-3)  # crops within 2 LSB of the reference
