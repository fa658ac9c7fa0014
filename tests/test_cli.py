"""The real `vitkit` command in a subprocess: train, evaluate, predict on an image folder, and user errors."""
import csv
import io
import json

import pytest

from .conftest import TINY_MODEL, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run on an image folder, shared by the tests below."""
    from .conftest import write_folder

    tmp = tmp_path_factory.mktemp("cli")
    folder = write_folder(tmp / "photos", per_class=20)
    (folder / "coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_cli("train", folder, *TINY_MODEL, "--epochs", "4", "--batch-size", "16", "--lr", "3e-3",
                     "--set", "data.test_fraction=0.2", "--out", tmp / "runs", "--name", "r", "--no-progress")
    assert result.returncode == 0, result.stderr
    return tmp, folder, tmp / "runs" / "r", result


def test_train_writes_a_run_and_reports_the_bad_file(trained):
    _, _, run, result = trained
    assert "best model:" in result.stdout and str(run) in result.stdout
    assert "skipped 1 unreadable file" in result.stderr and "coat/broken.png" in result.stderr
    assert "coat/broken.png" in (run / "bad_files.csv").read_text()
    assert (run / "best.safetensors").exists() and (run / "split.csv").exists()


def test_evaluate_needs_only_the_checkpoint_and_the_data(trained):
    _, folder, run, _ = trained
    result = run_cli("evaluate", run / "best.safetensors", folder)
    assert result.returncode == 0, result.stderr
    assert "test split, 12 images" in result.stdout  # the held-out test split from the manifest
    assert "confusion matrix" in result.stdout and "macro avg" in result.stdout
    report = json.loads((run / "best-eval-test.json").read_text())
    assert report["num_images"] == 12 and len(report["per_class"]) == 3
    assert sum(map(sum, report["confusion_matrix"])) == 12
    as_json = run_cli("evaluate", run / "best.safetensors", folder, "--split", "val", "--format", "json")
    assert json.loads(as_json.stdout)["split"] == "val"


def test_predict_files_and_folders_as_table_json_csv(trained):
    _, folder, run, _ = trained
    table = run_cli("predict", run / "best.safetensors", folder / "bag" / "img_000.jpg", "--top-k", "2")
    assert table.returncode == 0 and "img_000.jpg" in table.stdout and "%" in table.stdout
    as_json = json.loads(run_cli("predict", run / "best.safetensors", folder / "ankle", "--format", "json").stdout)
    assert len(as_json) == 20 and abs(sum(t["probability"] for t in as_json[0]["top"]) - 1) < 1e-3
    rows = list(csv.DictReader(io.StringIO(run_cli("predict", run / "best.safetensors", folder / "coat",
                                                   "--format", "csv", "--top-k", "1").stdout)))
    bad = [r for r in rows if r["error"]]
    assert len(rows) == 21 and len(bad) == 1 and bad[0]["file"].endswith("broken.png")


def test_predict_reports_an_unreadable_file_without_crashing(trained, tmp_path):
    _, folder, run, _ = trained
    (tmp_path / "notes.txt").write_text("not an image")
    result = run_cli("predict", run / "best.safetensors", tmp_path / "notes.txt", folder / "bag" / "img_001.png")
    assert result.returncode == 0 and "unreadable" in result.stdout and "Traceback" not in result.stderr


def test_predict_compiled_with_frozen_weights_gives_the_eager_answers(trained):
    _, folder, run, _ = trained
    args = ("predict", run / "best.safetensors", folder / "coat", "--format", "json", "--top-k", "3",
            "--batch-size", "32")  # 20 readable images, padded to 32 for the compiled model
    eager, compiled = run_cli(*args), run_cli(*args, "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert "compiling the model for inference" in compiled.stderr
    for a, b in zip(json.loads(eager.stdout), json.loads(compiled.stdout), strict=True):
        assert a["file"] == b["file"] and ("top" in a) == ("top" in b)
        for x, y in zip(a.get("top", []), b.get("top", [])):
            assert y["probability"] == pytest.approx(x["probability"], abs=0.03)
    onnx = run_cli("predict", run / "best.onnx", folder / "coat", "--compile")
    assert onnx.returncode == 2 and "--compile is for PyTorch checkpoints" in onnx.stderr


def test_resume_of_a_finished_run_continues_with_more_epochs(trained):
    _, _, run, _ = trained
    result = run_cli("train", "--resume", run, "--epochs", "5", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and "epoch 5/5" in result.stderr
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 6


@pytest.mark.parametrize("args,message", [
    (["train", "fashion-mnist", "--model", "vit_tiny_patch16"], "unknown model 'vit_tiny_patch16': did you mean"),
    (["train", "fashion-mnist", "--set", "train.lrr=0.1"], "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["train", "fashion-mnist", "--set", "train.optimizer=adam"], "train.optimizer must be one of adamw, sgd"),
    (["train", "no/such/folder"], "data folder no/such/folder does not exist"),
    (["train", "no/such/folder", "--freeze", "backbone", "--set", "data.decode_scale=1.5"],  # before the data
     "data.decode_scale does not apply"),
    (["train", "fashion-mnist", "--img-size", "30", "--data-root", "{data}"], "not divisible by patch size"),
    (["train", "--resume", "no/such/run"], "is not a vitkit run directory"),
    (["train", "fashion-mnist", "--config", "missing.yaml"], "config file missing.yaml not found"),
    (["train"], "no DATA given"),
    (["evaluate", "missing.safetensors", "fashion-mnist"], "checkpoint missing.safetensors not found"),
    (["predict", "{notckpt}", "x.png"], "is not a vitkit model file"),
    (["info", "vit_small_patch16_224", "--set", "embed_dim=100"], "not divisible by num_heads"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path, fake_mnist):
    notckpt = tmp_path / "weights.safetensors"
    notckpt.write_bytes(b"garbage")
    args = [a.format(data=fake_mnist, notckpt=notckpt) for a in args]
    result = run_cli(*args, "--out", tmp_path) if args[0] == "train" else run_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vitkit: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_models_and_info_list_sizes():
    models = run_cli("models")
    assert models.returncode == 0
    assert "vit_base_patch16_224" in models.stdout and "86.57M" in models.stdout
    info = run_cli("info", "vit_small_patch16_224", "--set", "img_size=384")
    assert "tokens: 577" in info.stdout and "parameters:" in info.stdout
    dinov2 = run_cli("models", "--family", "dinov2")
    assert dinov2.returncode == 0 and "vit_small_patch14_reg4_dinov2" in dinov2.stdout
    assert "deit" not in dinov2.stdout and "vit_base_patch16_224 " not in dinov2.stdout
    assert "timm:vit_small_patch14_dinov2.lvd142m" in dinov2.stdout  # timm's default weights, for --init
    small = run_cli("models", "--family", "small")
    assert "vit_micro_patch7_28" in small.stdout and "vit_small_patch16_224" not in small.stdout


def test_module_entry_point_and_help_config():
    result = run_cli("train", "--help-config")
    assert result.returncode == 0 and "train:" in result.stdout and "label_smoothing" in result.stdout
    assert run_cli("--version").stdout.startswith("vitkit ")
