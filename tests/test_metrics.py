"""Our metrics against scikit-learn and hand computations, including a class that is never predicted."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from vitkit.metrics import classification_report, topk_accuracy


def test_multiclass_report_matches_sklearn_with_a_never_predicted_class():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 4, 300))
    logits = torch.from_numpy(rng.normal(size=(300, 4))).float()
    logits[:, 3] -= 100  # class 3 is never predicted
    report = classification_report(logits, labels, ["a", "b", "c", "d"])
    pred = logits.argmax(1).numpy()
    assert report["per_class"][3]["precision"] == 0.0 and report["per_class"][3]["recall"] == 0.0
    p, r, f, s = skm.precision_recall_fscore_support(labels.numpy(), pred, labels=[0, 1, 2, 3], zero_division=0)
    for i in range(4):
        row = report["per_class"][i]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]
    assert (report["macro"]["precision"], report["macro"]["recall"], report["macro"]["f1"]) == \
        pytest.approx((p.mean(), r.mean(), f.mean()))
    wp, wr, wf, _ = skm.precision_recall_fscore_support(labels.numpy(), pred, average="weighted", zero_division=0)
    assert (report["weighted"]["precision"], report["weighted"]["recall"], report["weighted"]["f1"]) == \
        pytest.approx((wp, wr, wf))
    assert report["top1"] == pytest.approx(skm.accuracy_score(labels.numpy(), pred))
    assert report["mcc"] == pytest.approx(skm.matthews_corrcoef(labels.numpy(), pred))
    assert report["confusion_matrix"] == skm.confusion_matrix(labels.numpy(), pred).tolist()
    probs = logits.softmax(1).numpy()
    assert report["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(labels.numpy(), probs, multi_class="ovr"))
    assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)


def test_binary_sensitivity_specificity_by_hand():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    logits = torch.stack([1 - pred.float(), pred.float()], 1) + torch.linspace(0, 0.1, 10)[:, None] * torch.tensor([0, 1])
    b = classification_report(logits, labels, ["healthy", "sick"])["binary"]
    assert b["positive_class"] == "sick"
    assert b["sensitivity"] == pytest.approx(3 / 4)  # TP 3, FN 1
    assert b["specificity"] == pytest.approx(4 / 6)  # TN 4, FP 2
    assert b["precision"] == pytest.approx(3 / 5)
    assert b["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert b["roc_auc"] == pytest.approx(skm.roc_auc_score(labels.numpy(), logits.softmax(1)[:, 1].numpy()))


def test_topk():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.02, 0.08]])
    assert topk_accuracy(logits, torch.tensor([2, 1]), 1) == 0.0
    assert topk_accuracy(logits, torch.tensor([2, 1]), 2) == 0.5
    assert topk_accuracy(logits, torch.tensor([2, 1]), 5) == 1.0
