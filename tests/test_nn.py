"""LodPatchEmbed: equal to a ViT's own embedding on a uniform level-0 layout, padding, levels, loading, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import glmip
from glmip.nn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LodPatchEmbed,
    attention_bias,
    attention_mask,
    attention_pool,
    interpolate_grid,
    masked_max,
    masked_mean,
    resample_grid,
    sincos_position,
)
from glmip.token_batch import TokenBatch

try:  # at import, before any glmip.Context exists: importing timm (triton) after one crashes in some venvs
    import timm as _TIMM
except (ImportError, RuntimeError) as _error:  # a CUDA torchvision wheel on CPU torch raises RuntimeError
    _TIMM = _error

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vit_tokens.py"
# Level-0 tokens sampled at texel centres are the texels themselves (no filtering happens), so
# they match the pixels up to float32 rounding of k / 255; measured on llvmpipe: 1.5e-5 LSB.
TEXEL_CENTRE_LSB = 1e-3
# LodPatchEmbed vs conv2d + pos_embed on the same inputs: float32 summation order over C*P*P
# terms and the bilinear weights of a centre that lands on a grid cell; measured: 3.8e-6.
EMBED_ATOL = 1e-4


def uniform_layout(width: int, height: int, patch: int = 16, level: int = 0) -> glmip.TokenLayout:
    return glmip.TokenLayout.grid((width, height), patch, level)


def pixel_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, H, W) -> (N, C, P, P) row-major non-overlapping patches (what a uniform level-0 layout samples)."""
    channels = pixels.shape[0]
    return pixels.unfold(1, patch, patch).unfold(2, patch, patch).permute(1, 2, 0, 3, 4).reshape(
        -1, channels, patch, patch)


def timm_state(dim: int, patch: int, grid: tuple[int, int], class_token: bool = True, reg_tokens: int = 0,
               no_embed_class: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under timm VisionTransformer's key names and shapes (vision_transformer.py)."""
    g = torch.Generator().manual_seed(seed)
    prefix = int(class_token) + reg_tokens
    length = grid[0] * grid[1] + (0 if no_embed_class else prefix)
    state = {"patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=g) * 0.02,
             "patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.02,
             "pos_embed": torch.randn(1, length, dim, generator=g) * 0.02,
             "blocks.0.norm1.weight": torch.ones(dim)}  # a key of the rest of the model, ignored
    if class_token:
        state["cls_token"] = torch.randn(1, 1, dim, generator=g) * 0.02
    if reg_tokens:
        state["reg_token"] = torch.randn(1, reg_tokens, dim, generator=g) * 0.02
    return state


def timm_embed(state: dict[str, torch.Tensor], image01: torch.Tensor, no_embed_class: bool,
               mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """timm's `_pos_embed(patch_embed(normalise(image)))` written out: (1, C, H, W) in [0, 1] -> (1, L, D)."""
    x = (image01 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    weight = state["patch_embed.proj.weight"]
    x = F.conv2d(x, weight, state.get("patch_embed.proj.bias"), stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    prefix = [state[k] for k in ("cls_token", "reg_token") if k in state]
    if no_embed_class:
        return torch.cat(prefix + [x + state["pos_embed"]], 1)
    return torch.cat(prefix + [x], 1) + state["pos_embed"]


class TimmLike(nn.Module):
    """A module with timm VisionTransformer's embedding attributes (timm itself cannot load here)."""

    def __init__(self, state: dict[str, torch.Tensor], grid: tuple[int, int], no_embed_class: bool) -> None:
        super().__init__()
        weight = state["patch_embed.proj.weight"]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], weight.shape[-1])
        self.patch_embed.proj.weight.data.copy_(weight)
        self.patch_embed.proj.bias.data.copy_(state["patch_embed.proj.bias"])
        self.patch_embed.norm = nn.Identity()
        self.patch_embed.grid_size = grid
        self.pos_embed = nn.Parameter(state["pos_embed"].clone())
        self.cls_token = nn.Parameter(state["cls_token"].clone()) if "cls_token" in state else None
        self.reg_token = nn.Parameter(state["reg_token"].clone()) if "reg_token" in state else None
        self.num_prefix_tokens = int(self.cls_token is not None) + (self.reg_token.shape[1] if self.reg_token
                                                                     is not None else 0)
        self.no_embed_class = no_embed_class
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def random_layout(rng: np.random.Generator, n: int, max_level: int = 3, patch: int = 16) -> glmip.TokenLayout:
    """n tokens at random levels and centres (no tiling needed for the embedding)."""
    level = rng.integers(0, max_level + 1, n)
    size = (patch << level).astype(np.float64)
    return glmip.TokenLayout(cx=rng.uniform(0, 300, n), cy=rng.uniform(0, 200, n), size=size, level=level,
                             patch=patch, image_size=(300, 200))


# -- the key property: a uniform level-0 layout reproduces the ViT ----------------------------
def test_uniform_level0_layout_equals_vit_embedding(ctx):
    """224x224, 16-px patches, timm-named weights with a class token: glmip tokens -> LodPatchEmbed
    equals conv(patch) + pos_embed on the raw pixels."""
    patch, dim, side = 16, 192, 224
    state = timm_state(dim, patch, (side // patch, side // patch))
    image = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    layout = uniform_layout(side, side, patch)
    with ctx.pyramid(image) as pyramid:
        tokens = pyramid.tokens(layout)
    pixels01 = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # 8-bit textures sample as unorm [0, 1]
    token_error_lsb = (tokens - pixel_patches(pixels01, patch)).abs().max().item() * 255
    assert token_error_lsb <= TEXEL_CENTRE_LSB, f"level-0 tokens differ from the pixels by {token_error_lsb} LSB"

    embedded, valid = LodPatchEmbed.from_timm(state)(tokens, layout)
    expected = timm_embed(state, pixels01[None], no_embed_class=False)
    assert embedded.shape == expected.shape == (1, 1 + 14 * 14, dim)
    assert valid.all()
    error = (embedded - expected).abs().max().item()
    assert error <= EMBED_ATOL, f"max |LodPatchEmbed - ViT embedding| = {error}"


@pytest.mark.parametrize("class_token,reg_tokens,no_embed_class", [
    (True, 0, False), (True, 0, True), (True, 4, True), (True, 4, False), (False, 1, True), (False, 0, True)])
def test_from_timm_state_dict_matches_timm_semantics(class_token, reg_tokens, no_embed_class):
    """Prefix tokens (cls, registers) with or without their own position entries, from a state dict."""
    patch, dim, grid = 8, 32, (4, 4)
    state = timm_state(dim, patch, grid, class_token, reg_tokens, no_embed_class, seed=reg_tokens)
    pixels01 = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    module = LodPatchEmbed.from_timm(state)
    embedded, _ = module(pixel_patches(pixels01, patch), uniform_layout(32, 32, patch))
    expected = timm_embed(state, pixels01[None], no_embed_class)
    assert module.prefix_tokens == int(class_token) + reg_tokens
    assert (embedded - expected).abs().max().item() <= EMBED_ATOL


def test_from_timm_module_non_square_grid_and_config(ctx):
    """A module with timm's attributes: a 3x5 grid from patch_embed.grid_size, mean/std from pretrained_cfg."""
    patch, dim, grid = 16, 48, (3, 5)
    state = timm_state(dim, patch, grid, reg_tokens=2, no_embed_class=True)
    image = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    layout = uniform_layout(80, 48, patch)
    with ctx.pyramid(image) as pyramid:
        tokens = pyramid.tokens(layout)
    embedded, _ = LodPatchEmbed.from_timm(TimmLike(state, grid, no_embed_class=True))(tokens, layout)
    pixels01 = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    expected = timm_embed(state, pixels01, True, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert (embedded - expected).abs().max().item() <= EMBED_ATOL


def _import_timm():
    if isinstance(_TIMM, Exception):
        pytest.skip(f"timm cannot be imported here ({type(_TIMM).__name__}: {_TIMM}); "
                    "the state-dict and attribute tests above cover the same layout")
    return _TIMM


@pytest.mark.parametrize("reg_tokens,no_embed_class", [(0, False), (2, True)])
def test_real_timm_vit(ctx, reg_tokens, no_embed_class):
    """A real timm VisionTransformer (random weights, nothing downloaded): equal to its own _pos_embed."""
    timm = _import_timm()
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2, reg_tokens=reg_tokens,
                            no_embed_class=no_embed_class).eval()
    assert timm.__version__
    image = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    layout = uniform_layout(64, 64)
    with ctx.pyramid(image) as pyramid:
        tokens = pyramid.tokens(layout)
    embed = LodPatchEmbed.from_timm(vit, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pixels01 = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    normalised = (pixels01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    with torch.no_grad():
        expected = vit._pos_embed(vit.patch_embed(normalised))
        embedded, _ = embed(tokens, layout)
    assert (embedded - expected).abs().max().item() <= EMBED_ATOL


# -- batches of different token counts -----------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 24), min_size=1, max_size=5), prefix=st.integers(0, 2),
       position=st.sampled_from(["grid", "sincos", "none"]), seed=st.integers(0, 2**16))
def test_padded_batch_equals_each_image_alone(counts, prefix, position, seed):
    """Row b holds image b's prefix + tokens, then zeros; valid is False exactly on those zeros."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    module = LodPatchEmbed(16, 3, 32, position=position, grid_size=(4, 6), prefix_tokens=prefix)
    nn.init.normal_(module.level_embed.weight)
    tokens = [torch.rand(n, 3, 16, 16) for n in counts]
    layouts = [random_layout(rng, n) for n in counts]
    embedded, valid = module(tokens, layouts)
    length = prefix + max(counts)
    assert embedded.shape == (len(counts), length, 32) and valid.shape == (len(counts), length)
    assert valid.dtype == torch.bool
    for b, n in enumerate(counts):
        assert valid[b, :prefix + n].all() and not valid[b, prefix + n:].any()
        assert (embedded[b, prefix + n:] == 0).all()
        alone, alone_valid = module(tokens[b], layouts[b])
        assert alone.shape == (1, prefix + n, 32) and alone_valid.all()
        assert torch.allclose(embedded[b, :prefix + n], alone[0], atol=1e-5)


def test_attention_mask_keeps_padding_out():
    """Valid rows attend the same in a padded batch as alone, via SDPA and nn.MultiheadAttention."""
    torch.manual_seed(0)
    module = LodPatchEmbed(16, 3, 32, prefix_tokens=1)
    rng = np.random.default_rng(0)
    tokens, layouts = [torch.rand(5, 3, 16, 16), torch.rand(2, 3, 16, 16)], [random_layout(rng, 5),
                                                                              random_layout(rng, 2)]
    x, valid = module(tokens, layouts)
    mask = attention_mask(valid)
    assert mask.shape == (2, 1, 1, 6) and mask.dtype == torch.bool and (mask[:, 0, 0] == valid).all()
    assert valid.tolist() == [[True] * 6, [True] * 3 + [False] * 3]  # True = real token (SDPA's polarity)
    attention = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        sdpa = F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], attn_mask=mask)[:, 0]
        mha = attention(x, x, x, key_padding_mask=~valid)[0]
        alone_x, _ = module(tokens[1], layouts[1])
        alone_sdpa = F.scaled_dot_product_attention(alone_x, alone_x, alone_x)
        alone_mha = attention(alone_x, alone_x, alone_x)[0]
    assert torch.allclose(sdpa[1, :3], alone_sdpa[0], atol=1e-5)
    assert torch.allclose(mha[1, :3], alone_mha[0], atol=1e-5)
    with pytest.raises(ValueError, match="bool"):
        attention_mask(valid.float())


# -- levels and positions --------------------------------------------------------------------
def test_level_embedding_changes_only_nonzero_level_tokens():
    state = timm_state(32, 16, (4, 4))
    module = LodPatchEmbed.from_timm(state)
    rng = np.random.default_rng(5)
    layout = random_layout(rng, 40)
    tokens = torch.rand(40, 3, 16, 16)
    before, _ = module(tokens, layout)
    with torch.no_grad():
        module.level_embed.weight[1:] = torch.randn(module.levels - 1, 32)
    after, _ = module(tokens, layout)
    change = (after - before)[0, 1:]  # past the class token
    level = torch.from_numpy(layout.level)
    assert (level == 0).any() and (level > 0).any()
    assert change[level == 0].abs().max().item() == 0
    assert torch.allclose(change[level > 0], module.level_embed.weight[level[level > 0]], atol=1e-6)


def test_fractional_level_interpolates_between_rows():
    module = LodPatchEmbed(16, 3, 8, position="none")
    nn.init.normal_(module.level_embed.weight)
    got = module.level_embedding(torch.tensor([1.25, 0.0, 15.0]))
    weight = module.level_embed.weight
    assert torch.allclose(got[0], 0.75 * weight[1] + 0.25 * weight[2], atol=1e-6)
    assert torch.equal(got[1], weight[0]) and torch.equal(got[2], weight[15])


def test_grid_position_of_a_coarse_token_is_the_mean_of_the_cells_it_covers():
    """A level-1 token centred on the corner of four 16-px cells gets their bilinear mean."""
    grid = torch.randn(1, 8, 4, 4)
    value = interpolate_grid(grid, torch.tensor([[32 / 64, 32 / 64], [8 / 64, 8 / 64], [-1.0, 2.0]]))
    assert torch.allclose(value[0], grid[0, :, 1:3, 1:3].mean((1, 2)), atol=1e-6)
    assert torch.allclose(value[1], grid[0, :, 0, 0], atol=1e-6)
    assert torch.allclose(value[2], grid[0, :, 3, 0], atol=1e-6)  # outside: the edge cell holds


def test_sincos_position_is_mae_grid_on_level0_centres():
    """Level-0 token (i, j) sits at integer patch position (j, i): sin 0 = 0, cos 0 = 1 at the origin."""
    module = LodPatchEmbed(16, 3, 16, position="sincos")
    layout = uniform_layout(64, 32)
    embedded, _ = module(torch.full((8, 3, 16, 16), 0.5), layout)
    positions = embedded[0] - module.proj(((torch.full((1, 3, 16, 16), 0.5) - module.mean) / module.std).flatten(1))
    expected = sincos_position(torch.tensor([[float(j), float(i)] for i in range(2) for j in range(4)]), 16)
    assert torch.allclose(positions, expected, atol=1e-5)
    assert torch.equal(expected[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))


def test_gradients_reach_tokens_and_every_parameter_used():
    module = LodPatchEmbed(16, 3, 32, position="grid", grid_size=(3, 3), prefix_tokens=1)
    rng = np.random.default_rng(6)
    tokens = [torch.rand(6, 3, 16, 16, requires_grad=True), torch.rand(3, 3, 16, 16, requires_grad=True)]
    layouts = [random_layout(rng, 6), random_layout(rng, 3)]
    embedded, valid = module(tokens, layouts)
    (embedded[valid] ** 2).sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tokens)


def test_input_scale_and_normalisation_are_explicit():
    """Float images in 0..255 with input_scale=1/255 embed like [0, 1] tokens at scale 1."""
    module = LodPatchEmbed(16, 3, 16, position="none")
    layout = random_layout(np.random.default_rng(7), 4)
    tokens01 = torch.rand(4, 3, 16, 16)
    scaled = LodPatchEmbed(16, 3, 16, position="none", input_scale=1 / 255)
    scaled.load_state_dict(module.state_dict())
    assert torch.allclose(module(tokens01, layout)[0], scaled(tokens01 * 255, layout)[0], atol=1e-5)


# -- errors ----------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    module = LodPatchEmbed(16, 3, 32)
    layout = random_layout(np.random.default_rng(8), 4)
    tokens = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\).*\(4, 4, 16, 16\)"):
        module(torch.rand(4, 4, 16, 16), layout)
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\).*\(4, 3, 8, 8\)"):
        module(torch.rand(4, 3, 8, 8), layout)
    with pytest.raises(ValueError, match="layout's patch is 8"):
        module(tokens, glmip.TokenLayout(layout.cx, layout.cy, layout.size, layout.level, 8, layout.image_size))
    with pytest.raises(ValueError, match="5 tokens but the layout"):
        module(torch.rand(5, 3, 16, 16), layout)
    with pytest.raises(ValueError, match="image 1: 5 tokens"):
        module([tokens, torch.rand(5, 3, 16, 16)], [layout, layout])
    with pytest.raises(ValueError, match="one layout per tokens tensor"):
        module([tokens, tokens], [layout])
    with pytest.raises(TypeError, match="pass tokens .* got ndarray"):
        module(tokens.numpy(), layout)
    with pytest.raises(TypeError, match="float torch tensor"):
        module((tokens * 255).to(torch.uint8), layout)
    with pytest.raises(TypeError, match="TokenLayout"):
        module(tokens, {"cx": layout.cx})
    with pytest.raises(TypeError, match="one layout"):
        module(tokens, [layout])
    with pytest.raises(ValueError, match=r"levels must lie within 0\.\.15"):
        module(tokens, glmip.TokenLayout(layout.cx, layout.cy, layout.size, layout.level + 20, 16, layout.image_size))
    with pytest.raises(ValueError, match="at least one"):
        module(torch.rand(0, 3, 16, 16), glmip.TokenLayout(*(np.zeros(0),) * 4, 16, (16, 16)))
    with pytest.raises(ValueError, match="unknown position 'learned'"):
        LodPatchEmbed(position="learned")
    with pytest.raises(ValueError, match="grid_size"):
        LodPatchEmbed(position="grid")
    with pytest.raises(ValueError, match="one value per channel"):
        LodPatchEmbed(in_channels=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        LodPatchEmbed(dim=30)


def test_from_timm_rejects_what_it_cannot_load():
    with pytest.raises(TypeError, match="VisionTransformer or its state dict"):
        LodPatchEmbed.from_timm(torch.zeros(3))
    with pytest.raises(TypeError, match="no patch_embed.proj"):
        LodPatchEmbed.from_timm(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"\(D, C, P, P\)"):
        LodPatchEmbed.from_timm({"pos_embed": torch.zeros(1, 5, 4)})
    ambiguous = timm_state(8, 4, (2, 2), reg_tokens=4, no_embed_class=True)  # 4 = 2x2 and 9 = 4 + 5 = 3x3
    ambiguous["pos_embed"] = torch.zeros(1, 9, 8)
    with pytest.raises(ValueError, match="no_embed_class"):
        LodPatchEmbed.from_timm(ambiguous)
    assert LodPatchEmbed.from_timm(ambiguous, no_embed_class=False).pos_grid.shape == (1, 8, 2, 2)
    with pytest.raises(ValueError, match="grid_size"):
        LodPatchEmbed.from_timm(timm_state(8, 4, (2, 3)), no_embed_class=False)


# -- TokenBatch, compile, masked pooling ------------------------------------------------------------
POOL_ATOL = 1e-5  # issue 11: an image's pooled output in a padded batch equals its result alone within 1e-5


class MaskedBlock(nn.Module):
    """A pre-norm ViT block whose attention takes the additive mask of `attention_bias`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.norm1, self.norm2 = heads, nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class PatchDropoutLike(nn.Module):
    """timm's PatchDropout as forward_timm reads it (prob, ordered); timm itself cannot load here."""

    def __init__(self, prob: float, ordered: bool) -> None:
        super().__init__()
        self.prob, self.ordered = prob, ordered


class MaskedTimmBlock(MaskedBlock):
    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, attn_mask)


def timm_like_vit(patch_drop: float = 0.0, ordered: bool = False) -> TimmLike:
    """TimmLike with timm VisionTransformer's trunk attributes: blocks taking attn_mask, norms, 'avg' pool, head."""
    torch.manual_seed(0)
    vit = TimmLike(timm_state(32, 16, (4, 4)), (4, 4), no_embed_class=False)
    vit.blocks = nn.Sequential(MaskedTimmBlock(32, 2), MaskedTimmBlock(32, 2))
    vit.norm, vit.fc_norm, vit.head, vit.global_pool = nn.LayerNorm(32), nn.Identity(), nn.Linear(32, 5), "avg"
    vit.patch_drop = PatchDropoutLike(patch_drop, ordered) if patch_drop else nn.Identity()
    return vit


def test_from_timm_owns_the_embedding_and_patch_dropout_keeps_real_tokens_in_order():
    g = torch.Generator().manual_seed(1)
    batch = TokenBatch.from_parts([torch.rand(n, 3, 16, 16, generator=g) for n in (49, 25)],
                                  [uniform_layout(112, 112), uniform_layout(80, 80)])
    vit = timm_like_vit()
    model = glmip.nn.from_timm(vit)
    assert vit.patch_embed is None and vit.pos_embed is None and vit.cls_token is None
    assert "embed.pos_grid" in model.state_dict() and "vit.pos_embed" not in model.state_dict()
    torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 1])).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    dropping = glmip.nn.from_timm(timm_like_vit(0.5, ordered=True)).train()
    seen = {}
    dropping.vit.blocks[0].register_forward_pre_hook(lambda _, args, kwargs: seen.update(x=args[0], **kwargs),
                                                     with_kwargs=True)
    with torch.no_grad():
        embedded, _ = dropping.embed(batch)
        dropping(batch)
    valid = seen["attn_mask"][:, 0, 0] == 0
    assert seen["x"].shape[1] == 1 + 24 and valid.sum(1).tolist() == [1 + 24, 1 + 12]
    for image, length in ((0, 49), (1, 25)):
        kept = seen["x"][image, 1:][valid[image, 1:]]
        where = (kept[:, None] == embedded[image, 1:1 + length][None]).all(-1).float().argmax(1)
        assert (kept[:, None] == embedded[image, 1:1 + length][None]).all(-1).any(1).all()
        assert where.tolist() == sorted(set(where.tolist())), "ordered: kept tokens in layout order, no repeats"
    with pytest.raises(TypeError, match=r"from_timm\(vit\)"):
        glmip.nn.forward_timm(timm_like_vit(), batch)


def test_token_batch_input_equals_lists():
    rng = np.random.default_rng(11)
    module = LodPatchEmbed(16, 3, 32, position="grid", grid_size=(4, 6), prefix_tokens=2)
    nn.init.normal_(module.level_embed.weight)
    tokens = [torch.rand(n, 3, 16, 16) for n in (3, 8)]
    layouts = [random_layout(rng, n) for n in (3, 8)]
    from_lists = module(tokens, layouts)
    from_batch = module(TokenBatch.from_parts(tokens, layouts))
    assert torch.equal(from_lists.embeddings, from_batch.embeddings) and torch.equal(from_lists.valid, from_batch.valid)
    with pytest.raises(TypeError, match="carries its layouts"):
        module(TokenBatch.from_parts(tokens, layouts), layouts)
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\).*\(4, 1, 16, 16\)"):
        module(TokenBatch.from_parts([torch.rand(4, 1, 16, 16)], [random_layout(rng, 4)]))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("kind", ["grid", "dynamic", "sincos", "none"])
def test_forward_compiles_with_fullgraph(backend, kind):
    """torch.compile(fullgraph=True) traces forward on a TokenBatch (no numpy, no data-dependent branch)."""
    torch._dynamo.reset()
    options = {"grid": {"position": "grid", "grid_size": (4, 6)}, "sincos": {"position": "sincos"},
               "dynamic": {"position": "grid", "grid_size": (4, 6), "dynamic_grid": True}, "none": {"position": "none"}}
    module = LodPatchEmbed(16, 3, 32, prefix_tokens=1, **options[kind])
    nn.init.normal_(module.level_embed.weight)
    rng = np.random.default_rng(12)
    layouts = [random_layout(rng, n) for n in (5, 2, 7)]
    layouts[0] = glmip.TokenLayout(layouts[0].cx, layouts[0].cy, layouts[0].size, layouts[0].level + 0.5, 16,
                                   layouts[0].image_size)  # fractional levels too
    batch = TokenBatch.from_parts([torch.rand(len(layout), 3, 16, 16) for layout in layouts], layouts)
    expected = module(batch)
    compiled = torch.compile(module, backend=backend, fullgraph=True)(batch)
    assert (compiled.embeddings - expected.embeddings).abs().max().item() <= 1e-6
    assert torch.equal(compiled.valid, expected.valid)


def test_image_in_a_padded_batch_pools_as_alone():
    """Embedding, blocks and token / avg / max / MAP pooling of each image equal its run alone within 1e-5."""
    torch.manual_seed(13)
    dim, heads = 32, 4
    embed = LodPatchEmbed(16, 3, dim, position="sincos", prefix_tokens=1)
    nn.init.normal_(embed.level_embed.weight)
    blocks = nn.ModuleList(MaskedBlock(dim, heads) for _ in range(2))
    pool = nn.MultiheadAttention(dim, heads, batch_first=True)
    latent = torch.randn(1, dim)
    rng = np.random.default_rng(13)
    counts = (9, 2, 5)
    tokens = [torch.rand(n, 3, 16, 16) for n in counts]
    layouts = [random_layout(rng, n) for n in counts]

    def run(batch: TokenBatch) -> dict[str, torch.Tensor]:
        x, valid = embed(batch)
        for block in blocks:
            x = block(x, attention_bias(valid))
        patches, patch_valid = x[:, 1:], valid[:, 1:]
        return {"x": x, "token": x[:, 0], "avg": masked_mean(patches, patch_valid),
                "max": masked_max(patches, patch_valid), "map": attention_pool(pool, patches, patch_valid, latent)}

    with torch.no_grad():
        together = run(TokenBatch.from_parts(tokens, layouts))
        for b, n in enumerate(counts):
            alone = run(TokenBatch.from_parts([tokens[b]], [layouts[b]]))
            assert (together["x"][b, :1 + n] - alone["x"][0]).abs().max().item() <= POOL_ATOL
            for name in ("token", "avg", "max", "map"):
                error = (together[name][b] - alone[name][0]).abs().max().item()
                assert error <= POOL_ATOL, f"image {b}, {name} pool: {error}"
        # what the mask prevents: pooling over the zero padding moves the shortest image's average
        x, valid = embed(TokenBatch.from_parts(tokens, layouts))
        assert (x[1, 1:].mean(0) - masked_mean(x[1:2, 1:], valid[1:2, 1:])[0]).abs().max().item() > 1e-3


def test_masked_pool_helpers_reject_bad_masks():
    with pytest.raises(ValueError, match=r"\(B, L\) bool"):
        masked_mean(torch.zeros(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="batch_first=True and a query"):
        attention_pool(nn.MultiheadAttention(4, 1, batch_first=True), torch.zeros(2, 3, 4), torch.ones(2, 3).bool())
    with pytest.raises(TypeError, match="takes no attn_mask"):
        attention_pool(nn.Linear(4, 4), torch.zeros(2, 3, 4), torch.ones(2, 3).bool())
    bias = attention_bias(torch.tensor([[True, False]]))
    assert bias.shape == (1, 1, 1, 2) and bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] == float("-inf")


def test_dynamic_grid_resamples_like_timm_at_a_non_native_size():
    """A dynamic-size ViT (native 4x4 grid) on a 96x64 image: timm resamples pos_embed to 4x6 (bicubic,
    antialias) and adds cell (i, j) to patch (i, j); a uniform level-0 layout reproduces that."""
    patch, dim = 16, 32
    state = timm_state(dim, patch, (4, 4), reg_tokens=1)
    vit = TimmLike(state, (4, 4), no_embed_class=False)
    vit.dynamic_img_size = True
    embed = LodPatchEmbed.from_timm(vit)
    assert embed.dynamic_grid and not LodPatchEmbed.from_timm(state).dynamic_grid
    pixels01 = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(14))
    embedded, _ = embed(pixel_patches(pixels01, patch), uniform_layout(96, 64, patch))
    x = (pixels01[None] - 0.5) / 0.5  # TimmLike's pretrained_cfg mean/std
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    grid = state["pos_embed"][:, 2:].reshape(1, 4, 4, dim).permute(0, 3, 1, 2)
    resampled = F.interpolate(grid, size=(4, 6), mode="bicubic", antialias=True)  # timm's resample_abs_pos_embed
    expected = torch.cat([state["cls_token"], state["reg_token"]], 1) + state["pos_embed"][:, :2]
    expected = torch.cat([expected, (x + resampled).flatten(2).transpose(1, 2)], 1)
    assert (embedded - expected).abs().max().item() <= EMBED_ATOL
    assert resample_grid(grid, (4, 4)) is grid
    stretched, _ = LodPatchEmbed.from_timm(vit, dynamic_size=False)(pixel_patches(pixels01, patch),
                                                                   uniform_layout(96, 64, patch))
    assert (stretched - expected).abs().max().item() > 1e-3  # the two conventions differ off the native grid


def test_from_timm_refuses_rope_relpos_and_hybrid():
    state = timm_state(16, 8, (2, 2))

    class RopeViT(TimmLike):
        pass

    rope = RopeViT(state, (2, 2), no_embed_class=False)
    rope.rope = nn.Identity()
    with pytest.raises(ValueError, match="RopeViT uses rotary position embeddings"):
        LodPatchEmbed.from_timm(rope)
    relpos = TimmLike(state, (2, 2), no_embed_class=False)
    relpos.blocks = nn.Sequential(nn.Module())
    relpos.blocks[0].relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
    with pytest.raises(ValueError, match="TimmLike uses relative position biases"):
        LodPatchEmbed.from_timm(relpos)
    hybrid = TimmLike(state, (2, 2), no_embed_class=False)
    hybrid.patch_embed.backbone = nn.Conv2d(3, 3, 3)
    with pytest.raises(ValueError, match="TimmLike is a hybrid ViT: a Conv2d backbone"):
        LodPatchEmbed.from_timm(hybrid)


# -- the example ---------------------------------------------------------------------------------
def test_example_trains_a_timm_vit_through_from_timm(ctx, capsys):
    """The example trains the model from_timm returns: its embedding moves, the loss is finite, and after
    training a view in the padded batch still gets the logits it gets alone."""
    _import_timm()
    spec = importlib.util.spec_from_file_location("vit_tokens_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--budget", "16", "--depth", "1", "--steps", "3"], ctx=ctx)
    printed = capsys.readouterr().out
    counts = [len(layout) for layout in result["layouts"]]
    assert counts[0] <= 16 and counts[1] <= 8 and counts[0] != counts[1]
    model = result["model"]
    assert isinstance(model, glmip.nn.TimmViT) and "embed.proj.weight" in model.state_dict()
    assert len(result["losses"]) == 3 and np.isfinite(result["losses"]).all() and result["moved"] > 0
    assert result["logits"].shape == (2, 2) and torch.isfinite(result["logits"]).all()
    assert f"{counts[0]} tokens" in printed and "loss per step" in printed and "time:" in printed
    with torch.inference_mode():
        tokens, layout = result["batch"][1]
        alone = model(TokenBatch.from_parts([tokens], [layout]))
    assert torch.allclose(alone[0], result["logits"][1], atol=1e-4)
    dropped = example.main(["--budget", "16", "--depth", "1", "--steps", "1", "--patch-drop", "0.5",
                            "--grad-checkpointing"], ctx=ctx)
    assert np.isfinite(dropped["losses"]).all() and dropped["model"].vit.grad_checkpointing
