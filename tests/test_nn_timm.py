"""LodPatchEmbed and forward_timm against real timm models (random weights, nothing downloaded).

GL-free: tokens are cut from the image with torch (what a uniform level-0 layout samples), so
timm is imported before any glmip.Context exists (creating one first and then importing timm
crashes in some environments). Skipped where timm cannot be imported.
"""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm", exc_type=ImportError)
from timm.data.naflex_transforms import patchify_image  # noqa: E402

import glmip  # noqa: E402
from glmip.nn import LodPatchEmbed, forward_timm  # noqa: E402
from glmip.token_batch import TokenBatch  # noqa: E402

# forward_timm vs timm's own forward on the same image (a uniform level-0 layout): float32 sums
# in another order through conv vs linear projection and the blocks; measured max 6.0e-7 on logits
# (7 models), 2.1e-6 on the dynamic-size embedding at a non-native grid.
TIMM_ATOL = 1e-4
# An image in a padded batch vs alone (issue 11): the masked attention and pooling see the same rows.
POOL_ATOL = 1e-5

MODELS = {  # name: create_model overrides that keep it small (depth 1, a small native image)
    "vit_tiny_patch16_224": {"depth": 2, "img_size": 64},
    "vit_small_patch16_224": {"depth": 1, "img_size": 64},
    "deit_tiny_patch16_224": {"depth": 1, "img_size": 64},
    "vit_base_patch16_reg4_gap_256": {"depth": 1, "img_size": 64},
    "vit_small_patch14_reg4_dinov2": {"depth": 1, "img_size": 56},
    "vit_base_patch16_clip_224": {"depth": 1, "img_size": 64},
    "vit_base_patch16_siglip_224": {"depth": 1, "img_size": 64},
}


def uniform_layout(width: int, height: int, patch: int, level: int = 0) -> glmip.TokenLayout:
    return glmip.TokenLayout.grid((width, height), patch, level)


def pixel_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    channels = pixels.shape[0]
    return pixels.unfold(1, patch, patch).unfold(2, patch, patch).permute(1, 2, 0, 3, 4).reshape(
        -1, channels, patch, patch)


def create(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **{**MODELS.get(name, {}), **overrides}).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_timm_equals_timm_and_pools_padding_out(name):
    """Level-0 tokens of the native image -> forward_timm equals vit(image); and the image's logits and
    pooled features in a batch padded by a shorter, coarser image equal its run alone."""
    vit = create(name)
    embed = LodPatchEmbed.from_timm(vit)
    patch, side = embed.patch, MODELS[name]["img_size"]
    pixels = torch.rand(3, side, side, generator=torch.Generator().manual_seed(1))
    tokens = pixel_patches(pixels, patch)
    layout = uniform_layout(side, side, patch)
    coarse = uniform_layout(side, side, patch, level=1)
    coarse_tokens = torch.rand(len(coarse), 3, patch, patch, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = vit((pixels[None] - embed.mean) / embed.std)
        alone = forward_timm(vit, TokenBatch.from_parts([tokens], [layout]), embed)
        batch = TokenBatch.from_parts([coarse_tokens, tokens], [coarse, layout])
        together = forward_timm(vit, batch, embed)
        coarse_alone = forward_timm(vit, TokenBatch.from_parts([coarse_tokens], [coarse]), embed)
        pooled = forward_timm(vit, batch, embed, pre_logits=True)
        pooled_alone = forward_timm(vit, TokenBatch.from_parts([coarse_tokens], [coarse]), embed, pre_logits=True)
    assert (alone - expected).abs().max().item() <= TIMM_ATOL, f"{name}: forward_timm vs timm"
    assert (together[1] - alone[0]).abs().max().item() <= POOL_ATOL
    assert (together[0] - coarse_alone[0]).abs().max().item() <= POOL_ATOL, f"{name}: padded image leaks"
    assert (pooled[0] - pooled_alone[0]).abs().max().item() <= POOL_ATOL


def test_unmasked_timm_pooling_leaks_padding():
    """Why forward_timm masks the pool: timm's own forward_head over a padded batch moves the short image."""
    vit = create("vit_base_patch16_siglip_224")
    embed = LodPatchEmbed.from_timm(vit)
    coarse, fine = uniform_layout(64, 64, 16, level=1), uniform_layout(64, 64, 16)
    g = torch.Generator().manual_seed(3)
    batch = TokenBatch.from_parts([torch.rand(len(coarse), 3, 16, 16, generator=g),
                                   torch.rand(len(fine), 3, 16, 16, generator=g)], [coarse, fine])
    with torch.no_grad():
        features = forward_timm(vit, batch, embed, features=True)
        leaked = vit.forward_head(features)
        masked = forward_timm(vit, batch, embed)
    assert (leaked[0] - masked[0]).abs().max().item() > 1e-3


def test_dynamic_size_model_at_a_non_native_grid_matches_timm():
    """dynamic_img_size=True, native 14x14 grid, a 96x160 image (6x10 grid): timm resamples pos_embed
    bicubically; LodPatchEmbed does the same (within 1e-4), and so do the logits."""
    vit = create("vit_small_patch16_224", dynamic_img_size=True, img_size=224)
    embed = LodPatchEmbed.from_timm(vit)
    assert embed.dynamic_grid
    pixels = torch.rand(3, 96, 160, generator=torch.Generator().manual_seed(4))
    batch = TokenBatch.from_parts([pixel_patches(pixels, 16)], [uniform_layout(160, 96, 16)])
    normalised = (pixels[None] - embed.mean) / embed.std
    with torch.no_grad():
        expected = vit._pos_embed(vit.patch_embed(normalised))
        embedded, _ = embed(batch)
        logits, timm_logits = forward_timm(vit, batch, embed), vit(normalised)
    assert expected.shape == embedded.shape == (1, 1 + 6 * 10, 384)
    assert (embedded - expected).abs().max().item() <= TIMM_ATOL
    assert (logits - timm_logits).abs().max().item() <= TIMM_ATOL


def test_naflex_inputs_match_timm_patchify_and_run_naflexvit():
    pixels = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(5))
    batch = TokenBatch.from_parts([pixel_patches(pixels, 16), pixel_patches(pixels[:, :32, :32], 16)],
                                  [uniform_layout(64, 48, 16), uniform_layout(32, 32, 16)])
    inputs = batch.naflex(mean=0, std=1)
    patches, coord, valid = patchify_image(pixels, (16, 16))
    assert torch.equal(inputs["patches"][0], patches) and torch.equal(inputs["patch_coord"][0], coord)
    assert inputs["patch_valid"][0].all() and inputs["patch_valid"][1].sum() == 4 and valid.all()
    torch.manual_seed(0)
    naflex = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, depth=1, num_classes=10).eval()
    with torch.no_grad():
        out = naflex(inputs)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,why", [
    ("eva02_tiny_patch14_224", "Eva uses rotary position embeddings"),
    ("vit_base_patch16_rope_reg1_gap_256", "Eva uses rotary position embeddings"),
    ("vit_relpos_small_patch16_224", "VisionTransformerRelPos uses relative position biases"),
    ("vit_tiny_r_s16_p8_224", "VisionTransformer is a hybrid ViT"),
])
def test_rope_relpos_and_hybrid_models_are_refused(name, why):
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, depth=1, num_classes=10)
    with pytest.raises(ValueError, match=why):
        LodPatchEmbed.from_timm(vit)
