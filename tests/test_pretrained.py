"""Initial weights from timm, transformers, Google's .npz and vitkit checkpoints: parity, adaptation, CLI."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_MODEL, run_cli
from vitkit import UserError, create_model
from vitkit.models import VisionTransformer
from vitkit.models.layouts import to_jax
from vitkit.models.pretrained import load_pretrained, resample_patch_kernel, resample_pos_embed

timm = pytest.importorskip("timm")


def tiny(**kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    return VisionTransformer(**{**args, **kw}).eval()


@pytest.mark.parametrize("name, kwargs", [
    ("vit_tiny_patch16_224", dict(img_size=64, num_classes=7)),
    ("vit_small_patch16_224", dict(img_size=32, patch_size=8, depth=3, num_classes=4, global_pool="avg", fc_norm=True)),
    ("vit_base_patch32_224", dict(img_size=64, depth=2, num_classes=3)),
])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_weights_load_through_init_and_give_the_same_logits(tmp_path, name, kwargs, fmt):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)  # a training checkpoint wrapper
    else:
        save_file(reference.state_dict(), path)
    ours_kwargs = {k: v for k, v in kwargs.items() if k != "fc_norm"}
    ours = create_model(name, init=str(path), **ours_kwargs).eval()
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() < 1e-5
        assert (ours.forward_features(x) - reference.forward_features(x)).abs().max() < 1e-5


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("eps", [1e-12, 1e-6])
def test_transformers_vit_loads_with_the_same_logits_and_features(tmp_path, transformers, eps):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                 image_size=32, patch_size=4, num_labels=5, layer_norm_eps=eps,
                                 id2label={i: f"c{i}" for i in range(5)}, label2id={f"c{i}": i for i in range(5)})
    classifier = transformers.ViTForImageClassification(cfg).eval()
    classifier.save_pretrained(tmp_path / "cls")
    encoder = transformers.ViTModel(cfg).eval()  # with its pooler, which has no place in ours
    encoder.save_pretrained(tmp_path / "enc")
    x = torch.randn(2, 3, 32, 32)
    ours = tiny()
    result = load_pretrained(ours, str(tmp_path / "cls"))
    assert result.missing == [] and result.unexpected == []
    assert result.model_overrides == ({"norm_eps": eps} if eps != 1e-6 else {})
    features = tiny()
    result = load_pretrained(features, str(tmp_path / "enc"))
    assert result.missing == ["head.bias", "head.weight"] and result.unexpected == ["pooler.dense.bias",
                                                                                   "pooler.dense.weight"]
    with torch.no_grad():
        assert (ours(x) - classifier(pixel_values=x).logits).abs().max() < 1e-5
        assert (features.forward_features(x) - encoder(pixel_values=x).last_hidden_state).abs().max() < 1e-5


def test_npz_layout_round_trips_and_timm_reads_ours(tmp_path):
    torch.manual_seed(0)
    ours = tiny(embed_dim=192, num_heads=3, num_classes=7)
    np.savez(tmp_path / "vit.npz", **to_jax(ours.state_dict(), num_heads=3))
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, img_size=32, patch_size=4,
                                  depth=2).eval()
    reference.load_pretrained(str(tmp_path / "vit.npz"))  # timm's own reader of Google's layout
    back = tiny(embed_dim=192, num_heads=3, num_classes=7)
    load_pretrained(back, str(tmp_path / "vit.npz"))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (reference(x) - ours(x)).abs().max() < 1e-5
        assert torch.equal(back(x), ours(x))


def test_position_embedding_resampling_is_the_identity_or_matches_timm():
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 14 * 14, 32)
    assert resample_pos_embed(pos, (14, 14)) is pos
    for grid in ((20, 20), (7, 7), (24, 16)):
        got = resample_pos_embed(pos, grid)
        assert got.shape == (1, 1 + grid[0] * grid[1], 32) and torch.equal(got[:, :1], pos[:, :1])
        torch.testing.assert_close(got, resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=1))


def test_patch_kernel_resampling_keeps_the_patch_response():
    from timm.layers import resample_patch_embed

    w = torch.randn(8, 3, 16, 16)
    assert resample_patch_kernel(w, (16, 16)) is w
    small = resample_patch_kernel(w, (8, 8))
    torch.testing.assert_close(small, resample_patch_embed(w, [8, 8]), atol=1e-4, rtol=1e-4)
    # Upsampling keeps every patch's response exactly: <resize(x), w'> = <x, w> (FlexiViT's pseudo-inverse resize).
    w = torch.randn(8, 3, 4, 4)
    big = resample_patch_kernel(w, (8, 8))
    x = torch.randn(5, 3, 4, 4)
    up = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(torch.einsum("bchw,dchw->bd", up, big), torch.einsum("bchw,dchw->bd", x, w),
                               atol=1e-4, rtol=1e-4)


def test_adaptations_each_say_what_they_did(tmp_path):
    torch.manual_seed(0)
    source = tiny(num_classes=5)
    save_file(source.state_dict(), tmp_path / "rgb.safetensors")
    target = tiny(img_size=48, patch_size=8, in_chans=1, num_classes=3)
    result = load_pretrained(target, str(tmp_path / "rgb.safetensors"))
    text = " | ".join(result.notes)
    for words in ("head replaced: 5 classes", "3-channel kernels summed", "4x4 kernels resampled to 8x8",
                  "from a 8x8 to a 6x6 patch grid"):
        assert words in text, text
    assert result.missing == ["head.bias", "head.weight"]
    summed = source.patch_embed.proj.weight.sum(1, keepdim=True)
    torch.testing.assert_close(target.patch_embed.proj.weight, resample_patch_kernel(summed, (8, 8)))
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_missing_backbone_tensors_are_an_error_unless_not_strict(tmp_path):
    state = tiny().state_dict()
    del state["blocks.1.norm2.weight"]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(UserError, match="lacks 1 tensor.*blocks.1.norm2.weight.*--init-strict false"):
        load_pretrained(tiny(), str(tmp_path / "partial.safetensors"))
    result = load_pretrained(tiny(), str(tmp_path / "partial.safetensors"), strict=False)
    assert result.missing == ["blocks.1.norm2.weight"]
    with pytest.raises(UserError, match="do not fit this model.*choose the matching --model"):
        load_pretrained(tiny(embed_dim=32, num_heads=2), str(tmp_path / "partial.safetensors"))


def test_weights_of_another_family_name_it_and_the_model_to_use(tmp_path):
    """DeiT-III's LayerScale into a plain ViT would be dropped, and a plain ViT into DeiT-III would leave LayerScale
    random: both are one-line errors that name the family and the --model the weights fit."""
    torch.manual_seed(0)
    for source, target, family, fit in (("deit3_small_patch16_224", "vit_small_patch16_224", "deit3", "deit3_small"),
                                        ("vit_small_patch16_224", "deit3_small_patch16_224", "deit", "deit_small"),
                                        ("deit_small_distilled_patch16_224", "deit_small_patch16_224", "deit",
                                         "deit_small_distilled")):
        path = tmp_path / f"{source}.safetensors"
        save_file({k: v.contiguous() for k, v in timm.create_model(source).state_dict().items()}, path)
        with pytest.raises(UserError, match=rf"holds weights of the {family} family .*--model {fit}_patch16_224"):
            create_model(target, num_classes=3, init=str(path))


def test_an_unknown_timm_tag_lists_the_known_ones():
    from vitkit.models.pretrained import default_timm_weights, read_source

    with pytest.raises(UserError, match=r"no weights 'deit_tiny_patch16_224.in22k'.*are fb_in1k"):
        read_source("timm:deit_tiny_patch16_224.in22k")
    assert default_timm_weights("vit_base_patch16_siglip_224") == "vit_base_patch16_siglip_224.v2_webli"
    assert default_timm_weights("vit_micro_patch7_28") is None


def test_pickled_code_in_a_pth_file_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="never unpickles code"):
        load_pretrained(tiny(), str(tmp_path / "evil.pth"))


def test_offline_timm_name_is_a_one_line_error_that_says_how(monkeypatch, fake_mnist, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--out", tmp_path,
                "--init", "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", "--epochs", "1")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("vitkit: error: ") and "Traceback" not in r.stderr, r.stderr
    assert "reading fashion-mnist" not in r.stderr  # the weights are fetched before any data is decoded
    assert "huggingface.co/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in last
    assert "--init path/to/model.safetensors" in r.stderr


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_fine_tuning_a_vitkit_checkpoint_on_other_classes(tmp_path, fake_mnist, image_folder, stem):
    """Pretrain on one task, fine-tune on another with --init, --freeze backbone and layer decay, through the CLI."""
    pre = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "1",
                  "--out", tmp_path, "--name", "pre", "--no-progress", "--set", "output.report=false",
                  "--set", f"model.stem={stem}")
    assert pre.returncode == 0, pre.stderr
    source = tmp_path / "pre" / "best.safetensors"
    probe = run_cli("train", image_folder, *TINY_MODEL, "--epochs", "1",
                    "--init", source, "--freeze", "backbone", "--layer-decay", "0.7", "--out", tmp_path,
                    "--name", "probe", "--no-progress", "--set", "output.report=false", "--set", f"model.stem={stem}")
    assert probe.returncode == 0, probe.stderr
    for words in ("head replaced: the source was trained on other classes", "1-channel kernels spread over 3 channels",
                  "backbone frozen: only the head trains"):
        assert words in probe.stderr, probe.stderr
    from safetensors.torch import load_file

    from vitkit.engine.checkpoint import read_meta
    before, after = load_file(source), load_file(tmp_path / "probe" / "last.safetensors")
    first = "patch_embed.stem.0.weight" if stem == "conv" else "patch_embed.proj.weight"  # the kernel on the pixels
    frozen = [k for k in before if not k.startswith(("head.", first))]
    if stem == "conv":  # BatchNorm statistics are part of the frozen backbone
        assert "patch_embed.stem.1.running_mean" in frozen and "patch_embed.stem.4.running_var" in frozen
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # the backbone did not move
    torch.testing.assert_close(after[first], before[first].repeat(1, 3, 1, 1) / 3)
    meta = read_meta(tmp_path / "probe" / "best.safetensors")
    assert meta["init"]["source"] == str(source) and meta["mean"] == read_meta(source)["mean"] * 3
    assert meta["init"]["notes"][0].startswith("head replaced")
    assert meta["model_kwargs"]["stem"] == stem


def test_layer_decay_and_backbone_scale_give_each_layer_its_learning_rate():
    from vitkit.config import TrainConfig
    from vitkit.engine.optim import build_optimizer

    m = tiny(depth=3)
    for p in m.patch_embed.parameters():
        p.requires_grad = False  # frozen parameters are left out of the optimizer
    opt = build_optimizer(m, TrainConfig(lr=1.0, layer_decay=0.5, backbone_lr_scale=0.1))
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr[id(m.head.weight)] == 1.0 and lr[id(m.norm.weight)] == pytest.approx(0.1)
    assert lr[id(m.blocks[2].mlp.fc1.weight)] == pytest.approx(0.5 * 0.1)
    assert lr[id(m.blocks[0].attn.qkv.weight)] == pytest.approx(0.5 ** 3 * 0.1)
    assert lr[id(m.cls_token)] == pytest.approx(0.5 ** 4 * 0.1) and id(m.patch_embed.proj.weight) not in lr
    assert decay[id(m.blocks[0].attn.qkv.weight)] == 0.05 and decay[id(m.blocks[0].norm1.weight)] == 0.0
    plain = build_optimizer(tiny(), TrainConfig(lr=1.0))
    assert len(plain.param_groups) == 2 and all(g["lr"] == 1.0 for g in plain.param_groups)
    # the newer families' parts: the distillation token with the embeddings, its head as a head, attention pooling
    # with the final norm
    d = tiny(depth=3, dist_token=True)
    opt = build_optimizer(d, TrainConfig(lr=1.0, layer_decay=0.5, backbone_lr_scale=0.1))
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr[id(d.head_dist.weight)] == 1.0 and lr[id(d.dist_token)] == pytest.approx(0.5 ** 4 * 0.1)
    assert decay[id(d.dist_token)] == 0.0
    s = tiny(depth=3, class_token=False, global_pool="map")
    opt = build_optimizer(s, TrainConfig(lr=1.0, layer_decay=0.5, backbone_lr_scale=0.1))
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr[id(s.attn_pool.kv.weight)] == pytest.approx(0.1) and lr[id(s.head.weight)] == 1.0
    r = tiny(depth=3, qkv_bias="qv", rope="cat", abs_pos_embed=False)  # Eva's query and value biases: in their block
    opt = build_optimizer(r, TrainConfig(lr=1.0, layer_decay=0.5, backbone_lr_scale=0.1))
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr[id(r.blocks[0].attn.q_bias)] == pytest.approx(0.5 ** 3 * 0.1) and decay[id(r.blocks[0].attn.v_bias)] == 0


def test_adamw_is_torchs_fused_kernel_steps_as_the_loop_does_and_resumes_older_runs_state():
    from vitkit.config import TrainConfig
    from vitkit.engine.optim import build_optimizer, param_groups

    torch.manual_seed(0)
    fused_model, loop_model = tiny(), tiny()
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, TrainConfig(lr=1e-2, weight_decay=0.05))
    loop = torch.optim.AdamW(param_groups(loop_model, 0.05), lr=1e-2, foreach=False)  # runs saved before the change
    assert fused.defaults["fused"] is True
    for _ in range(5):  # the same gradients into both: Adam's steps differ only by rounding
        loop.zero_grad()
        loop_model(torch.randn(4, 3, 32, 32)).square().mean().backward()
        for p, q in zip(fused_model.parameters(), loop_model.parameters()):
            p.grad = q.grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    resumed = build_optimizer(loop_model, TrainConfig(lr=1e-2, weight_decay=0.05))
    resumed.load_state_dict(loop.state_dict())
    resumed.step()
    assert resumed.state_dict()["state"][0]["step"] == 6


def test_a_patchify_checkpoint_initializes_a_conv_stem_model_only_when_not_strict(tmp_path):
    torch.manual_seed(0)
    source = tiny()
    save_file(source.state_dict(), tmp_path / "patch.safetensors")
    with pytest.raises(UserError, match=r"lacks \d+ tensor.*patch_embed.*--init-strict false"):
        load_pretrained(tiny(stem="conv"), str(tmp_path / "patch.safetensors"))
    target = tiny(stem="conv")
    result = load_pretrained(target, str(tmp_path / "patch.safetensors"), strict=False)
    assert any("the source has a patchify stem, this model a conv stem" in n for n in result.notes)
    assert all(k.startswith("patch_embed.") for k in result.missing)
    assert torch.equal(target.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "deit3_small_patch16_224", "vit_small_patch14_dinov2",
                                  "deit_tiny_distilled_patch16_224", "vit_base_patch16_siglip_224"])
def test_newer_families_init_from_timm_weights_at_another_size(name, tmp_path):
    """Position embeddings without prefix rows (DeiT-III, registers) and with the class token's row (DINOv2) are
    resampled to the new grid, as are those with two prefix rows (distilled DeiT); the features head of DINOv2
    (none) leaves ours new, and SigLIP's attention pooling loads."""
    import timm
    from safetensors.torch import save_file

    from vitkit.models import create_model

    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, img_size=224, depth=2)
    source = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, source)
    ours = create_model(name, img_size=112, depth=2, num_classes=3, init=str(source))
    assert ours.pos_embed.shape[1] == (112 // ours.patch_embed.patch_size[0]) ** 2 + (
        0 if ours.no_embed_class else ours.num_prefix_tokens)
    torch.testing.assert_close(ours.blocks[1].mlp.fc2.weight, theirs.blocks[1].mlp.fc2.weight)
    if ours.blocks[1].ls2.__class__.__name__ == "LayerScale":
        torch.testing.assert_close(ours.blocks[1].ls2.gamma, theirs.blocks[1].ls2.gamma)
    for token in ("reg_token", "dist_token"):
        if getattr(ours, token) is not None:
            torch.testing.assert_close(getattr(ours, token), getattr(theirs, token))
    if ours.attn_pool is not None:
        torch.testing.assert_close(ours.attn_pool.latent, theirs.attn_pool.latent)
    if ours.reg_token is not None:
        torch.testing.assert_close(ours.reg_token, theirs.reg_token)


def _hf_family(kind: str):
    """A small random transformers model of a family, and how to read its features and pooled output."""
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**small, layerscale_value=0.5)), \
            "vit_small_patch14_dinov2", {}
    if kind == "dinov2-reg":
        return transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            **small, layerscale_value=0.5)), "vit_small_patch14_reg4_dinov2", {}
    if kind == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**small, intermediate_size=128)), \
            "vit_base_patch16_clip_quickgelu_224", {"patch_size": 14}
    if kind == "clip-full":  # a whole CLIPModel: its text tower and projections are left out
        config = transformers.CLIPConfig(vision_config=dict(**small, intermediate_size=128),
                                         text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=64))
        return transformers.CLIPModel(config), "vit_base_patch16_clip_quickgelu_224", {"patch_size": 14}
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**small, intermediate_size=128)), \
        "vit_base_patch16_siglip_224", {"patch_size": 14}


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-reg", "clip", "clip-full", "siglip"])
def test_transformers_families_load_with_the_same_features(tmp_path, kind):
    """transformers' Dinov2Model (with registers too), CLIPVisionModel (or a whole CLIPModel) and SiglipVisionModel
    folders load through --init into the registered family: the same tokens and pooled features; the activation
    and LayerNorm epsilon of the source's config come along."""
    torch.manual_seed(0)
    hf, name, extra = _hf_family(kind)
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = create_model(name, img_size=28, embed_dim=32, depth=2, num_heads=2, num_classes=0, init=str(tmp_path / "hf"),
                        **extra).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tower = hf.vision_model if kind == "clip-full" else hf
        theirs = tower(pixel_values=x)
        pooled = ours.forward_head(ours.forward_features(x), pre_logits=True)
        torch.testing.assert_close(pooled, theirs.pooler_output, rtol=0, atol=1e-5)
        if kind != "clip" and kind != "clip-full":  # CLIP's tokens are not post-normed there, its pooled vector is
            torch.testing.assert_close(ours.forward_features(x), theirs.last_hidden_state, rtol=0, atol=1e-5)
    assert ours.act_layer == {"dinov2": "gelu", "dinov2-reg": "gelu", "siglip": "gelu_tanh"}.get(kind, "quick_gelu")
    if kind == "dinov2":  # a state dict saved from memory has transformers' newer names (q_proj, o_proj)
        torch.save(hf.state_dict(), tmp_path / "memory.pth")
        again = create_model(name, img_size=28, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             init=str(tmp_path / "memory.pth")).eval()
        with torch.no_grad():
            torch.testing.assert_close(again.forward_features(x), ours.forward_features(x), rtol=0, atol=0)


def test_transformers_dinov3_loads_with_the_same_features_at_any_size(tmp_path):
    """transformers' DINOv3ViTModel: rotary positions, registers, LayerScale, query and value biases (the keys have
    none): the same tokens at the trained size and another; with the class token pooled, its pooler output."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=256, image_size=64, patch_size=16, num_register_tokens=4,
                                          layerscale_value=0.7)
    hf = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():  # peaked attention, so that the rotation matters; biases that are not zero
        for key, p in hf.named_parameters():
            if "q_proj.weight" in key or "k_proj.weight" in key:
                p.normal_(0, 0.5)
            elif "q_proj.bias" in key or "v_proj.bias" in key:
                p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "hf")
    ours = create_model("vit_small_patch16_dinov3", img_size=64, embed_dim=64, depth=2, num_heads=2, qkv_bias=True,
                        num_classes=0, global_pool="token", init=str(tmp_path / "hf")).eval()
    for size in ((64, 64), (96, 160)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            theirs = hf(pixel_values=x)
            torch.testing.assert_close(ours.forward_features(x), theirs.last_hidden_state, rtol=0, atol=1e-5)
            torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                       theirs.pooler_output, rtol=0, atol=1e-5)


def test_transformers_distilled_deit_loads_with_the_same_logits(tmp_path):
    """transformers' DeiTForImageClassificationWithTeacher: the distillation token and both heads, averaged at
    inference by both."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                     image_size=32, patch_size=16, num_labels=3)
    hf = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = create_model("deit_tiny_distilled_patch16_224", img_size=32, embed_dim=32, depth=2, num_heads=2,
                        num_classes=3, init=str(tmp_path / "hf")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=0, atol=1e-5)
    assert ours.norm_eps == 1e-12
