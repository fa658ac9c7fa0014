"""Every registered model, and interchange with timm's VisionTransformer."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from vitkit.engine.checkpoint import load_model, model_meta, save_model
from vitkit.errors import UserError
from vitkit.models import count_flops, create_model, get_spec, list_models, model_kwargs, model_size, num_params
from vitkit.models.layouts import to_eva_layout, to_timm_layout


# ViT-L is ViT-B's code at another size (its parameter count is checked against timm below); building it takes
# 25 s of the suite's time for nothing new. The newer families are timm's models (test_registered_families_...).
@pytest.mark.parametrize("name", [n for n in list_models() if "large" not in n
                                  and get_spec(n).family in ("vit", "small")])
def test_every_registered_model_trains_a_step_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    # 224 px models run on a 2x2 patch grid: the same layers and weights but the position embedding, in seconds.
    small = {"img_size": 2 * get_spec(name).kwargs["patch_size"]} if get_spec(name).kwargs["img_size"] > 64 else {}
    model = create_model(name, num_classes=7, drop_path_rate=0.1, **small)
    kwargs = model_kwargs(name, num_classes=7, drop_path_rate=0.1, **small)
    size, chans = kwargs["img_size"], kwargs["in_chans"]
    x = torch.randn(2, chans, size, size)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    path = tmp_path / "m.safetensors"
    save_model(path, model, model_meta(name, kwargs, [str(i) for i in range(7)], [0.5] * chans, [0.5] * chans))
    loaded, meta = load_model(path)
    model.eval()
    assert meta["classes"] == [str(i) for i in range(7)] and meta["img_size"] == size
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch32_224",
                                  "vit_base_patch16_224", "vit_base_patch32_224", "vit_large_patch16_224",
                                  "vit_large_patch32_224"])
def test_parameter_counts_match_timm(name):
    ours = num_params(create_model(name))
    theirs = sum(p.numel() for p in timm.create_model(name, pretrained=False, num_classes=1000).parameters())
    assert ours == theirs


def test_tiny_patch32_matches_timm_constructor():
    kw = get_spec("vit_tiny_patch32_224").kwargs
    theirs = TimmViT(img_size=224, patch_size=32, embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"])
    assert num_params(create_model("vit_tiny_patch32_224")) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("pool,in_chans", [("token", 3), ("avg", 3), ("token", 1)])
def test_state_dicts_interchange_with_timm_with_identical_outputs(pool, in_chans):
    cfg = dict(img_size=32, patch_size=8, in_chans=in_chans, num_classes=5, embed_dim=64, depth=3, num_heads=4,
               global_pool=pool)
    torch.manual_seed(0)
    theirs = TimmViT(**cfg).eval()
    ours = create_model("vit_tiny_patch16_224", **cfg).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, in_chans, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), rtol=0, atol=1e-5)
    # and back: our random init loads into timm
    torch.manual_seed(1)
    ours2 = create_model("vit_tiny_patch16_224", **cfg).eval()
    theirs.load_state_dict(ours2.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours2(x), rtol=0, atol=1e-5)


def test_vit_tiny_224_outputs_match_timm():
    torch.manual_seed(0)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    ours = create_model("vit_tiny_patch16_224").eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_flops_of_vit_base_match_the_published_figure_and_what_forward_computes():
    from torch.utils.flop_counter import FlopCounterMode

    # ViT-B/16 at 224: about 17.6 G multiply-adds, i.e. ~35 GFLOPs with every token through every block
    model = create_model("vit_base_patch16_224", attn_impl="math").eval()
    assert abs(count_flops(model, every_token=True) / 1e9 - 35.1) < 0.3
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    # the last block runs only the class token's row, saving all of its work but the keys and values (~6%)
    assert counter.get_total_flops() == count_flops(model) < 0.95 * count_flops(model, every_token=True)
    avg = create_model("vit_base_patch16_224", global_pool="avg")
    assert count_flops(avg) == count_flops(avg, every_token=True)


def test_model_size_counts_without_weights_what_the_built_model_has():
    for name, overrides in (("vit_small_patch16_224", {"img_size": 384, "num_classes": 7}),
                            ("vit_micro_patch7_28", {"stem": "conv", "stem_depth": 2, "global_pool": "avg"})):
        model = create_model(name, **overrides)
        tokens = model.patch_embed.num_patches + model.num_prefix_tokens
        assert model_size(name, **overrides) == (num_params(model), count_flops(model), tokens)
    with pytest.raises(UserError, match="not divisible by num_heads"):
        model_size("vit_small_patch16_224", num_heads=5)


def test_overrides_and_errors():
    model = create_model("vit_small_patch16_224", img_size=64, num_classes=3)
    assert model.patch_embed.num_patches == 16 and model.head.out_features == 3
    with pytest.raises(UserError, match="did you mean 'vit_small_patch16_224'"):
        create_model("vit_smal_patch16_224")
    with pytest.raises(UserError, match="unknown model option 'img_sizee'"):
        create_model("vit_small_patch16_224", img_sizee=32)
    with pytest.raises(UserError, match="not divisible by patch size"):
        create_model("vit_small_patch16_224", img_size=100)
    with pytest.raises(UserError, match="not divisible by num_heads"):
        create_model("vit_small_patch16_224", embed_dim=100)


def _assert_micro_conv_stem_round_trips(tmp_path, **overrides):
    """A conv-stem micro model, after a training step has moved its BatchNorm statistics, saves and loads exactly."""
    kwargs = model_kwargs("vit_micro_patch7_28", stem="conv", **overrides)
    model = create_model("vit_micro_patch7_28", stem="conv", **overrides)
    model(torch.randn(8, 1, 28, 28)).sum().backward()  # training mode: BatchNorm statistics move
    model.eval()
    path = tmp_path / "conv.safetensors"
    save_model(path, model, model_meta("vit_micro_patch7_28", kwargs, [str(i) for i in range(10)], [0.5], [0.5]))
    loaded, _ = load_model(path)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_conv_stem_keeps_the_token_grid_counts_its_flops_and_round_trips(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("vit_micro_patch7_28", "vit_mini_patch4_32", "vit_small_patch16_224"):
        patch, conv = create_model(name), create_model(name, stem="conv", attn_impl="math").eval()
        assert conv.patch_embed.grid_size == patch.patch_embed.grid_size
    with FlopCounterMode(display=False) as counter:  # the last one: ViT-S/16, four stride-2 convs
        conv(torch.randn(1, 3, 224, 224))
    assert counter.get_total_flops() == count_flops(conv)
    _assert_micro_conv_stem_round_trips(tmp_path)
    with pytest.raises(UserError, match="stem must be one of patch, conv, not 'convs'"):
        create_model("vit_micro_patch7_28", stem="convs")
    with pytest.raises(UserError, match="conv stem cannot give 3x3 patches on 27x27"):
        create_model("vit_micro_patch7_28", img_size=27, patch_size=3, stem="conv")


def test_deeper_conv_stem_adds_stride_1_convs_and_keeps_the_single_stem_names(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    single = create_model("vit_micro_patch7_28", stem="conv")
    deep = create_model("vit_micro_patch7_28", stem="conv", stem_depth=2, attn_impl="math")
    assert deep.patch_embed.grid_size == single.patch_embed.grid_size == (4, 4)
    convs = [m for m in deep.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 2, 1]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    # stem_depth 1 is the stem saved before the option existed: same names, so old checkpoints still load
    assert [k for k in single.state_dict() if k.startswith("patch_embed.stem.") and k.endswith("weight")] == [
        f"patch_embed.stem.{i}.weight" for i in (0, 1, 3, 4, 6, 7)]
    deep.eval()
    with FlopCounterMode(display=False) as counter:
        deep(torch.randn(1, 1, 28, 28))
    assert counter.get_total_flops() == count_flops(deep) > count_flops(single)
    _assert_micro_conv_stem_round_trips(tmp_path, stem_depth=2, attn_impl="math")
    with pytest.raises(UserError, match="stem_depth must be a positive integer"):
        create_model("vit_micro_patch7_28", stem="conv", stem_depth=0)
    with pytest.raises(UserError, match="stem_depth 2 needs stem 'conv'"):
        create_model("vit_micro_patch7_28", stem_depth=2)


MODERN_OPTIONS = {  # the options of the newer ViT families, alone and as those families combine them
    "layerscale": dict(init_values=1e-2),
    "registers": dict(reg_tokens=4),
    "no-class-token": dict(class_token=False, global_pool="avg"),
    "no-embed-class": dict(no_embed_class=True),
    "clip": dict(pre_norm=True, act_layer="quick_gelu"),
    "deit3": dict(init_values=1e-2, no_embed_class=True),
    "dinov2-reg": dict(init_values=1e-2, reg_tokens=4, no_embed_class=True),
    "siglip-gap": dict(class_token=False, global_pool="avg", no_embed_class=True),
    "registers-gap": dict(reg_tokens=4, global_pool="avg", class_token=False, no_embed_class=True),
    "siglip-gap-norm-first": dict(class_token=False, global_pool="avg", fc_norm=False),
    "siglip-map": dict(class_token=False, global_pool="map"),
    "map-registers": dict(class_token=False, global_pool="map", reg_tokens=2, no_embed_class=True),
    "swiglu-packed": dict(mlp_layer="swiglu_packed", act_layer="silu", init_values=1e-2),
    "swiglu": dict(mlp_layer="swiglu", act_layer="silu"),
    "deit-distilled": dict(dist_token=True),
    "dynamic-size": dict(dynamic_img_size=True, reg_tokens=1),
}


@pytest.mark.parametrize("family", list(MODERN_OPTIONS))
def test_modern_options_interchange_with_timm_and_work_everywhere(family, tmp_path):
    from vitkit.report import explain

    from vitkit.engine.bench import timm_twin

    cfg = dict(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=64, depth=3, num_heads=4,
               **MODERN_OPTIONS[family])
    torch.manual_seed(0)
    theirs = timm_twin(cfg).eval()
    for module in theirs.modules():  # LayerScale starts at 1e-2; a random scale makes its mistakes visible
        if hasattr(module, "gamma"):
            torch.nn.init.uniform_(module.gamma, 0.5, 1.5)
    ours = create_model("vit_tiny_patch16_224", **cfg).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict()) and num_params(ours) == num_params(theirs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   theirs.forward_head(theirs.forward_features(x), pre_logits=True), rtol=0, atol=1e-5)
    torch.manual_seed(1)
    back = create_model("vit_tiny_patch16_224", **cfg).eval()
    theirs.load_state_dict(back.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), back(x), rtol=0, atol=1e-5)
    logits, rollout, heads = explain(ours, x)  # attention maps for reports and --explain
    assert rollout.shape == (4, 4, 4) and heads.shape == (4, 4, 4, 4) and torch.isfinite(rollout).all()
    assert float(rollout.amax()) > 0
    path = tmp_path / "m.safetensors"
    save_model(path, ours, model_meta("vit_tiny_patch16_224", model_kwargs("vit_tiny_patch16_224", **cfg),
                                      list("abcde"), [0.5] * 3, [0.25] * 3))
    loaded, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=0, atol=0)


FAMILIES = ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224",
            "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "vit_giant_patch14_dinov2",
            "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_siglip_224",
            "vit_base_patch16_siglip_gap_224", "vit_medium_patch16_reg4_gap_256"]


@pytest.mark.parametrize("name", FAMILIES)
def test_registered_families_are_timms_models(name):
    """The same tensors, names and shapes as timm's model of that name, and (at a small size, 2 blocks) the same
    logits and features with timm's weights, and timm's with ours."""
    with torch.device("meta"):
        theirs = timm.create_model(name, pretrained=False)
        ours = create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    small = dict(img_size=112, depth=2, num_classes=7)  # a multiple of both patch sizes, 14 and 16
    if "giant" in name:  # the giant's SwiGLU at a tenth of its width: the same code in a second
        small.update(embed_dim=192, num_heads=3)
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, **small).eval()
    for module in theirs.modules():
        if hasattr(module, "gamma"):
            torch.nn.init.uniform_(module.gamma, 0.5, 1.5)
    ours = create_model(name, **small).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), rtol=0, atol=1e-5)
        theirs.load_state_dict(create_model(name, **small).state_dict())
        ours.load_state_dict(theirs.state_dict())
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_every_registered_family_has_timms_tensors_and_shapes():
    """Every registered name that timm also has: the same tensor names and shapes (built without weights)."""
    checked = 0
    for name in list_models():
        if get_spec(name).family == "small" or name not in timm.list_models(name):
            continue
        with torch.device("meta"):
            theirs = timm.create_model(name, pretrained=False, num_classes=get_spec(name).kwargs["num_classes"])
            ours = create_model(name)
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in to_timm_layout(theirs.state_dict()).items()}, name
        assert num_params(ours) == num_params(theirs), name
        checked += 1
    assert checked >= 35  # all but vit_tiny_patch32_224, which timm does not register


def test_distillation_token_heads_train_apart_and_average_at_inference():
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=4)
    x = torch.randn(3, 3, 32, 32)
    tokens = model.forward_features(x)
    with torch.no_grad():
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), (cls + dist) / 2, rtol=0, atol=1e-6)
    model.train()
    model.distilled_training = True
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    torch.testing.assert_close(out[0], cls, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], dist, rtol=0, atol=1e-6)
    model.distilled_training = False
    assert model(x).shape == (3, 4)
    assert count_flops(model) > count_flops(create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                                         num_classes=4))
    with pytest.raises(UserError, match="dist_token needs the class token"):
        create_model("deit_tiny_distilled_patch16_224", global_pool="avg")


def test_dynamic_image_size_interpolates_positions_like_timm():
    from vitkit.engine.bench import timm_twin

    cfg = dict(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=64, depth=2, num_heads=4,
               dynamic_img_size=True, reg_tokens=4, no_embed_class=True, init_values=1e-2)
    torch.manual_seed(0)
    theirs = timm_twin(cfg).eval()
    ours = create_model("vit_tiny_patch16_224", **cfg).eval()
    ours.load_state_dict(theirs.state_dict())
    for size in ((48, 48), (24, 40), (32, 32)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="30x32, which 8x8 patches do not divide"):
        ours(torch.randn(1, 3, 30, 32))
    fixed = create_model("vit_tiny_patch16_224", **{**cfg, "dynamic_img_size": False})
    with pytest.raises(UserError, match="the model expects 32x32"):
        fixed(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("options", [dict(dist_token=True), dict(mlp_layer="swiglu_packed", act_layer="silu"),
                                     dict(mlp_layer="swiglu", act_layer="silu")])
def test_flops_of_the_newer_options_are_what_forward_computes(options):
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("vit_tiny_patch16_224", img_size=64, attn_impl="math", **options).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert counter.get_total_flops() == count_flops(model)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    """Recomputing each block in the backward pass (drop path's draws replayed) changes no number."""
    from vitkit.models import vit

    calls, forward = [], vit.Block.forward
    monkeypatch.setattr(vit.Block, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    for pool in ("token", "avg"):
        model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=4,
                             drop_path_rate=0.3, global_pool=pool, class_token=pool == "token").train()
        x = torch.randn(4, 3, 32, 32)
        grads = []
        for checkpointing in (False, True):
            model.set_grad_checkpointing(checkpointing)
            model.zero_grad()
            calls.clear()
            torch.manual_seed(1)
            model(x).logsumexp(1).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            full = 3 if pool == "avg" else 2  # with the class token the last block runs its first row alone
            assert len(calls) == full * (2 if checkpointing else 1)  # recomputed in the backward pass
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6)
    with torch.no_grad():  # inference is untouched
        assert model(x).shape == (4, 4)


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3", "vit_base_patch16_dinov3", "vit_small_plus_patch16_dinov3",
                                  "vit_small_patch16_rope_224", "vit_small_patch16_rope_ape_224",
                                  "vit_medium_patch16_rope_reg1_gap_256", "eva02_tiny_patch14_224",
                                  "eva02_small_patch14_336", "eva02_base_patch14_224"])
def test_rotary_positions_match_timms_eva_both_ways_at_any_size(name, tmp_path):
    """timm's Eva with DINOv3's rotary positions, and with the axial ones by patch index (RoPE-ViT, timm's register
    models, query and value biases only): the same features and logits at the trained size and others, both ways.
    The attention weights and biases are drawn large so that attention is peaked and the rotation matters (it
    changes the features by far more than the tolerance)."""
    from vitkit.report import explain

    small = dict(depth=2, num_classes=5, dynamic_img_size=True)
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, **small).eval()
    with torch.no_grad():
        for key, p in theirs.named_parameters():
            if "qkv" in key or key.endswith(("q_bias", "v_bias")) or "_proj." in key:
                p.normal_(0, 0.3)
            elif "gamma" in key:
                p.uniform_(0.5, 1.5)
    ours = create_model(name, **small).eval()
    ours.load_state_dict(to_timm_layout(theirs.state_dict()))
    assert num_params(ours) == sum(p.numel() for p in theirs.parameters())
    patch = ours.patch_embed.patch_size[0]
    for size in (ours.patch_embed.img_size, (6 * patch, 10 * patch)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
            features = ours.forward_features(x)
            torch.testing.assert_close(features, theirs.forward_features(x), rtol=0, atol=1e-5)
            rope, ours.rope = ours.rope, None
            assert float((ours.forward_features(x) - features).abs().max()) > 1e-3  # the rotation is visible
            ours.rope = rope
    back = create_model(name, **small).eval()
    theirs.load_state_dict(to_eva_layout(back.state_dict()))
    x = torch.randn(2, 3, 4 * patch, 4 * patch)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), back(x), rtol=0, atol=1e-5)
    _, rollout, _ = explain(ours, x)
    assert rollout.shape == (2, 4, 4) and torch.isfinite(rollout).all()
    path = tmp_path / "m.safetensors"
    save_model(path, ours, model_meta(name, model_kwargs(name, **small), list("abcde"), [0.5] * 3, [0.25] * 3))
    loaded, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=0, atol=0)


def test_rotary_options_that_cannot_build_are_one_line_errors():
    from vitkit.engine.bench import timm_twin

    for options, message in ((dict(rope="alibi"), "rope must be 'dinov3', 'cat' or null"),
                             (dict(rope="cat", rope_grid_indexing="yx"), "rope_grid_indexing must be 'ij' or 'xy'"),
                             (dict(qkv_bias="k"), "qkv_bias must be true, false or 'qv'"),
                             (dict(rope="cat", embed_dim=96, num_heads=16), "head size divisible by 4, not 6"),
                             (dict(scale_mlp=True), r"scale_mlp \(a LayerNorm inside the MLP, EVA-02\) needs mlp_layer")):
        with pytest.raises(UserError, match=message):
            create_model("vit_tiny_patch16_224", **options)
    with pytest.raises(UserError, match="no rotary positions"):
        timm_twin(model_kwargs("vit_small_patch16_rope_224"))
