"""int8 ONNX and OpenVINO through the real CLI: a trained model exported, calibrated on its own training split,
checked on its test split, then run by `predict` and `serve` with each runtime."""
import json
import sys

import pytest

from tests.conftest import TINY_MODEL, run_cli
from tests.serving import Server, image_bytes
from vitkit.data import load_data
from vitkit.engine.predict import load_classifier

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def trained(fake_mnist, tmp_path_factory):
    """A tiny model trained on the 4-class stand-in for Fashion-MNIST (600 train, 200 test images)."""
    runs = tmp_path_factory.mktemp("runtimes")
    result = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "8", "--lr", "3e-3",
                     "--batch-size", "32", "--out", runs, "--name", "tiny", "--no-progress",
                     "--set", "output.report=false")
    assert result.returncode == 0, result.stderr
    return runs / "tiny" / "best.safetensors"


@pytest.fixture(scope="module")
def exports(trained, fake_mnist):
    result = run_cli("export", trained, "--quantize", "int8", "--format", "openvino", "--data-root", fake_mnist,
                     "--calibration-images", "128", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_int8_export_is_calibrated_on_training_images_and_checked_on_the_test_split(trained, exports):
    int8 = exports["int8"]
    assert int8["path"] == str(trained.with_name("best.int8.onnx")) and int8["calibration_images"] == 128
    assert int8["split"] == "test" and int8["check_images"] == 200
    assert int8["top1_int8"] >= int8["top1_fp32"] - 0.01 and int8["top1_agreement"] >= 0.97, int8
    assert int8["mb_int8"] < int8["mb_fp32"] / 2.5  # int8 weights (the graph's other parts stay small)
    side = json.loads(trained.with_name("best.int8.onnx.json").read_text())
    assert side["quantization"]["check"]["top1_int8"] == int8["top1_int8"]
    assert side["classes"] == json.loads(trained.with_name("best.onnx.json").read_text())["classes"]
    import onnx

    ops = {node.op_type for node in onnx.load(int8["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_every_runtime_gives_the_same_classes_on_the_test_split(trained, exports, fake_mnist):
    test = load_data("fashion-mnist", data_root=str(fake_mnist), img_size=16, channels=1, splits=("test",))
    images = test.splits["test"].images
    torch_top = load_classifier(trained, precision="fp32").logits(images).argmax(1).numpy()
    for path, runtime, least in ((trained.with_suffix(".onnx"), "onnx", 1.0), (exports["int8"]["path"], "onnx", 0.97),
                                 (exports["openvino"]["path"], "openvino", 0.97)):
        clf = load_classifier(path, runtime, precision="fp32")
        assert clf.runtime == runtime and clf.classes == load_classifier(trained).classes
        agreement = (clf.logits(images).argmax(1).numpy() == torch_top).mean()
        assert agreement >= least, (path, agreement)
    assert exports["openvino"]["top1_agreement"] >= 0.95


def test_predict_and_serve_run_the_openvino_and_int8_models(trained, exports, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(image_bytes(3, (28, 28), "L"))
    for path in (exports["openvino"]["path"], exports["int8"]["path"]):
        result = run_cli("predict", path, image, "--json")
        assert result.returncode == 0 and json.loads(result.stdout)[0]["top"], result.stderr
    wrong = run_cli("predict", trained, image, "--runtime", "openvino")
    assert wrong.returncode == 2 and "needs an OpenVINO .xml" in wrong.stderr
    srv = Server([sys.executable, "-m", "vitkit", "serve", exports["openvino"]["path"], "--runtime", "openvino"],
                 tmp_path / "server.log")
    try:
        assert srv.get("/model")[1]["runtime"] == "openvino"
        code, _, body = srv.post_files([("x.png", image.read_bytes())])
        assert code == 200 and len(body["predictions"][0]["top"]) == 5  # the default top-k
    finally:
        srv.stop()


def test_an_int8_model_that_loses_too_much_is_not_kept(trained, fake_mnist, tmp_path):
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(trained.read_bytes())
    for name in ("split.csv", "config.yaml"):
        if (trained.parent / name).exists():
            (tmp_path / name).write_bytes((trained.parent / name).read_bytes())
    result = run_cli("export", copy, "--quantize", "int8", "--data-root", fake_mnist, "--max-drop", "-100")
    assert result.returncode == 1 and "nothing was kept" in result.stderr, result.stderr
    assert copy.with_suffix(".onnx").exists() and not list(tmp_path.glob("*.int8.*"))
    assert not list(tmp_path.glob(".quantize*"))


def test_dynamic_int8_needs_no_calibration_and_predict_runs_it(trained, fake_mnist, tmp_path):
    """`--quantize int8-dynamic`: int8 weights and integer matrix products on activations quantized per batch (no
    QDQ nodes, no calibration images, the conv stem's convolutions in float), checked like static int8."""
    import onnx

    out = tmp_path / "dyn.onnx"
    result = run_cli("export", trained, "--quantize", "int8-dynamic", "--data-root", fake_mnist, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    int8 = json.loads(result.stdout)["int8"]
    assert int8["path"] == str(tmp_path / "dyn.int8.onnx") and int8["calibration_images"] == 0
    assert int8["top1_int8"] >= int8["top1_fp32"] - 0.01 and int8["top1_agreement"] >= 0.97, int8
    side = json.loads((tmp_path / "dyn.int8.onnx.json").read_text())["quantization"]
    assert side["method"] == "dynamic" and side["calibration_images"] == 0
    ops = {node.op_type for node in onnx.load(int8["path"]).graph.node}
    assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops, ops
    assert "QuantizeLinear" not in ops and "Conv" in ops and "ConvInteger" not in ops
    image = tmp_path / "x.png"
    image.write_bytes(image_bytes(3, (28, 28), "L"))
    predicted = run_cli("predict", int8["path"], image, "--json")
    assert predicted.returncode == 0 and json.loads(predicted.stdout)[0]["top"], predicted.stderr
