"""LodPatchEmbed, from_timm and forward_timm against real timm models (random weights, nothing downloaded).

GL-free: tokens are cut from the image with torch (what a uniform level-0 layout samples), so
timm is imported before any glmip.Context exists (creating one first and then importing timm
crashes in some environments). Skipped where timm cannot be imported.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm", exc_type=ImportError)
from timm.data.naflex_transforms import patchify_image  # noqa: E402

import glmip  # noqa: E402
from glmip.nn import LodPatchEmbed, TimmNaFlex, TimmViT, forward_timm, from_timm  # noqa: E402
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


# -- from_timm: the model owns its embedding ----------------------------------------------------------
def two_views(patch: int = 16, seed: int = 6) -> TokenBatch:
    """A 112x112 image at level 0 (49 tokens) and an 80x80 one (25): the sizes timm's patch dropout crashed on."""
    g = torch.Generator().manual_seed(seed)
    big, small = torch.rand(3, 112, 112, generator=g), torch.rand(3, 80, 80, generator=g)
    return TokenBatch.from_parts([pixel_patches(big, patch), pixel_patches(small, patch)],
                                 [uniform_layout(112, 112, patch), uniform_layout(80, 80, patch)])


def test_from_timm_embeds_as_timm_at_the_start_and_trains_the_embedding():
    """The pretrained (here: seeded) patch and position weights are the starting point: on a level-0 image
    the model equals timm's forward; one optimiser step then moves every embedding parameter."""
    reference, model = create("vit_small_patch16_224"), from_timm(create("vit_small_patch16_224"))
    assert isinstance(model, TimmViT) and isinstance(model.embed, LodPatchEmbed)
    pixels = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7))
    batch = TokenBatch.from_parts([pixel_patches(pixels, 16)], [uniform_layout(64, 64, 16)])
    with torch.no_grad():
        expected = reference((pixels[None] - model.embed.mean) / model.embed.std)
        assert (model(batch) - expected).abs().max().item() <= TIMM_ATOL
    names = set(model.state_dict())
    assert {"embed.proj.weight", "embed.proj.bias", "embed.pos_grid", "embed.prefix",
            "embed.level_embed.weight"} <= names
    assert not {"vit.pos_embed", "vit.cls_token", "vit.patch_embed.proj.weight"} & names, "saved twice"
    model.train()
    before = {name: p.detach().clone() for name, p in model.embed.named_parameters()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(two_views()), torch.tensor([1, 2])).backward()
    unreached = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unreached == [], f"no gradient: {unreached}"
    optimiser.step()
    assert all(not torch.equal(p, before[name]) for name, p in model.embed.named_parameters())


def test_forward_timm_without_an_embedding_says_how_to_get_one():
    vit = create("vit_tiny_patch16_224")
    batch = two_views()
    with pytest.raises(TypeError, match=r"glmip.nn.from_timm\(vit\)"):
        forward_timm(vit, batch)
    with torch.no_grad():
        frozen = forward_timm(vit, batch, freeze=True)
        owned = from_timm(vit)(batch)
    assert (frozen - owned).abs().max().item() <= POOL_ATOL
    with pytest.raises(TypeError, match="no patch_embed"):
        from_timm(vit)  # taken over: its embedding now lives in the first model


def test_grad_checkpointing_recomputes_blocks_and_agrees_with_the_plain_model():
    plain, checkpointed = (from_timm(create("vit_tiny_patch16_224", depth=3)).train() for _ in range(2))
    checkpointed.set_grad_checkpointing(True)
    calls = {"plain": 0, "checkpointed": 0}
    for key, model in (("plain", plain), ("checkpointed", checkpointed)):
        for block in model.vit.blocks:
            # a pre-hook: recomputation stops once the tensors it needs exist, before a block's forward hook
            block.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    batch, labels = two_views(), torch.tensor([3, 4])
    outputs = []
    for model in (plain, checkpointed):
        logits = model(batch)
        F.cross_entropy(logits, labels).backward()
        outputs.append(logits.detach())
    assert calls == {"plain": 3, "checkpointed": 6}, "each checkpointed block runs again in the backward pass"
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name


def test_state_dict_round_trips_into_a_fresh_model():
    model = from_timm(create("vit_base_patch16_reg4_gap_256")).train()
    F.cross_entropy(model(two_views()), torch.tensor([0, 1])).backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = from_timm(timm.create_model("vit_base_patch16_reg4_gap_256", pretrained=False, num_classes=10,
                                        **MODELS["vit_base_patch16_reg4_gap_256"]))
    batch = two_views(seed=8)
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(batch), model.eval()(batch))
        fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        assert torch.equal(fresh(batch), model(batch))


def test_patch_dropout_keeps_only_real_tokens():
    """patch_drop_rate=0.5 on images of 49 and 25 tokens: each keeps int(n / 2) of its own tokens (24, 12),
    never a padding row, the class token always; in eval nothing is dropped."""
    model = from_timm(create("vit_tiny_patch16_224", patch_drop_rate=0.5, depth=1)).train()
    batch = two_views()
    seen = {}
    model.vit.blocks[0].register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(x=args[0].detach(), mask=kwargs["attn_mask"]), with_kwargs=True)
    with torch.no_grad():
        embedded, _ = model.embed(batch)
        torch.manual_seed(9)
        logits = model(batch)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    valid = seen["mask"][:, 0, 0] == 0
    assert seen["x"].shape == (2, 1 + 24, 192) and valid.sum(1).tolist() == [1 + 24, 1 + 12]
    for image, length in ((0, 49), (1, 25)):
        kept = seen["x"][image][valid[image]]
        assert torch.equal(kept[0], embedded[image, 0]), "the class token is always kept"
        real = embedded[image, 1:1 + length]
        assert (kept[1:, None] == real[None]).all(-1).any(1).all(), f"image {image} kept a row not among its tokens"
        assert len({tuple(row.tolist()) for row in kept[1:]}) == len(kept) - 1, "a token kept twice"
    model.eval()
    with torch.no_grad():
        model(batch)
    assert seen["x"].shape == (2, 1 + 49, 192) and (seen["mask"][:, 0, 0] == 0).sum(1).tolist() == [50, 26]


def test_from_timm_naflexvit_normalises_with_the_models_mean_and_std():
    torch.manual_seed(0)
    vit = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, depth=1, num_classes=10).eval()
    mean, std = tuple(vit.pretrained_cfg["mean"]), tuple(vit.pretrained_cfg["std"])
    model = from_timm(vit)
    assert isinstance(model, TimmNaFlex) and (model.mean, model.std) == (mean, std)
    assert mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0)
    batch = two_views()
    with torch.no_grad():
        out = model(batch)
        assert torch.equal(out, vit(batch.naflex(mean=mean, std=std)))
        assert not torch.allclose(out, vit(batch.naflex(mean=0, std=1)))
    explicit = from_timm(vit, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert (explicit.mean, explicit.std) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    with pytest.raises(TypeError, match="embeds patches itself; levels"):
        from_timm(vit, levels=4)
