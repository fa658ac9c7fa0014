"""`--model timm:NAME`: timm's model trained by vitkit's trainer, then evaluated, reported, predicted, exported
to ONNX with the parity check and used as a distillation teacher; what only our ViT has refuses in one line."""
import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    from tests.conftest import write_folder

    root = tmp_path_factory.mktemp("timm")
    data = write_folder(root / "data", per_class=24)
    r = run_cli("train", data, "--model", "timm:test_resnet", "--img-size", "32", "--epochs", "3", "--lr", "3e-3",
                "--out", root / "runs", "--name", "r", "--no-progress", "--set", "model.drop_path_rate=0.05")
    assert r.returncode == 0, r.stderr
    return data, root / "runs" / "r", r


def test_a_timm_model_trains_evaluates_reports_predicts_and_exports(timm_run, tmp_path):
    from safetensors.torch import load_file

    data, run, r = timm_run
    assert "model: timm:test_resnet" in r.stderr and "GFLOPs/image" in r.stderr
    best = run / "best.safetensors"
    from vitkit.engine.checkpoint import read_meta

    meta = read_meta(best)
    assert meta["model"] == "timm:test_resnet" and meta["model_kwargs"]["img_size"] == 32
    import timm  # the checkpoint's tensors are timm's own: timm loads them as they are

    net = timm.create_model("test_resnet", num_classes=3, in_chans=3)
    net.load_state_dict(load_file(best))
    html = (run / "report.html").read_text()
    assert "<h2>confusion matrix</h2>" in html and "<h2>attention maps</h2>" not in html
    report = json.loads(run_cli("evaluate", best, data, "--json").stdout)
    assert report["num_images"] > 0 and 0 <= report["top1"] <= 1
    r = run_cli("predict", best, data / "bag", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 24
    r = run_cli("predict", best, data / "bag", "--explain", tmp_path / "x")
    assert r.returncode == 2 and "timm:test_resnet is timm's model and has none" in r.stderr
    r = run_cli("export", best, "--out", tmp_path / "m.onnx", "--json")
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert exported["max_abs_diff"] < 1e-4 and exported["top1_agreement"] == 1.0
    r = run_cli("export", best, "--format", "timm")
    assert r.returncode == 2 and "timm.create_model('test_resnet', num_classes=3, in_chans=3)" in r.stderr


def test_a_timm_checkpoint_teaches_a_vit(timm_run, tmp_path):
    data, run, _ = timm_run
    r = run_cli("train", data, "--model", "vit_micro_patch7_28", "--img-size", "28", "--epochs", "1", "--teacher",
                run / "best.safetensors", "--out", tmp_path, "--name", "s", "--no-progress", "--set",
                "output.report=false")
    assert r.returncode == 0, r.stderr
    assert "teacher" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "model.patch_size=4"], "model.patch_size is for vitkit's ViT, not timm:test_resnet: drop it"),
    (["--init", "timm:resnet18.a1_in1k"], "model.init is for vitkit's ViT"),
    (["--freeze", "backbone", "--layer-decay", "0.7"], "train.freeze=backbone, train.layer_decay are for vitkit's ViT"),
])
def test_vit_only_options_are_refused_in_one_line(timm_run, args, message):
    data = timm_run[0]
    r = run_cli("train", data, "--model", "timm:test_resnet", *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_timm_names_are_checked_and_info_says_the_model_is_not_ours():
    r = run_cli("train", "x", "--model", "timm:resnt18")
    assert r.returncode == 2 and "timm has no model 'resnt18' (did you mean timm:resnet18" in r.stderr
    r = run_cli("train", "x", "--model", "timm:resnet18.a1_in1k")
    assert r.returncode == 2 and "use --model timm:resnet18" in r.stderr
    r = run_cli("info", "timm:test_resnet", "--set", "img_size=32", "--set", "num_classes=3")
    assert r.returncode == 0 and "timm's model, not a vitkit ViT" in r.stdout and "parameters: " in r.stdout


def test_an_unnamed_run_of_a_timm_model_gets_a_folder_name_without_a_colon(timm_run, tmp_path):
    data = timm_run[0]
    r = run_cli("train", data, "--model", "timm:test_resnet", "--img-size", "16", "--epochs", "1", "--out", tmp_path,
                "--no-progress", "--set", "output.report=false")
    assert r.returncode == 0, r.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run.name.startswith("data-timm-test_resnet-") and (run / "best.safetensors").is_file()
