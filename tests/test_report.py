"""Reports: attention rollout on known answers, calibration, and report.html rendered by a real browser."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from vitkit.metrics import calibration, confused_pairs
from vitkit.models import create_model
from vitkit.report import attention_rollout, cls_attention, explain
from vitkit.report.figures import roc_pr_curves

from .conftest import CHROMIUM_FLAGS, TINY_MODEL, chromium, render_in_chromium, run_cli, write_folder

T = 1 + 16  # class token and a 4x4 patch grid


def test_rollout_of_identity_attention_is_zero_everywhere():
    maps = [torch.eye(T).expand(2, 3, T, T) for _ in range(4)]  # every token attends to itself only
    assert torch.equal(attention_rollout(maps), torch.zeros(2, 4, 4))


def test_rollout_when_every_token_attends_to_one_patch_is_that_patch():
    k = 6  # token 6 is patch 5, at row 1, column 1 of the grid
    attn = torch.zeros(1, 2, T, T)
    attn[..., k] = 1.0
    layers = 3
    rollout = attention_rollout([attn] * layers)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 1] = 1 - 0.5 ** layers  # (I/2 + E/2)^L = I/2^L + (1 - 1/2^L) E, E idempotent
    assert torch.allclose(rollout, expected, atol=1e-6)
    heads = cls_attention([attn])
    assert heads.shape == (1, 2, 4, 4) and torch.equal(heads[0, 0], (expected[0] > 0).float())


def test_a_model_with_zero_queries_and_keys_attends_uniformly_even_when_it_runs_the_fused_kernel():
    model = create_model("vit_micro_patch7_28", num_classes=3, img_size=16, patch_size=4, attn_impl="sdpa").eval()
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.in_features
            block.attn.qkv.weight[:2 * dim] = 0  # q = k = 0: every softmax row is uniform
            block.attn.qkv.bias[:2 * dim] = 0
    x = torch.randn(2, 1, 16, 16)
    logits, rollout, heads = explain(model, x)
    assert torch.allclose(rollout, rollout[:, :1, :1].expand_as(rollout), atol=1e-6)  # the same for every patch
    assert torch.allclose(heads, torch.full_like(heads, 1 / T), atol=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-5)  # maps come from the explicit path, logits agree
    assert all(block.attn.impl == "sdpa" for block in model.blocks)  # asking for maps changed nothing


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])  # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.55 (right)
    result = calibration(probs, labels, bins=2)  # bins (0, .5] and (.5, 1]: every sample in the second
    assert result["bins"] == [{"low": 0.5, "high": 1.0, "count": 4, "accuracy": 0.75,
                               "confidence": pytest.approx(0.7375)}]
    assert result["ece"] == pytest.approx(abs(0.75 - 0.7375))
    ten = calibration(probs, labels, bins=10)
    assert ten["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.45) / 4)


def test_confused_pairs_and_curve_areas_match_sklearn():
    pairs = confused_pairs([[5, 3, 0], [1, 4, 7], [0, 0, 9]], ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 7), ("a", "b", 3), ("b", "a", 1)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    _, areas = roc_pr_curves(probs, labels, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        assert areas["roc_auc"][name] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))
        assert areas["average_precision"][name] == pytest.approx(skm.average_precision_score(labels == c,
                                                                                             probs[:, c]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    folder = write_folder(tmp / "photos", per_class=20)
    result = run_cli("train", folder, *TINY_MODEL, "--epochs", "3", "--batch-size", "16", "--lr", "3e-3",
                     "--set", "data.val_fraction=0.3", "--out", tmp / "runs", "--name", "r", "--no-progress")
    assert result.returncode == 0, result.stderr
    return tmp, folder, tmp / "runs" / "r", result


FIGURES = ["learning_curves", "confusion_counts", "confusion_normalized", "roc_pr", "reliability", "attention"]


def test_training_writes_the_report_and_its_pngs(run):
    _, _, run_dir, result = run
    assert f"report: {run_dir / 'report.html'}" in result.stderr
    for name in FIGURES:
        assert (run_dir / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for name in FIGURES:
        assert f'id="fig-{name}"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    for text in ("per-class metrics", "macro avg", "ECE", "training time", "ankle", "train images"):
        assert text in page


def test_the_reports_table_confusion_and_areas_are_evaluates_numbers(run):
    _, folder, run_dir, _ = run
    result = run_cli("evaluate", run_dir / "best.safetensors", folder, "--split", "val", "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    numbers = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert numbers["split"] == "val" and numbers["num_images"] == evaluated["num_images"]
    assert numbers["confusion_matrix"] == evaluated["confusion_matrix"]
    assert numbers["per_class"] == evaluated["per_class"]
    assert numbers["roc_auc_ovr_macro"] == pytest.approx(evaluated["roc_auc_ovr_macro"])
    assert np.mean(list(numbers["curves"]["roc_auc"].values())) == pytest.approx(evaluated["roc_auc_ovr_macro"])
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for row in evaluated["per_class"]:  # the page's table shows the same numbers
        cells = [row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", row["support"]]
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in page, row


def test_report_command_and_evaluate_report_on_another_split(run, tmp_path):
    _, folder, run_dir, _ = run
    result = run_cli("report", run_dir, "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "a" / "report" / "roc_pr.png").is_file()
    result = run_cli("evaluate", run_dir / "best.safetensors", folder, "--split", "train", "--report", tmp_path / "b",
                     "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["split"] == "train"
    assert "(train)" in (tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    missing = run_cli("report", tmp_path / "nothing")
    assert missing.returncode == 2 and missing.stderr.startswith("vitkit: error:")


def test_predict_explain_writes_an_overlay_per_readable_image(run, tmp_path):
    _, folder, run_dir, _ = run
    (tmp_path / "in").mkdir()
    for name in ("img_000.jpg", "img_001.png"):
        shutil.copy(folder / "bag" / name, tmp_path / "in" / name)
    (tmp_path / "in" / "junk.png").write_bytes(b"not an image")
    result = run_cli("predict", run_dir / "best.safetensors", tmp_path / "in", "--explain", tmp_path / "out",
                     "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_000.png", "img_001.png"]
    assert "unreadable" in result.stdout


def test_report_opens_in_a_real_browser_with_every_figure_loaded(run):
    _, _, run_dir, _ = run
    url = (run_dir / "report.html").resolve().as_uri()
    figures, loaded = render_in_chromium(run_dir / "report.html")
    assert figures >= len(FIGURES) and loaded == figures
    common = [chromium(), *CHROMIUM_FLAGS]
    shot = run_dir / "report-screenshot.png"
    subprocess.run([*common, "--window-size=1300,2400", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
