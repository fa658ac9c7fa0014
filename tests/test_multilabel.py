"""Multi-label end to end on tiny generated mosaics (the writer of benchmarks/multilabel_mosaic.py over the stand-in
Fashion-MNIST): `vitkit train` with the chest X-ray flags and its report, evaluate, predict (table, JSON, CSV),
export to ONNX and serve, all agreeing on each image's labels."""
import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import render_in_chromium, run_cli
from tests.serving import Server, browser_or_skip, serve_command
from vitkit.engine.checkpoint import read_meta

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--file-column", "Image Index", "--label-column", "Finding Labels", "--label-sep", "|", "--no-label",
         "No Finding", "--group-column", "Patient ID"]


def _mosaic_module():
    spec = importlib.util.spec_from_file_location("multilabel_mosaic", ROOT / "benchmarks" / "multilabel_mosaic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(fake_mnist, tmp_path_factory):
    """150 mosaics of the stand-in garments (4 classes) in patients of three; a micro ViT trained 3 epochs with the
    asymmetric loss, its report written after training."""
    root = tmp_path_factory.mktemp("mosaic")
    _mosaic_module().write_mosaics(root, 150, data_root=str(fake_mnist))
    labels = ["--images", str(root / "images"), "--labels", str(root / "Data_Entry.csv"), *FLAGS]
    r = run_cli("train", *labels, "--model", "vit_micro_patch7_28", "--img-size", "56", "--epochs", "3", "--out",
                root / "runs", "--name", "m", "--no-progress", "--set", "data.test_fraction=0.2",
                "--multi-label-loss", "asl", "--lr", "2e-3")
    assert r.returncode == 0, r.stderr
    return root, root / "runs" / "m", labels


def _entries(root: Path) -> dict[str, list[str]]:
    with open(root / "Data_Entry.csv", newline="") as fh:
        return {row["Image Index"]: [] if row["Finding Labels"] == "No Finding" else row["Finding Labels"].split("|")
                for row in csv.DictReader(fh)}


def test_training_writes_the_multilabel_report_with_its_figures(trained):
    root, run, _ = trained
    html = (run / "report.html").read_text()
    for section in ("per-label metrics", "ROC and precision-recall", "label co-occurrence", "thresholds",
                    "most confident mistakes per label", "attention maps", "learning curves"):
        assert f"<h2>{section}</h2>" in html, section
    numbers = json.loads((run / "report" / "metrics.json").read_text())
    evaluated = json.loads(run_cli("evaluate", run / "best.safetensors", "--split", "val", "--json").stdout)
    assert numbers["split"] == "val" and numbers["mAP"] == pytest.approx(evaluated["mAP"])
    classes = list(numbers["per_label"])
    entries = _entries(root)
    with open(run / "split.csv", newline="") as fh:
        val = [row["id"] for row in csv.DictReader(fh) if row["split"] == "val"]
    expected = np.zeros((len(classes), len(classes)), int)  # co-occurrence counted from the label file itself
    for name in val:
        present = [classes.index(c) for c in entries[name]]
        for i in present:
            for j in present:
                expected[i, j] += 1
    assert numbers["cooccurrence"] == expected.tolist()
    assert [v["threshold"] for v in numbers["per_label"].values()] == \
        pytest.approx(read_meta(run / "best.safetensors")["thresholds"])
    pngs = {p.name for p in (run / "report").glob("*.png")}
    assert {"curves.png", "cooccurrence.png", "thresholds.png", "attention.png", "learning_curves.png"} <= pngs
    assert any(p.startswith("mistakes_") for p in pngs)
    figures, loaded = render_in_chromium(run / "report.html")
    assert figures == loaded == len(pngs)


def test_evaluate_predict_export_and_serve_agree_on_the_labels(trained, tmp_path):
    root, run, labels = trained
    best = run / "best.safetensors"
    r = run_cli("evaluate", best, *labels, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["task"] == "multi-label" and report["mAP"] > 0.5  # learned something in three epochs
    files = sorted((root / "images").iterdir())[:12]
    r = run_cli("predict", best, *files, "--json", "--top-k", "2", "--precision", "fp32")  # as ONNX runs it
    assert r.returncode == 0, r.stderr
    torch_answers = json.loads(r.stdout)
    meta = read_meta(best)
    thresholds = dict(zip(meta["classes"], meta["thresholds"]))
    for answer in torch_answers:
        passing = {x["label"] for x in answer["labels"]}
        for x in answer["labels"]:  # six decimals in JSON
            assert x["threshold"] == pytest.approx(thresholds[x["label"]], abs=1e-6)
            assert x["probability"] >= thresholds[x["label"]] - 1e-6
        assert passing <= {t["class"] for t in answer["top"]}  # the top list holds every passing label
        assert all(t["probability"] < thresholds[t["class"]] + 1e-6 for t in answer["top"] if t["class"] not in passing)
    rows = list(csv.DictReader(io.StringIO(run_cli("predict", best, *files, "--precision", "fp32", "--format", "csv",
                                                   "--top-k", "2").stdout)))
    assert {(Path(row["file"]).name, row["class"]) for row in rows if row["passes"] == "yes"} == \
        {(Path(a["file"]).name, x["label"]) for a in torch_answers for x in a["labels"]}
    table = run_cli("predict", best, *files[:2]).stdout
    assert "labels (at their thresholds)" in table

    onnx = tmp_path / "m.onnx"
    r = run_cli("export", best, "--out", onnx)
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    assert side["task"] == "multi-label" and side["thresholds"] == meta["thresholds"]
    onnx_answers = json.loads(run_cli("predict", onnx, *files, "--json", "--top-k", "2").stdout)
    _same_labels(torch_answers, onnx_answers)

    server = Server(serve_command(best, "--precision", "fp32"), tmp_path / "server.log")
    try:
        status, model = server.get("/model")
        assert status == 200 and model["task"] == "multi-label" and model["thresholds"] == meta["thresholds"]
        status, _, body = server.post_files([(f.name, f.read_bytes()) for f in files[:4]], "?explain=1")
        assert status == 200, body
        _same_labels(torch_answers[:4], body["predictions"])
        assert all(p["overlay"].startswith("data:image/png;base64,") for p in body["predictions"])
        _page_shows_the_labels(server, files[:4], body["predictions"])
    finally:
        server.stop()


def _same_labels(expected: list[dict], got: list[dict]) -> None:
    for a, b in zip(expected, got, strict=True):
        assert [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]], (a, b)
        assert [x["probability"] for x in a["labels"]] == pytest.approx([x["probability"] for x in b["labels"]],
                                                                        abs=1e-4)


def _page_shows_the_labels(server: Server, files: list[Path], answers: list[dict]) -> None:
    """The web page: each card lists the labels that pass, and its bars show the thresholds."""
    webdriver = browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = webdriver()
    try:
        driver.get(server.base + "/")
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in files))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
        cards = driver.find_elements(By.CSS_SELECTOR, '.card[data-state="done"]')
        got = {c.find_element(By.TAG_NAME, "h2").text: c.get_attribute("data-labels") for c in cards}
        assert got == {f.name: "|".join(x["label"] for x in a["labels"]) for f, a in zip(files, answers)}
        assert len(driver.find_elements(By.CSS_SELECTOR, ".bar .cut")) == sum(len(a["top"]) for a in answers)
        assert "multi-label, 4 labels" in driver.find_element(By.ID, "model-info").text
    finally:
        driver.quit()


def test_the_mlflow_model_gives_the_labels_that_pass(trained):
    pytest.importorskip("mlflow")
    import vitkit
    from vitkit.tracking.mlflow_model import VitkitModel

    root, run, _ = trained
    clf = vitkit.load(run / "best.safetensors")
    files = sorted((root / "images").iterdir())[:10]
    pyfunc = VitkitModel()
    pyfunc.classifier = clf  # what load_context builds from the logged checkpoint
    table = pyfunc.predict(None, np.stack([clf.preprocess(f) for f in files]))
    assert list(table["labels"]) == ["|".join(sorted((c for c, _, _ in p.labels), key=clf.classes.index))
                                     for p in clf.predict(files)]
    assert ((table[[f"p_{c}" for c in clf.classes]] >= 0) & (table[[f"p_{c}" for c in clf.classes]] <= 1)).all().all()
