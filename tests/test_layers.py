"""Per-layer units of the model file."""
import pytest
import torch

from vitkit.errors import UserError
from vitkit.models.vit import Attention, Block, DropPath, Mlp, PatchEmbed, VisionTransformer, drop_path


def test_patch_embed_is_a_linear_map_of_each_patch():
    torch.manual_seed(0)
    pe = PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=5)
    x = torch.randn(2, 3, 8, 8)
    tokens = pe(x)
    assert tokens.shape == (2, 4, 5)
    # token 1 is the top-right patch (row-major order): weight . flattened patch + bias
    patch = x[:, :, 0:4, 4:8].reshape(2, -1)
    expected = patch @ pe.proj.weight.reshape(5, -1).T + pe.proj.bias
    torch.testing.assert_close(tokens[:, 1], expected, rtol=1e-5, atol=1e-5)


def test_patch_embed_rejects_indivisible_and_wrong_sizes():
    with pytest.raises(UserError, match="not divisible by patch size"):
        PatchEmbed(img_size=30, patch_size=4, in_chans=3, embed_dim=8)
    pe = PatchEmbed(img_size=32, patch_size=4, in_chans=3, embed_dim=8)
    with pytest.raises(UserError, match="expects 32x32"):
        pe(torch.randn(1, 3, 28, 28))


def test_attention_fused_and_explicit_paths_agree_and_maps_are_distributions():
    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=4).eval()
    x = torch.randn(3, 10, 32)
    attn.impl = "sdpa"
    fused = attn(x)
    attn.impl = "math"
    explicit, maps = attn(x, return_attn=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert maps.shape == (3, 4, 10, 10)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 4, 10))


def test_attention_matches_a_hand_computation():
    torch.manual_seed(1)
    attn = Attention(dim=8, num_heads=2, impl="math").eval()
    x = torch.randn(1, 3, 8)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(8, dim=-1)
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(-1, -2) / 2.0, dim=-1)
        heads.append(a @ v[..., s])
    expected = torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_attention_rejects_heads_that_do_not_divide_width():
    with pytest.raises(UserError, match="not divisible by num_heads"):
        Attention(dim=30, num_heads=4)


def test_mlp_shape_and_gelu():
    mlp = Mlp(6, 12)
    x = torch.randn(2, 3, 6)
    expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.ones(20000, 1, 1)
    y = drop_path(x, 0.25, training=True)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.75))
    assert abs(float(y.mean()) - 1.0) < 0.03
    layer = DropPath(0.5).eval()
    assert torch.equal(layer(x), x)


def test_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = Block(16, 2).eval()
    x = torch.randn(2, 5, 16)
    h = x + block.attn(block.norm1(x))
    expected = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_forward_is_features_pool_head(pool):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=2,
                              num_heads=2, global_pool=pool).eval()
    x = torch.randn(2, 1, 16, 16)
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 16)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 16)
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_class_token_shortcut_gives_the_full_forward_logits_and_gradients(impl):
    """With token pooling, `forward` skips the last block's rows that the head never reads: same logits, same
    gradients for every parameter, in training mode too (dropout 0, and drop path is per image)."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=3,
                              num_heads=2, attn_impl=impl)
    x = torch.randn(4, 1, 16, 16)
    full = model.forward_head(model.forward_features(x))
    grads = torch.autograd.grad(full.square().sum(), list(model.parameters()))
    short = model(x)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)
    for g, h in zip(grads, torch.autograd.grad(short.square().sum(), list(model.parameters()))):
        torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-6)
    block = model.blocks[-1].eval()
    tokens = torch.randn(2, 17, 16)
    torch.testing.assert_close(block.forward_prefix(tokens, 1), block(tokens)[:, :1], rtol=1e-5, atol=1e-6)
