"""Label files (CSV, TSV, JSON Lines, Hugging Face's metadata files): reading, one-line errors that name the file and
row, group-aware and label-stratified splits, and training and evaluation from a label file through the CLI."""
import collections
import csv
import json
import shutil

import numpy as np
import pytest

from tests.conftest import run_cli, write_folder
from vitkit.data import load_data
from vitkit.data.labels import LabelSpec, read_labels
from vitkit.data.splits import iterative_split
from vitkit.errors import DataError


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """60 images (3 classes) in one folder, and their labels as a chest X-ray style CSV: 3 images per patient."""
    root = tmp_path_factory.mktemp("labels")
    source = write_folder(root / "src", per_class=20)
    images = root / "images"
    (images / "part2").mkdir(parents=True)
    rows = []
    for cls in ("ankle", "bag", "coat"):
        for i, f in enumerate(sorted((source / cls).iterdir())):
            name = f"{cls}_{f.name}"
            shutil.copy(f, images / ("part2" if i % 4 == 0 else "") / name)  # names alone find nested files too
            rows.append([name, cls, f"p{len(rows) // 3:03d}"])
    with open(root / "entries.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Image Index", "Finding Labels", "Patient ID"], *rows])
    return root, images, rows


def _write(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as fh:
        csv.writer(fh, delimiter=delimiter).writerows([header, *rows])
    return path


def test_single_label_csv_with_names_alone_and_groups(flat):
    root, images, rows = flat
    spec = LabelSpec(file=str(root / "entries.csv"), file_column="Image Index", label_column="Finding Labels",
                     group_column="Patient ID")
    table = read_labels(images, spec)
    assert table.classes == ["ankle", "bag", "coat"] and not table.multi_label and table.unlisted == 0
    assert len(table.files) == 60 and table.files[0] == "part2/ankle_img_000.jpg"
    assert table.targets.tolist() == [i // 20 for i in range(60)] and table.groups[:4] == ["p000"] * 3 + ["p001"]


def test_every_layout_reads_the_same_labels(flat, tmp_path):
    root, images, rows = flat
    _write(tmp_path / "a.tsv", ["path", "label"], [r[:2] for r in rows], delimiter="\t")
    with open(tmp_path / "a.jsonl", "w") as fh:
        fh.writelines(json.dumps({"file_name": r[0], "label": r[1]}) + "\n" for r in rows)
    hf = tmp_path / "hf"
    shutil.copytree(images, hf)
    _write(hf / "metadata.csv", ["file_name", "label"], [[f"part2/{r[0]}" if i % 20 % 4 == 0 else r[0], r[1]]
                                                         for i, r in enumerate(rows)])
    expected = read_labels(images, LabelSpec(file=str(root / "entries.csv"), file_column="Image Index",
                                             label_column="Finding Labels"))
    for folder, spec in ((images, LabelSpec(file=str(tmp_path / "a.tsv"))),
                         (images, LabelSpec(file=str(tmp_path / "a.jsonl"))), (hf, LabelSpec())):
        table = read_labels(folder, spec)
        assert table.files == expected.files and table.targets.tolist() == expected.targets.tolist()
    bundle = load_data(str(hf), img_size=16, labels=LabelSpec(), val_fraction=0.2, use_cache=False,
                       show_progress=False)  # a folder with metadata.csv loads without naming it
    assert bundle.classes == ["ankle", "bag", "coat"] and len(bundle.splits["val"]) == 12
    assert {label for _, label, _ in bundle.manifest} == {"ankle", "bag", "coat"}


def test_multi_label_targets_no_label_and_uncertain_columns(tmp_path):
    folder = write_folder(tmp_path / "img", per_class=2)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*"))
    _write(tmp_path / "sep.csv", ["Image Index", "Finding Labels"],
           [[files[0], "Effusion|Mass"], [files[1], "No Finding"], [files[2], "Mass"], [files[3], "Edema"]])
    table = read_labels(folder, LabelSpec(file=str(tmp_path / "sep.csv"), label_column="Finding Labels",
                                          label_sep="|", no_label="No Finding"))
    assert table.multi_label and table.classes == ["Edema", "Effusion", "Mass"] and table.unlisted == 2
    assert table.targets.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 1], [1, 0, 0]]
    _write(tmp_path / "cols.csv", ["file", "A", "B"], [[files[0], "1", "0"], [files[1], "-1", ""], [files[2], "0", "1"]])
    for uncertain, fill in (("ignore", None), ("zeros", 0.0), ("ones", 1.0)):
        t = read_labels(folder, LabelSpec(file=str(tmp_path / "cols.csv"), label_columns=("A", "B"),
                                          uncertain=uncertain)).targets
        assert t[0].tolist() == [1, 0] and t[2].tolist() == [0, 1]
        assert np.isnan(t[1]).all() if fill is None else t[1].tolist() == [fill, fill]


@pytest.mark.parametrize("header, rows, options, message", [
    (["file", "label"], [["a.png", "x"]], dict(label_column="Label"), "has no label column 'Label' (did you mean "
                                                                       "'label'?)"),
    (["file", "A"], [["a.png", "2"]], dict(label_columns=("A",)), "row 2, column 'A': '2' is not 0, 1, -1 or blank"),
    (["file", "label"], [["a.png", "x"], ["b.png", "y"], ["a.png", "y"]], {}, "rows 2 and 4 both list a.png"),
    (["file;label"], [["a.png;x"]], {}, "delimited by ';', not ','; pass --label-delimiter ';'"),
    (["file", "label"], [], {}, "has a header but no rows"),
    (["file", "label"], [["../a.png", "x"], ["b.png", "y"]], {},
     "row 2: '../a.png' is not a path inside the image folder"),
    (["file", "label"], [["a.png", "x|y"], ["b.png", "y"]], dict(label_sep="|", task="single"),
     "row 2 has 2 labels but data.task is 'single'"),
    (["file", "label"], [["a.png", ""], ["b.png", "y"]], {}, "row 2 has no label in column 'label'"),
    (["file", "kind", "x"], [["a.png", "x", "1"]], {}, "which column holds the labels?"),
])
def test_bad_label_files_are_one_line_errors_naming_file_and_row(tmp_path, header, rows, options, message):
    folder = tmp_path / "img"
    folder.mkdir()
    path = _write(tmp_path / "labels.csv", header, rows)
    with pytest.raises(DataError, match=None) as err:
        read_labels(folder, LabelSpec(file=str(path), **options))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv is empty"):
        read_labels(folder, LabelSpec(file=str(tmp_path / "empty.csv")))


def test_listed_files_that_are_missing_are_reported_with_their_row(flat, tmp_path):
    root, images, rows = flat
    path = _write(tmp_path / "l.csv", ["file", "label"], [r[:2] for r in rows] + [["gone.png", "bag"]])
    table = read_labels(images, LabelSpec(file=str(path)))
    assert table.missing == [("gone.png", "listed in l.csv row 62, not found")] and len(table.files) == 60


def test_group_split_keeps_groups_whole_and_label_shares_even():
    rng = np.random.default_rng(0)
    n, labels = 6000, 8
    targets = (rng.random((n, labels)) < rng.uniform(0.02, 0.3, labels)).astype(np.float32)
    targets[rng.random((n, labels)) < 0.05] = np.nan  # uncertain labels count as absent
    groups = [f"patient{g}" for g in rng.integers(0, 1500, n)]
    split = iterative_split(targets, {"val": 0.1, "test": 0.2}, seed=3, groups=groups)
    seen = collections.defaultdict(set)
    for g, s in zip(groups, split):
        seen[g].add(s)
    assert max(len(s) for s in seen.values()) == 1  # no patient in two splits
    positives = np.nan_to_num(targets)
    for name, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        inside = split == name
        assert abs(inside.mean() - share) < 0.01
        assert np.abs(positives[inside].sum(0) / positives.sum(0) - share).max() < 0.02  # every label's share
    single = rng.integers(0, 5, 1000)  # single-label targets with groups: the same, per class
    split = iterative_split(single, {"val": 0.2}, seed=0, groups=[str(i // 4) for i in range(1000)])
    assert all(abs((split[single == c] == "val").mean() - 0.2) < 0.03 for c in range(5))
    assert (iterative_split(single, {"val": 0.2}, 0) == iterative_split(single, {"val": 0.2}, 0)).all()


def test_train_and_evaluate_from_a_label_file_through_the_cli(flat, tmp_path):
    """The chest X-ray CSV's flags, single-label here: the patients stay whole in the split, evaluate reads the run's
    label file by itself or as given, and a missing column is one line."""
    root, images, rows = flat
    flags = ["--labels", root / "entries.csv", "--file-column", "Image Index", "--label-column", "Finding Labels",
             "--group-column", "Patient ID"]
    r = run_cli("train", "--images", images, *flags, "--model", "vit_micro_patch7_28", "--img-size", "28",
                "--epochs", "1", "--out", tmp_path, "--name", "csv", "--no-progress", "--set", "output.report=false",
                "--val-fraction", "0.2")
    assert r.returncode == 0, r.stderr
    split = {row["id"]: row for row in csv.DictReader(open(tmp_path / "csv" / "split.csv"))}
    patient = {r[0]: r[2] for r in rows}
    where = collections.defaultdict(set)
    for path, row in split.items():
        where[patient[path.split("/")[-1]]].add(row["split"])
    held = sum(r["split"] == "val" for r in split.values())
    assert max(len(s) for s in where.values()) == 1 and 6 <= held <= 15  # whole patients of 3: about 20%
    best = tmp_path / "csv" / "best.safetensors"
    for extra in ([], ["--images", images, *flags[:6]]):
        r = run_cli("evaluate", best, *extra, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["num_images"] == held
    r = run_cli("evaluate", best, "--images", images, "--labels", root / "entries.csv", "--file-column", "Image")
    assert r.returncode == 2 and "no file column 'Image' (did you mean 'Image Index'?)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_data_check_reads_a_label_file(flat, tmp_path):
    """Missing listed files with their row, per-label counts and co-occurrence, and a copy of one image labelled
    another way, through the CLI."""
    root, images, rows = flat
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    shutil.copy(folder / "bag_img_001.png", folder / "copy.png")
    listed = [[r[0], r[1] + ("|Mass" if i % 5 == 0 else "")] for i, r in enumerate(rows)]
    _write(tmp_path / "l.csv", ["file", "labels"], listed + [["copy.png", "coat"], ["gone.png", "bag"]])
    r = run_cli("data", "check", "--images", folder, "--labels", tmp_path / "l.csv", "--label-sep", "|", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["classes"] == ["Mass", "ankle", "bag", "coat"] and report["ok"]
    kinds = {(f["kind"], f["path"]) for f in report["findings"]}
    assert ("missing-file", "gone.png") in kinds and ("duplicate-with-other-labels", "copy.png") in kinds
    assert sum(report["counts"]["train"].values()) + sum(report["counts"]["val"].values()) == 61 + 12
    assert any("labels most often together" in n for n in report["notes"])
    single = _write(tmp_path / "s.csv", ["file", "label"], [r[:2] for r in rows])
    r = run_cli("data", "check", "--images", images, "--labels", single, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stderr


def test_multilabel_metrics_agree_with_sklearn_and_a_label_without_positives_is_reported():
    import torch
    from sklearn.metrics import average_precision_score, f1_score, hamming_loss, roc_auc_score

    from vitkit.metrics import choose_thresholds, multilabel_report

    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < [0.3, 0.5, 0.0]).astype(np.float32)  # the third label has no positive
    logits = torch.from_numpy(rng.normal(size=(40, 3)) + 2 * y).float()
    y[3, 1] = np.nan  # an uncertain label: left out of that label's metrics
    report = multilabel_report(logits, torch.from_numpy(y), ["a", "b", "none"], [0.5, 0.4, 0.5])
    probs = torch.sigmoid(logits).numpy()
    known = ~np.isnan(y[:, 1])
    assert report["per_label"]["a"]["average_precision"] == pytest.approx(average_precision_score(y[:, 0], probs[:, 0]))
    assert report["per_label"]["b"]["roc_auc"] == pytest.approx(roc_auc_score(y[known, 1], probs[known, 1]))
    assert report["per_label"]["b"]["f1"] == pytest.approx(f1_score(y[known, 1], probs[known, 1] >= 0.4))
    assert report["per_label"]["b"]["uncertain"] == 1 and report["per_label"]["none"]["average_precision"] is None
    assert report["mAP"] == pytest.approx(np.mean([average_precision_score(y[:, 0], probs[:, 0]),
                                                   average_precision_score(y[known, 1], probs[known, 1])]))
    full = ~np.isnan(y).any(1)
    predicted = probs[full] >= [0.5, 0.4, 0.5]
    assert report["hamming_loss"] == pytest.approx(hamming_loss(y[full], predicted))
    assert report["subset_accuracy"] == pytest.approx((predicted == y[full]).all(1).mean())
    assert any(n.startswith("none: no positive image") for n in report["notes"])
    cuts = choose_thresholds(probs, y)
    best = max(np.unique(probs[:, 0]), key=lambda c: f1_score(y[:, 0], probs[:, 0] >= c))
    assert f1_score(y[:, 0], probs[:, 0] >= cuts[0]) == pytest.approx(f1_score(y[:, 0], probs[:, 0] >= best))
    assert cuts[2] == 0.5
    sensitive = choose_thresholds(probs, y, sensitivity=0.9)
    assert (probs[y[:, 0] == 1, 0] >= sensitive[0]).mean() >= 0.9


def test_multilabel_loss_masks_uncertain_labels_and_weighs_positives():
    import torch

    from vitkit.data.augment import Mix
    from vitkit.engine.parts import MultiLabelLoss

    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, 3.0]])
    target = torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 1.0]])
    by_hand = 0.0
    for i in range(2):
        for j in range(3):
            if not torch.isnan(target[i, j]):
                p, t = torch.sigmoid(logits[i, j]), target[i, j]
                by_hand += float(-(3.0 * t * torch.log(p) + (1 - t) * torch.log(1 - p)))  # positives weighed 3x
    loss = MultiLabelLoss(torch.tensor([3.0, 3.0, 3.0]))(logits, target)
    assert float(loss) == pytest.approx(by_hand / 3, rel=1e-6)
    mix = Mix(0.8, 0.0, 1.0, 0.5, smoothing=0.1)  # multi-hot rows mix as they are, without smoothing
    x = torch.zeros(2, 1, 4, 4)
    _, mixed = mix.apply(x, x.flip(0), target.nan_to_num(0), target.nan_to_num(0).flip(0), 3,
                         {"mix": True, "cutmix": False, "lam": 0.75, "cy": 0.5, "cx": 0.5})
    assert torch.allclose(mixed[0], 0.75 * torch.tensor([1.0, 0, 0]) + 0.25 * torch.tensor([0, 1.0, 1.0]))


def test_multi_label_chest_xray_layout_trains_and_evaluates_through_the_cli(flat, tmp_path):
    """`Finding Labels` with '|', `No Finding` for none, patients kept whole: sigmoid training selected by val mAP,
    per-label thresholds for a sensitivity in the checkpoint, evaluate's multi-label metrics; int8 export refused in
    one line."""
    root, images, rows = flat
    listed = [[r[0], "No Finding" if i % 7 == 0 else r[1] + ("|Mass" if i % 3 == 0 else ""), r[2]]
              for i, r in enumerate(rows)]
    entries = _write(tmp_path / "Data_Entry.csv", ["Image Index", "Finding Labels", "Patient ID"], listed)
    flags = ["--labels", entries, "--file-column", "Image Index", "--label-column", "Finding Labels", "--label-sep",
             "|", "--group-column", "Patient ID", "--no-label", "No Finding"]
    r = run_cli("train", "--images", images, *flags, "--model", "vit_micro_patch7_28", "--img-size", "28",
                "--epochs", "2", "--out", tmp_path, "--name", "multi", "--no-progress", "--val-fraction", "0.3",
                "--set", "train.mixup=0.8", "--balance", "loss", "--threshold-for", "sensitivity=0.8")
    assert r.returncode == 0, r.stderr
    assert "best val mAP" in r.stdout and (tmp_path / "multi" / "report.html").is_file()
    metrics = list(csv.DictReader(open(tmp_path / "multi" / "metrics.csv")))
    assert list(metrics[0])[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_map"]
    from vitkit.engine.checkpoint import read_meta

    best = tmp_path / "multi" / "best.safetensors"
    meta = read_meta(best)
    assert meta["task"] == "multi-label" and meta["classes"] == ["Mass", "ankle", "bag", "coat"]
    assert len(meta["thresholds"]) == 4
    assert meta["val_map"] == pytest.approx(max(float(m["val_map"]) for m in metrics))
    r = run_cli("evaluate", best, "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["task"] == "multi-label"
    assert report["mAP"] == pytest.approx(meta["val_map"]) and set(report["per_label"]) == set(meta["classes"])
    assert [v["threshold"] for v in report["per_label"].values()] == pytest.approx(meta["thresholds"])
    assert all(v["recall"] >= 0.8 for v in report["per_label"].values() if v["support"])  # chosen on this split
    r = run_cli("train", "--images", images, *flags, "--threshold-for", "recall=0.9")
    assert r.returncode == 2 and "--threshold-for must be 'f1' or 'sensitivity=S'" in r.stderr
    r = run_cli("export", best, "--quantize", "int8")
    assert r.returncode == 2 and "int8 quantization of multi-label models is not in this version" in r.stderr
    assert not best.with_suffix(".onnx").exists()  # refused before the fp32 export


def test_asymmetric_loss_matches_its_formula_and_is_bce_without_focusing():
    """ASL (Ridnik et al.): -(1-p)^g+ log p on positives, -p_m^g- log(1-p_m), p_m = max(p - m, 0), on negatives;
    soft targets weigh both, uncertain (NaN) ones are left out; with g+ = g- = m = 0 it is binary cross-entropy."""
    import torch

    from vitkit.engine.parts import MultiLabelLoss

    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64) * 3
    y = torch.tensor([[1, 0, 0, np.nan], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0.3, 0.7, 0, 0], [0, 0, 1, 1]],
                     dtype=torch.float64)

    def reference(gn, gp, m, w=np.ones(4)):
        xs, ys = x.numpy(), y.numpy()
        p = 1 / (1 + np.exp(-xs))
        pm = np.maximum(p - m, 0)
        loss = -(ys * w * (1 - p) ** gp * np.log(p) + (1 - ys) * pm ** gn * np.log(1 - pm))
        return np.where(np.isnan(ys), 0, loss).sum() / 4

    assert float(MultiLabelLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(x, y)) == pytest.approx(reference(4, 1, 0.05))
    w = torch.tensor([1.0, 2.0, 3.0, 1.5], dtype=torch.float64)
    assert float(MultiLabelLoss(w, gamma_neg=2)(x, y)) == pytest.approx(reference(2, 0, 0, w.numpy()))
    assert float(MultiLabelLoss()(x, y)) == pytest.approx(reference(0, 0, 0))
    easy, hard, none = torch.tensor([[-4.0, -5.0]]), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    assert float(MultiLabelLoss()(easy, none)) > 0.01
    assert float(MultiLabelLoss(gamma_neg=4, clip=0.05)(easy, none)) == 0.0  # easy negatives below the margin are free
    assert float(MultiLabelLoss(gamma_neg=4, clip=0.05)(hard, none)) > 0.5  # confident false positives still cost
    logits = (torch.randn(3, 4) * 20).requires_grad_()
    MultiLabelLoss(gamma_neg=4, clip=0.05)(logits, torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])).backward()
    assert torch.isfinite(logits.grad).all()
