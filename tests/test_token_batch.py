"""TokenBatch: packed, padded, nested and NaFlex views of one batch agree; save/load; bad inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import glmip
from glmip.token_batch import TokenBatch

# SDPA over the same rows in three layouts: float32 softmax and matmul, summed in different orders
# by the nested, padded and per-sequence kernels; measured max difference 7.2e-7 (200 random batches).
ATTENTION_ATOL = 1e-5


def random_layout(rng: np.random.Generator, n: int, patch: int = 16, fractional: bool = False) -> glmip.TokenLayout:
    """n tokens at random centres and levels (fractional levels if asked) over a 300x200 image."""
    level = rng.uniform(0, 3, n) if fractional else rng.integers(0, 4, n)
    return glmip.TokenLayout(cx=rng.uniform(0, 300, n), cy=rng.uniform(0, 200, n),
                             size=patch * 2.0 ** np.asarray(level, np.float64), level=level, patch=patch,
                             image_size=(300, 200))


def uniform_layout(width: int, height: int, patch: int) -> glmip.TokenLayout:
    rows, cols = np.mgrid[0:height // patch, 0:width // patch]
    n = rows.size
    return glmip.TokenLayout(cx=cols.ravel() * patch + patch / 2.0, cy=rows.ravel() * patch + patch / 2.0,
                             size=np.full(n, float(patch)), level=np.zeros(n, np.int64), patch=patch,
                             image_size=(width, height))


def make_batch(counts: list[int], seed: int = 0, channels: int = 3, patch: int = 16,
               fractional: bool = False) -> TokenBatch:
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    return TokenBatch.from_parts([torch.rand(n, channels, patch, patch, generator=g) for n in counts],
                                 [random_layout(rng, n, patch, fractional) for n in counts])


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The reference for flash-attn's varlen form: (ΣN, H, Dh) packed q, k, v, each sequence attended alone."""
    out = torch.empty_like(q)
    for start, stop in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
        qs, ks, vs = (t[start:stop].transpose(0, 1) for t in (q, k, v))  # (H, n, Dh)
        weights = torch.softmax(qs @ ks.transpose(1, 2) / qs.shape[-1] ** 0.5, dim=-1)
        out[start:stop] = (weights @ vs).transpose(0, 1)
    return out


def test_from_parts_packs_every_per_token_field():
    batch = make_batch([5, 2, 7], fractional=True)
    assert len(batch) == 3 and batch.tokens.shape == (14, 3, 16, 16) and batch.tokens.dtype == torch.float32
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == [0, 5, 7, 14]
    assert batch.max_seqlen == 7 and batch.lengths == (5, 2, 7) and batch.patch == 16
    assert batch.image_sizes == ((300, 200),) * 3
    for b in range(3):
        tokens, layout = batch[b]
        rows = slice(int(batch.cu_seqlens[b]), int(batch.cu_seqlens[b + 1]))
        assert torch.equal(tokens, batch.tokens[rows]) and layout is batch.layouts[b]
        assert np.allclose(batch.levels[rows].numpy(), layout.level, atol=1e-6)  # fractional, not truncated
        assert np.allclose(batch.centres[rows].numpy(), layout.uv_centres, atol=1e-6)
        assert np.allclose(batch.sizes[rows].numpy(), layout.size, rtol=1e-6)
        assert (batch.batch_index()[rows] == b).all()
    assert (batch.levels % 1 != 0).any()
    assert torch.equal(batch[-1][0], batch[2][0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tokens_are_refused_naming_their_image(bad):
    """Values are checked once over the whole batch (one device sync), yet the error names the image that holds
    them, for both constructors."""
    rng = np.random.default_rng(0)
    counts = [3, 4, 2]
    parts = [torch.rand(n, 3, 16, 16) for n in counts]
    parts[1][2, 0, 5, 7] = bad
    layouts = [random_layout(rng, n) for n in counts]
    with pytest.raises(ValueError, match="^image 1: tokens hold NaN or infinite values"):
        TokenBatch.from_parts(parts, layouts)
    with pytest.raises(ValueError, match="^image 1: tokens hold NaN or infinite values"):
        TokenBatch.from_packed(torch.cat(parts), layouts)


def test_padded_and_valid_put_each_image_in_its_row():
    batch = make_batch([3, 1, 4])
    padded, valid = batch.padded()
    assert padded.shape == (3, 4, 3, 16, 16) and valid.dtype == torch.bool
    assert valid.tolist() == [[True] * 3 + [False], [True] + [False] * 3, [True] * 4]  # True = real token
    for b in range(3):
        n = batch.lengths[b]
        assert torch.equal(padded[b, :n], batch[b][0]) and (padded[b, n:] == 0).all()
    wider, wider_valid = batch.padded(pad_to=6)
    assert wider.shape[1] == 6 and torch.equal(wider[:, :4], padded) and not wider_valid[:, 4:].any()


@settings(max_examples=20, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=4), heads=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2**16))
def test_sdpa_on_nested_padded_and_varlen_agree(counts, heads, seed):
    """One projection per token, then SDPA three ways: jagged nested, padded + valid mask, and varlen."""
    batch = make_batch(counts, seed)
    g = torch.Generator().manual_seed(seed)
    dim = 8 * heads
    projection = torch.randn(3 * 16 * 16, 3 * dim, generator=g) * 0.05
    q, k, v = (batch.tokens.flatten(1) @ projection).view(-1, 3, heads, 8).unbind(1)  # each (ΣN, H, 8)

    varlen = varlen_attention(q, k, v, batch.cu_seqlens)
    nq, nk, nv = (batch.nested(t).transpose(1, 2) for t in (q, k, v))  # (B, H, j, 8) jagged
    nested = F.scaled_dot_product_attention(nq, nk, nv).transpose(1, 2).values()
    valid = batch.valid()
    pq, pk, pv = (batch.pad(t).transpose(1, 2) for t in (q, k, v))  # (B, H, L, 8)
    padded = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=valid[:, None, None, :]).transpose(1, 2)
    padded = padded[valid]  # the real rows, packed in the same order

    assert nested.shape == padded.shape == varlen.shape == (sum(counts), heads, 8)
    assert (nested - varlen).abs().max().item() <= ATTENTION_ATOL
    assert (padded - varlen).abs().max().item() <= ATTENTION_ATOL


def test_nested_is_jagged_over_cu_seqlens():
    batch = make_batch([2, 5])
    nested = batch.nested()
    assert nested.layout == torch.jagged and nested.shape[0] == 2 and nested.shape[2:] == (3, 16, 16)
    assert nested.offsets().tolist() == batch.cu_seqlens.tolist()
    assert torch.equal(nested.values(), batch.tokens)


def test_naflex_inputs_follow_timm_patchify_order():
    """A uniform level-0 layout: patches flatten as timm's patchify_image (row, column, channel), coords (row, col)."""
    patch, width, height = 4, 12, 8
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(3))
    tokens = image.unfold(1, patch, patch).unfold(2, patch, patch).permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch)
    layout = uniform_layout(width, height, patch)
    small = uniform_layout(4, 4, patch)
    batch = TokenBatch.from_parts([tokens, tokens[:1]], [layout, small])
    inputs = batch.naflex(mean=0, std=1)
    assert set(inputs) == {"patches", "patch_coord", "patch_valid"}
    assert inputs["patches"].shape == (2, 6, patch * patch * 3)
    assert inputs["patch_coord"].shape == (2, 6, 2) and inputs["patch_coord"].dtype == torch.int64
    assert inputs["patch_valid"].tolist() == [[True] * 6, [True] + [False] * 5]
    # timm's patchify_image, channels_last: img.view(c, nh, ph, nw, pw).permute(1, 3, 2, 4, 0)
    expected = image.view(3, 2, patch, 3, patch).permute(1, 3, 2, 4, 0).reshape(-1, patch * patch * 3)
    assert torch.equal(inputs["patches"][0], expected)
    assert inputs["patch_coord"][0].tolist() == [[r, c] for r in range(2) for c in range(3)]
    channels_first = batch.naflex(channels_last=False, mean=0, std=1)["patches"][0]
    assert torch.equal(channels_first, image.view(3, 2, patch, 3, patch).permute(1, 3, 0, 2, 4).reshape(6, -1))


def test_naflex_coarse_token_gets_the_level0_cell_of_its_centre():
    layout = glmip.TokenLayout(cx=np.array([16.0, 40.0]), cy=np.array([16.0, 8.0]), size=np.array([32.0, 16.0]),
                               level=np.array([1, 0]), patch=16, image_size=(48, 32))
    batch = TokenBatch.from_parts([torch.rand(2, 3, 16, 16)], [layout])
    assert batch.naflex(mean=0, std=1)["patch_coord"][0].tolist() == [[1, 1], [0, 2]]


def test_naflex_normalises_with_the_given_mean_and_std_and_has_no_silent_default():
    batch = make_batch([2, 3])
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.4, 0.8)
    patches = batch.naflex(mean=mean, std=std, channels_last=False)["patches"]
    expected = (batch.tokens - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(patches[0, :2], expected[:2].flatten(1))
    assert torch.allclose(patches[1], expected[2:].flatten(1))
    assert torch.equal(batch.naflex(mean=0.5, std=2)["patches"], batch.naflex(mean=[0.5] * 3, std=[2] * 3)["patches"])
    with pytest.raises(ValueError, match="naflex needs the model's normalisation: mean= and std="):
        batch.naflex()
    for bad in ({"mean": (0.5, 0.5), "std": 1}, {"mean": 0, "std": (1, 0, 1)}, {"mean": "grey", "std": 1},
                {"mean": float("nan"), "std": 1}):
        with pytest.raises(ValueError, match="must be one finite float or 3"):
            batch.naflex(**bad)


def test_save_load_round_trip_keeps_layouts_and_fractional_levels(tmp_path):
    batch = make_batch([4, 6], fractional=True)
    relevant = np.array([True, False, True, True])
    first = batch.layouts[0]
    batch = TokenBatch.from_parts([batch[0][0], batch[1][0]], [glmip.TokenLayout(
        first.cx, first.cy, first.size, first.level, first.patch, first.image_size, relevant), batch.layouts[1]])
    path = tmp_path / "batch.pt"
    batch.save(path)
    raw = torch.load(path, weights_only=True)  # plain tensors and dicts only
    assert raw["layouts"][0]["image_size"] == [300, 200] and raw["layouts"][0]["patch"] == 16
    loaded = TokenBatch.load(path)
    assert torch.equal(loaded.tokens, batch.tokens) and torch.equal(loaded.cu_seqlens, batch.cu_seqlens)
    assert torch.equal(loaded.levels, batch.levels) and (loaded.levels % 1 != 0).any()
    for before, after in zip(batch.layouts, loaded.layouts, strict=True):
        for name in ("cx", "cy", "size", "level"):
            assert np.array_equal(getattr(before, name), getattr(after, name))
            assert getattr(before, name).dtype == getattr(after, name).dtype
        assert after.image_size == before.image_size and after.patch == before.patch
    assert np.array_equal(loaded.layouts[0].relevant, relevant) and loaded.layouts[1].relevant is None
    torch.save({"tokens": batch.tokens}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a saved glmip.TokenBatch"):
        TokenBatch.load(tmp_path / "other.pt")


def test_cli_save_tokens_is_a_loadable_batch(tmp_path):
    path = tmp_path / "tokens.pt"
    result = subprocess.run([sys.executable, "-m", "glmip.cli", "tokens", "--budget", "24", "--gaze", "0.4,0.4",
                             "--save-tokens", str(path), "-o", str(tmp_path / "layout.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    batch = TokenBatch.load(path)
    assert len(batch) == 1 and 1 <= batch.tokens.shape[0] <= 24 and batch.patch == 16
    assert batch.image_sizes[0][0] > 0 and batch.tokens.shape[1:] == (3, 16, 16)


def test_to_moves_every_tensor():
    moved = make_batch([2, 3]).to("meta")
    assert all(t.device.type == "meta" for t in (moved.tokens, moved.cu_seqlens, moved.levels, moved.centres,
                                                  moved.sizes))
    assert moved.lengths == (2, 3) and moved.max_seqlen == 3


def test_bad_inputs_are_named():
    rng = np.random.default_rng(0)
    layout = random_layout(rng, 4)
    tokens = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match="empty batch"):
        TokenBatch.from_parts([], [])
    with pytest.raises(TypeError, match="list of .* tensors.*got Tensor"):
        TokenBatch.from_parts(tokens, [layout])
    with pytest.raises(ValueError, match="one layout per tokens tensor, got 2 tokens tensors and 1"):
        TokenBatch.from_parts([tokens, tokens], [layout])
    with pytest.raises(ValueError, match=r"image 1: tokens have C=1, P=16; image 0 has C=3, P=16"):
        TokenBatch.from_parts([tokens, torch.rand(4, 1, 16, 16)], [layout, layout])
    with pytest.raises(ValueError, match="image 0: tokens are 8x8 but the layout's patch is 16"):
        TokenBatch.from_parts([torch.rand(4, 3, 8, 8)], [layout])
    with pytest.raises(ValueError, match=r"image 0: 5 tokens but the layout has cx \(4,\)"):
        TokenBatch.from_parts([torch.rand(5, 3, 16, 16)], [layout])
    with pytest.raises(TypeError, match="float torch tensor"):
        TokenBatch.from_parts([tokens.to(torch.uint8)], [layout])
    with pytest.raises(TypeError, match="glmip.TokenLayout, got dict"):
        TokenBatch.from_parts([tokens], [{"cx": layout.cx}])
    with pytest.raises(ValueError, match="no tokens"):
        TokenBatch.from_parts([torch.rand(0, 3, 16, 16)], [glmip.TokenLayout(*(np.zeros(0),) * 4, 16, (16, 16))])
    bad_level = glmip.TokenLayout(layout.cx, layout.cy, layout.size, layout.level - 9.0, 16, layout.image_size)
    with pytest.raises(ValueError, match="negative levels"):
        TokenBatch.from_parts([tokens], [bad_level])
    batch = TokenBatch.from_parts([tokens], [layout])
    with pytest.raises(ValueError, match=r"pad_to must be an int >= max_seqlen \(4\), got 2"):
        batch.padded(pad_to=2)
    with pytest.raises(ValueError, match=r"one row per token \(4\)"):
        batch.pad(torch.zeros(3, 2))
    with pytest.raises(IndexError, match="image 1 of a batch of 1"):
        batch[1]


def test_glmip_exports_token_batch_lazily():
    assert glmip.TokenBatch is TokenBatch and "TokenBatch" in glmip.__all__
