"""One GL context for the whole session, checked for GL errors around every test that uses it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import settings

import glmip

# CI replays the same examples every run, so a red run is reproducible from its log.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Tolerances the tests hold, in LSBs of the format (float32: absolute, scaled by the data's range).
TOLERANCE_LSB = {"box": 1, "lanczos": 1, "hardware_step": 1}
FLOAT_TOLERANCE = 2e-5


@pytest.fixture(scope="session")
def session_context():
    with glmip.Context() as ctx:
        yield ctx


@pytest.fixture
def ctx(session_context):
    session_context.gl.error  # noqa: B018 - reading clears a stale error
    yield session_context
    if not session_context.closed:
        assert session_context.gl.error == "GL_NO_ERROR"


def random_image(rng: np.random.Generator, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """Random pixels over the whole range of `dtype` (float32: [0, 1])."""
    if dtype == "float32":
        return rng.random((height, width, channels), dtype=np.float32)
    info = np.iinfo(dtype)
    return rng.integers(0, int(info.max) + 1, size=(height, width, channels), dtype=dtype)


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference in LSBs (integer formats) or in value (float32)."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def tolerance(method: str, dtype: str, image: np.ndarray) -> float:
    if dtype == "float32":
        return FLOAT_TOLERANCE * max(1.0, float(np.abs(image).max()))
    return TOLERANCE_LSB[method]


VOCAB = ["<s>", "</s>", "<pad>", "<unk>", "a", "red", "cup", "of", "coffee", "square"]


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny randomly initialised transformers CLIP and a word-level tokenizer, built here (no download)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    config = transformers.CLIPConfig(
        text_config={"vocab_size": len(VOCAB), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    return model, tokenizer
