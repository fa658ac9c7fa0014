"""`vitkit export --format timm|transformers` through the real CLI, loaded back by those libraries: same logits."""
import json

import numpy as np
import pytest
import torch

import vitkit
from tests.conftest import run_cli
from tests.serving import CLASSES, make_checkpoint
from vitkit.engine.checkpoint import load_model, model_meta, save_model
from vitkit.export.onnx import sample_images
from vitkit.models import model_kwargs
from vitkit.models.layouts import from_transformers, to_transformers

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny serving model, and a ViT-S width (384, 6 heads) with mean pooling and no qkv bias, 2 blocks."""
    root = tmp_path_factory.mktemp("interop")
    tiny = make_checkpoint(root / "tiny.safetensors")
    name = "vit_small_patch16_224"
    kwargs = model_kwargs(name, img_size=32, patch_size=8, depth=2, num_classes=4, global_pool="avg",
                          qkv_bias=False)
    torch.manual_seed(1)
    model = vitkit.create_model(name, **kwargs)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    small = root / "small.safetensors"
    save_model(small, model, model_meta(name, kwargs, list("abcd"), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    return tiny, small


def _ours(checkpoint, n=8):
    model, meta = load_model(checkpoint)
    images = sample_images(n, meta["in_chans"], meta["img_size"], seed=5).float() / 255
    x = (images - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.inference_mode():
        return x, model(x).numpy()


def _export(checkpoint, fmt, out):
    result = run_cli("export", checkpoint, "--format", fmt, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] < 1e-5 and report["top1_agreement"] == 1.0 and report["path"] == str(out)
    return out


def test_timm_loads_the_folder_with_both_its_loaders_and_gives_our_logits(checkpoints, tmp_path):
    for checkpoint in checkpoints:
        folder = _export(checkpoint, "timm", tmp_path / f"{checkpoint.stem}-timm")
        config = json.loads((folder / "config.json").read_text())
        x, ours = _ours(checkpoint)
        net = timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                                pretrained_cfg_overlay=dict(config["pretrained_cfg"],
                                                            file=str(folder / "model.safetensors"))).eval()
        with torch.inference_mode():
            np.testing.assert_allclose(net(x).numpy(), ours, atol=1e-5, rtol=0)
        if "local-dir" in getattr(timm.models._factory, "_MODEL_SOURCES", ()):
            by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            with torch.inference_mode():
                np.testing.assert_allclose(by_folder(x).numpy(), ours, atol=1e-5, rtol=0)
            assert by_folder.pretrained_cfg["label_names"] == load_model(checkpoint)[1]["classes"]
            data = timm.data.resolve_data_config({}, model=by_folder)
            assert data["input_size"][1] == config["model_args"]["img_size"] and data["crop_pct"] == 1.0


def test_transformers_loads_the_folder_with_its_labels_and_gives_our_logits(checkpoints, tmp_path):
    tiny, small = checkpoints
    folder = _export(tiny, "transformers", tmp_path / "tiny-hf")
    x, ours = _ours(tiny)
    net = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        np.testing.assert_allclose(net(pixel_values=x).logits.numpy(), ours, atol=1e-5, rtol=0)
    assert net.config.id2label == dict(enumerate(CLASSES))
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert processor.size == {"height": 16, "width": 16}
    refused = run_cli("export", small, "--format", "transformers", "--out", tmp_path / "small-hf")
    assert refused.returncode == 2 and "mean of its tokens" in refused.stderr
    assert not (tmp_path / "small-hf").exists()


def test_an_occupied_folder_a_conv_stem_and_a_disagreement_keep_nothing(checkpoints, tmp_path):
    tiny, _ = checkpoints
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    result = run_cli("export", tiny, "--format", "timm", "--out", occupied)
    assert result.returncode == 2 and "already exists" in result.stderr and (occupied / "notes.txt").exists()
    strict = run_cli("export", tiny, "--format", "timm", "--out", tmp_path / "strict", "--atol", "-1")
    assert strict.returncode == 1 and "nothing was kept" in strict.stderr
    assert not list(tmp_path.glob("*strict*"))
    name = "vit_micro_patch7_28"
    kwargs = model_kwargs(name, img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3,
                          stem="conv")
    conv = tmp_path / "conv.safetensors"
    save_model(conv, vitkit.create_model(name, **kwargs), model_meta(name, kwargs, CLASSES, [0.5] * 3, [0.25] * 3))
    result = run_cli("export", conv, "--format", "timm")
    assert result.returncode == 2 and "conv stem" in result.stderr
    name = "vit_small_patch16_rope_224"  # timm's Eva has rotary positions, its VisionTransformer does not
    kwargs = model_kwargs(name, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    rope = tmp_path / "rope.safetensors"
    save_model(rope, vitkit.create_model(name, **kwargs), model_meta(name, kwargs, CLASSES, [0.5] * 3, [0.25] * 3))
    result = run_cli("export", rope, "--format", "timm")
    assert result.returncode == 2 and "no rope, abs_pos_embed" in result.stderr and "--format onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_transformers_names_are_the_inverse_of_the_names_we_read():
    model = vitkit.create_model("vit_micro_patch7_28", num_classes=3)
    state = model.state_dict()
    there = to_transformers(state)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in there and "classifier.weight" in there
    back = from_transformers(there)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_registers_layerscale_and_mean_pooling_export_to_timm_and_onnx_and_train(tmp_path, fake_mnist):
    name = "vit_tiny_patch16_224"
    kwargs = model_kwargs(name, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3,
                          init_values=1e-5, reg_tokens=4, no_embed_class=True, class_token=False, global_pool="avg")
    torch.manual_seed(2)
    model = vitkit.create_model(name, **kwargs)
    for block in model.blocks:
        torch.nn.init.uniform_(block.ls1.gamma, 0.5, 1.5)
        torch.nn.init.uniform_(block.ls2.gamma, 0.5, 1.5)
    checkpoint = tmp_path / "dinov2ish.safetensors"
    save_model(checkpoint, model, model_meta(name, kwargs, CLASSES, [0.5] * 3, [0.25] * 3))
    folder = _export(checkpoint, "timm", tmp_path / "dinov2ish-timm")
    assert json.loads((folder / "config.json").read_text())["model_args"]["reg_tokens"] == 4
    refused = run_cli("export", checkpoint, "--format", "transformers")
    assert refused.returncode == 2 and "mean of its tokens" in refused.stderr
    onnx = run_cli("export", checkpoint, "--json")
    assert onnx.returncode == 0 and json.loads(onnx.stdout)["max_abs_diff"] < 1e-4, onnx.stderr
    trained = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, "--model", "vit_micro_patch7_28",
                      "--img-size", "16", "--set", "model.patch_size=4", "--set", "model.embed_dim=32",
                      "--set", "model.depth=2", "--set", "model.num_heads=2", "--set", "model.reg_tokens=2",
                      "--set", "model.init_values=1e-4", "--set", "model.pre_norm=true", "--set",
                      "model.act_layer=quick_gelu", "--epochs", "1", "--out", tmp_path / "runs", "--name", "modern",
                      "--no-progress")
    assert trained.returncode == 0, trained.stderr
    meta_kwargs = load_model(tmp_path / "runs" / "modern" / "best.safetensors")[1]["model_kwargs"]
    assert meta_kwargs["reg_tokens"] == 2 and meta_kwargs["act_layer"] == "quick_gelu"
    assert (tmp_path / "runs" / "modern" / "report.html").is_file()  # attention maps of a model with registers
