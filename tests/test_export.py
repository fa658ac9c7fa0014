"""ONNX export through the real CLI: files, sidecar, dynamic batch, the parity check, and predict --runtime onnx."""
import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.serving import CLASSES, image_bytes
from vitkit.export.onnx import sample_images

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """Images in several formats, modes and sizes: the set every runtime must agree on."""
    root = tmp_path_factory.mktemp("golden")
    files = {"wide.png": image_bytes(1, (40, 30)), "gray.jpg": image_bytes(2, (64, 64), "L", "JPEG", quality=90),
             "alpha.png": image_bytes(3, (20, 50), "RGBA"), "palette.gif": image_bytes(4, (33, 33), "P", "GIF"),
             "photo.webp": image_bytes(5, (90, 60), fmt="WEBP"), "small.bmp": image_bytes(6, (12, 12), fmt="BMP")}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_export_writes_a_checked_model_and_its_sidecar(exported):
    checkpoint, result = exported
    onnx_path = checkpoint.with_suffix(".onnx")
    assert result["path"] == str(onnx_path) and onnx_path.is_file()
    assert result["max_abs_diff"] < 1e-4 and result["top1_agreement"] == 1.0 and result["samples"] == 32
    side = json.loads((checkpoint.parent / "model.onnx.json").read_text())
    assert side["classes"] == CLASSES and side["img_size"] == 16 and side["in_chans"] == 3
    assert side["input"]["dtype"] == "uint8" and side["preprocess"] == "resize-shorter-side-center-crop"


def test_exported_model_takes_any_batch_size_and_matches_pytorch(exported):
    from vitkit.engine.checkpoint import load_model
    from vitkit.export.onnx import ImageModel

    checkpoint, _ = exported
    session = ort.InferenceSession(str(checkpoint.with_suffix(".onnx")))
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    model, meta = load_model(checkpoint)
    wrapper = ImageModel(model, meta["mean"], meta["std"]).eval()
    for n in (1, 3, 17):
        images = sample_images(n + 1, 3, 16, seed=n)[:n]
        got = session.run(None, {"image": images.numpy()})[0]
        with torch.inference_mode():
            want = wrapper(images).numpy()
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_an_export_that_disagrees_is_not_kept(exported, tmp_path):
    checkpoint, _ = exported
    out = tmp_path / "strict.onnx"
    r = run_cli("export", checkpoint, "--out", out, "--atol", "0")  # float reordering always differs a little
    assert r.returncode == 1
    assert "disagrees with PyTorch" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "strict.onnx.json").exists()


def test_predict_gives_the_same_answers_with_pytorch_and_onnx(exported, golden):
    checkpoint, _ = exported
    torch_run = run_cli("predict", checkpoint, golden, "--format", "json", "--precision", "fp32", "--top-k", "3")
    onnx_run = run_cli("predict", checkpoint.with_suffix(".onnx"), golden, "--format", "json", "--top-k", "3")
    assert torch_run.returncode == 0 and onnx_run.returncode == 0, onnx_run.stderr
    a, b = json.loads(torch_run.stdout), json.loads(onnx_run.stdout)
    assert [x["file"] for x in a] == [x["file"] for x in b] and len(a) == 6
    for x, y in zip(a, b):
        assert [t["class"] for t in x["top"]] == [t["class"] for t in y["top"]]
        np.testing.assert_allclose([t["probability"] for t in x["top"]], [t["probability"] for t in y["top"]],
                                   atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["predict", "{ckpt}", "{img}", "--runtime", "onnx"], "needs an exported .onnx file"),
    (["predict", "{onnx}", "{img}", "--explain", "{tmp}"], "--explain needs the PyTorch checkpoint"),
    (["predict", "{tmp}/none.onnx", "{img}"], "not found"),
    (["export", "{tmp}/none.safetensors"], "not found"),
])
def test_runtime_mistakes_are_one_line_errors(exported, golden, tmp_path, args, message):
    checkpoint, _ = exported
    names = {"ckpt": checkpoint, "onnx": checkpoint.with_suffix(".onnx"), "img": golden / "wide.png", "tmp": tmp_path}
    r = run_cli(*[a.format(**names) for a in args])
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("options", [dict(class_token=False, global_pool="map", reg_tokens=2),
                                     dict(dist_token=True), dict(mlp_layer="swiglu_packed", act_layer="silu",
                                                                 init_values=0.1, dynamic_img_size=True),
                                     dict(abs_pos_embed=False, rope="dinov3", reg_tokens=4, qkv_bias=False,
                                          global_pool="avg", fc_norm=False),
                                     dict(abs_pos_embed=False, rope="cat", rope_temperature=10000.0,
                                          rope_ref_grid=(16, 16), qkv_bias="qv", class_token=False, reg_tokens=1,
                                          global_pool="avg")],
                         ids=["siglip-map", "deit-distilled", "dinov2-giant-like", "dinov3-like", "rope-reg-gap-like"])
def test_the_newer_families_export_to_onnx_with_the_parity_check(tmp_path, options):
    from vitkit.engine.checkpoint import model_meta, save_model
    from vitkit.export.onnx import export_onnx
    from vitkit.models import create_model, model_kwargs

    kwargs = model_kwargs("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                          num_classes=3, **options)
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", **kwargs)
    path = tmp_path / "m.safetensors"
    save_model(path, model, model_meta("vit_tiny_patch16_224", kwargs, ["a", "b", "c"], [0.5] * 3, [0.25] * 3))
    result = export_onnx(path, samples=8)
    assert result.max_abs_diff < 1e-4 and result.top1_agreement == 1.0


def test_attention_is_one_node_on_the_tokens_and_an_older_opset_writes_it_out(exported, tmp_path):
    """Opset 23 (the default): each block's attention is one Attention node fed by a Split of the fused qkv
    projection, (batch, tokens, heads x dim), with no reshaping into heads around it; the last block, which computes
    the class token's row alone, keeps its 4D node. `--opset 18` writes MatMul/Softmax; both give the same logits."""
    import onnx

    checkpoint, result = exported
    model = onnx.load(result["path"])
    assert {o.domain: o.version for o in model.opset_import}[""] == 23
    nodes = model.graph.node
    producers = {out: n for n in nodes for out in n.output}
    attention = [n for n in nodes if n.op_type == "Attention"]
    heads = [{a.name: a.i for a in n.attribute}.get("q_num_heads") for n in attention]
    assert len(attention) == 2 and heads == [2, None]  # depth 2, 2 heads
    assert [producers[i].op_type for i in attention[0].input] == ["Split"] * 3
    into_heads = [n for n in nodes if n.op_type == "Transpose" and list(n.attribute[0].ints) == [2, 0, 3, 1, 4]]
    assert len(into_heads) == 1  # the last block's
    old = tmp_path / "opset18.onnx"
    r = run_cli("export", checkpoint, "--opset", "18", "--out", old, "--json")
    assert r.returncode == 0, r.stderr
    assert not any(n.op_type == "Attention" for n in onnx.load(old).graph.node)
    images = sample_images(9, 3, 16, seed=4).numpy()
    new, older = (ort.InferenceSession(str(p)).run(None, {"image": images})[0] for p in (result["path"], old))
    np.testing.assert_allclose(new, older, atol=1e-5)
