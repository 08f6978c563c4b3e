"""The host-free training step of bench/learn.py: `TokenClassifier.forward_padded` against the packed path, the
padded device cache against the packed batches it replaces, and a compiled step against the eager one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glmip
from bench.learn import (
    Cache,
    Input,
    PlainReader,
    Tokenised,
    batch_loss,
    batch_order,
    build_caches,
    logits_of,
    make_model,
    make_optimiser,
    packed_logits_of,
    parse_args,
    train_step,
)
from glmip.models import TokenClassifier
from glmip.token_batch import TokenBatch

PATCH = 16


def random_layout(rng: np.random.Generator, count: int, size: int = 128) -> glmip.TokenLayout:
    """`count` tokens at random centres and fractional levels in a size² image (values need not tile it)."""
    level = rng.uniform(0, 3, count)
    return glmip.TokenLayout(cx=rng.uniform(0, size, count), cy=rng.uniform(0, size, count),
                             size=PATCH * 2.0 ** level, level=level, patch=PATCH, image_size=(size, size))


def padded(tokens: list[torch.Tensor], layouts: list[glmip.TokenLayout], length: int,
           fill: float = 0.0) -> tuple[torch.Tensor, ...]:
    """The padded form written out by hand, `fill` in the padding."""
    batch = len(layouts)
    out = torch.full((batch, length, 3, PATCH, PATCH), fill)
    levels, positions = torch.full((batch, length), 1.0), torch.full((batch, length, 2), fill)
    valid = torch.zeros(batch, length, dtype=torch.bool)
    for b, (part, layout) in enumerate(zip(tokens, layouts, strict=True)):
        n = len(layout)
        out[b, :n], valid[b, :n] = part, True
        levels[b, :n] = torch.from_numpy(layout.level).float()
        positions[b, :n] = torch.from_numpy(np.stack([layout.cx, layout.cy], 1)).float()
    return out, levels, positions, valid


def test_padded_path_gives_the_packed_logits():
    """Same weights, same images: the padded forward equals the `TokenBatch` forward within 1e-5, whatever the
    padded length and whatever the padding holds."""
    torch.manual_seed(0)
    model = TokenClassifier(PATCH, 3, dim=32, depth=2, heads=4, classes=7).eval()
    with torch.no_grad():
        model.embed.level_embed.weight.normal_()  # zero at init: make levels matter
    rng = np.random.default_rng(1)
    layouts = [random_layout(rng, n) for n in (9, 3, 12, 1)]
    tokens = [torch.rand(len(layout), 3, PATCH, PATCH) for layout in layouts]
    with torch.inference_mode():
        packed, _ = model(TokenBatch.from_parts(tokens, layouts), None)
        for length, fill in ((12, 0.0), (20, 7.5)):
            logits, features = model.forward_padded(*padded(tokens, layouts, length, fill))
            assert logits.shape == (4, 7) and features.shape == (4, 1 + length, 32)
            assert (logits - packed).abs().max() <= 1e-5
        full = [torch.rand(5, 3, PATCH, PATCH) for _ in range(2)]
        full_layouts = [random_layout(rng, 5) for _ in range(2)]
        everything, levels, positions, _ = padded(full, full_layouts, 5)
        unmasked, _ = model.forward_padded(everything, levels, positions, None)
        assert (unmasked - model(TokenBatch.from_parts(full, full_layouts), None)[0]).abs().max() <= 1e-5


def test_padded_path_rejects_bad_shapes():
    model = TokenClassifier(PATCH, 3, dim=8, depth=1, heads=1, classes=2)
    tokens, levels, positions = torch.rand(2, 4, 3, PATCH, PATCH), torch.zeros(2, 4), torch.zeros(2, 4, 2)
    with pytest.raises(ValueError, match=r"tokens must be a float \(B, L, 3, 16, 16\)"):
        model.forward_padded(tokens.to(torch.uint8), levels, positions)
    with pytest.raises(ValueError, match=r"levels must be \(2, 4\) and positions \(2, 4, 2\)"):
        model.forward_padded(tokens, levels[:, :3], positions)
    with pytest.raises(ValueError, match=r"valid must be None or a \(2, 4\) bool tensor"):
        model.forward_padded(tokens, levels, positions, torch.ones(2, 4))


@pytest.fixture(scope="module")
def varied_cache() -> dict[str, Cache]:
    """Caches built by bench code from chunks with different token counts per image (7 images, 2 chunks)."""
    rng = np.random.default_rng(2)
    item = Input("glmip-16", "glmip", 16)
    parts = []
    for counts in ((16, 5, 11), (1, 16, 9, 14)):
        layouts = [random_layout(rng, n) for n in counts]
        tokens = torch.from_numpy(rng.integers(0, 256, (sum(counts), 3, PATCH, PATCH), dtype=np.uint8))
        parts.append(Tokenised({item.name: tokens}, {item.name: layouts}, {}, ["".join(
            str(d) for d in rng.integers(0, 10, 2)) for _ in counts]))
    return build_caches(parts, [item], "0123456789", torch.device("cpu"))


def test_device_batch_is_the_packed_batch(varied_cache):
    """A gathered padded batch holds each image's packed tokens, levels and centres, then masked zeros, and gives
    the packed batch's logits."""
    cache = varied_cache["glmip-16"]
    assert cache.tokens.shape == (7, 16, 3, PATCH, PATCH) and cache.tokens.dtype == torch.uint8
    assert cache.counts.tolist() == [16, 5, 11, 1, 16, 9, 14]
    index = [4, 1, 6, 3]
    batch = cache.batch(torch.tensor(index))
    packed = cache.token_batch(index)
    for row, (tokens, layout) in enumerate(packed[i] for i in range(len(index))):
        n = len(layout)
        assert torch.equal(batch.tokens[row, :n], tokens) and not batch.tokens[row, n:].any()
        assert batch.valid[row].tolist() == [True] * n + [False] * (16 - n)
        assert torch.equal(batch.levels[row, :n], torch.from_numpy(layout.level).float())
        assert torch.equal(batch.positions[row, :n, 0], torch.from_numpy(layout.cx).float())
        assert torch.equal(batch.positions[row, :n, 1], torch.from_numpy(layout.cy).float())
    assert torch.equal(batch.codes, cache.codes[index])
    args = parse_args(["--dim", "16", "--depth", "1", "--heads", "2"])
    model = make_model(args).eval()
    with torch.inference_mode():
        assert (logits_of(model, batch, 2) - packed_logits_of(model, packed, 2)).abs().max() <= 1e-5


def test_batch_order_is_the_seeded_permutation_queue():
    """The up-front order is bench.learn's former per-step queue: seeded permutations back to back."""
    order = batch_order(10, 7, 4, seed=3, device="cpu")
    rng = np.random.default_rng(3)
    expected = np.concatenate([rng.permutation(10) for _ in range(3)])[:28].reshape(7, 4)
    assert order.dtype == torch.int64 and np.array_equal(order.numpy(), expected)


def test_compiled_step_equals_eager_step(varied_cache):
    """Through `torch.compile` the first step's gradients and three AdamW steps' losses are the eager ones (float32
    on the CPU, within 1e-5). Weights are not compared element-wise: Adam divides by sqrt(v), so a gradient of
    about eps that differs in its last bits moves its weight by up to lr either way."""
    cache = varied_cache["glmip-16"]
    runs = []
    for compiled in (False, True):
        args = parse_args(["--dim", "8", "--depth", "1", "--heads", "1", "--batch", "4"]
                          + (["--compile"] if compiled else []))
        model = make_model(args)
        optimiser, loss_of = make_optimiser(model, args), batch_loss(model, PlainReader(cache, args.code_length), args)
        order = batch_order(len(cache), 3, 4, args.seed, "cpu")
        losses, gradients = [], None
        try:
            for step in range(3):
                losses.append(float(train_step(loss_of, optimiser, order[step])))
                if step == 0:  # the gradients stay until the next step's zero_grad
                    gradients = torch.cat([p.grad.flatten() for p in model.parameters()])
        except Exception as error:  # noqa: BLE001 - no C++ toolchain for inductor is a reason to skip, said so
            if compiled and "compil" in type(error).__name__.lower() + str(error)[:200].lower():
                pytest.skip(f"torch.compile is unavailable on this CPU torch: {error!s:.200}")
            raise
        runs.append((losses, gradients))
    (eager_losses, eager_gradients), (compiled_losses, compiled_gradients) = runs
    assert eager_gradients.abs().max() > 1e-3, "the step has gradients to compare"
    assert (eager_gradients - compiled_gradients).abs().max() <= 1e-5
    assert np.allclose(eager_losses, compiled_losses, atol=1e-5, rtol=0)
