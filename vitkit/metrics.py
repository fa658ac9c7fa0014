"""Classification metrics from logits, computed with scikit-learn where it has them.

scikit-learn is imported where it is used: it costs every command that imports vitkit about a second otherwise.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    return float((top == labels[:, None]).any(dim=1).float().mean()) if len(labels) else float("nan")


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Loss, top-1/top-5, per-class precision/recall/F1/support, averages, confusion matrix; binary extras."""
    from sklearn import metrics as skm

    logits = logits.float()
    y_true = labels.numpy()
    probs = logits.softmax(dim=1).numpy()
    y_pred = probs.argmax(axis=1)
    ids = list(range(len(classes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision of never-predicted classes is reported as 0
        p, r, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
        avg = {name: skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=name, zero_division=0)
               for name in ("macro", "weighted")}
    report = {
        "num_images": int(len(y_true)),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                       "support": int(support[i])} for i, c in enumerate(classes)],
        "macro": {"precision": float(avg["macro"][0]), "recall": float(avg["macro"][1]), "f1": float(avg["macro"][2])},
        "weighted": {"precision": float(avg["weighted"][0]), "recall": float(avg["weighted"][1]),
                     "f1": float(avg["weighted"][2])},
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }
    present = np.unique(y_true)
    if len(classes) == 2:
        report["binary"] = binary_metrics(y_true, y_pred, probs[:, 1], classes)
    elif len(present) == len(classes):
        report["roc_auc_ovr_macro"] = float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro",
                                                              labels=ids))
    return report


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray, classes: list[str]) -> dict:
    """Class 1 is the positive class: sensitivity = its recall, specificity = class 0's recall."""
    from sklearn import metrics as skm

    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return {
        "positive_class": classes[1],
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "f1": float(skm.f1_score(y_true, y_pred, labels=[0, 1], zero_division=0)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        "roc_auc": float(skm.roc_auc_score(y_true, score)) if both else float("nan"),
    }


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error and the reliability diagram's bins (equal-width bins of top-1 confidence).

    ECE = sum over bins of (bin share) * |accuracy in bin - mean confidence in bin|.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        acc, conf = float(correct[mask].mean()), float(confidence[mask].mean())
        ece += mask.mean() * abs(acc - conf)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                     "accuracy": acc, "confidence": conf})
    return {"ece": float(ece), "bins": rows}


def confused_pairs(confusion: list[list[int]], classes: list[str], top: int = 5) -> list[dict]:
    """The `top` (true, predicted) pairs with the most mistakes, most first."""
    cm = np.asarray(confusion)
    pairs = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": classes[i], "predicted": classes[j], "true_index": i, "predicted_index": j, "count": n}
            for n, i, j in pairs[:top]]


# ----------------------------------------------------------------------------------------------- multi-label
def _label_columns(targets: np.ndarray):
    """Each label's (rows with a known target, their 0/1 targets): uncertain (NaN) targets are left out."""
    for j in range(targets.shape[1]):
        known = ~np.isnan(targets[:, j])
        yield known, targets[known, j] > 0.5


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP: scikit-learn's average precision of each label with positives, averaged (NaN if none has)."""
    from sklearn.metrics import average_precision_score

    aps = [average_precision_score(y, scores[known, j]) for j, (known, y) in enumerate(_label_columns(targets))
           if y.any()]
    return float(np.mean(aps)) if aps else float("nan")


def choose_thresholds(probs: np.ndarray, targets: np.ndarray, sensitivity: float | None = None) -> list[float]:
    """Per-label thresholds on validation probabilities: the F1-optimal one, or with `sensitivity` the highest that
    still finds that share of the positives; 0.5 for a label without positives. Each sits 1e-6 below the score it
    is chosen at, so that the image there stays above it when its score is recomputed with other rounding."""
    from sklearn.metrics import precision_recall_curve

    out = []
    for j, (known, y) in enumerate(_label_columns(targets)):
        if not y.any() or y.all():
            out.append(0.5)
            continue
        precision, recall, cuts = precision_recall_curve(y, probs[known, j])
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        if sensitivity is None:
            f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
            out.append(float(cuts[int(np.argmax(f1))]) - 1e-6)
        else:
            out.append(float(cuts[np.flatnonzero(recall >= sensitivity).max()]) - 1e-6)
    return out


def multilabel_report(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                      thresholds: list[float] | None = None) -> dict:
    """Multi-label metrics (scikit-learn's where it has them): macro and micro mAP, per-label average precision, ROC
    AUC, precision, recall, F1 and support at each label's threshold (0.5 without), subset accuracy and Hamming loss
    over the images whose labels are all known. A label without positives (or without negatives) gets null where
    the metric needs them, and is named in `notes`."""
    from sklearn.metrics import average_precision_score, hamming_loss, precision_recall_fscore_support, roc_auc_score

    probs = torch.sigmoid(logits.float()).numpy()
    y = targets.float().numpy()
    cuts = np.array(thresholds if thresholds is not None else [0.5] * len(classes))
    predicted = probs >= cuts
    per_label, notes = {}, []
    for j, (known, truth) in enumerate(_label_columns(y)):
        both = truth.any() and not truth.all()
        p, r, f, _ = precision_recall_fscore_support(truth, predicted[known, j], average="binary", zero_division=0)
        per_label[classes[j]] = {
            "average_precision": float(average_precision_score(truth, probs[known, j])) if truth.any() else None,
            "roc_auc": float(roc_auc_score(truth, probs[known, j])) if both else None,
            "precision": float(p), "recall": float(r), "f1": float(f), "support": int(truth.sum()),
            "threshold": float(cuts[j]), "uncertain": int((~known).sum())}
        if not truth.any():
            notes.append(f"{classes[j]}: no positive image in this split (average precision and ROC AUC undefined)")
    complete = ~np.isnan(y).any(1)
    truth = y[complete] > 0.5
    known = ~np.isnan(y)
    micro = average_precision_score(truth, probs[complete], average="micro") if truth.any() else float("nan")
    aps = [v["average_precision"] for v in per_label.values() if v["average_precision"] is not None]
    return {"task": "multi-label", "num_images": int(len(y)), "mAP": float(np.mean(aps)) if aps else None,
            "mAP_micro": float(micro) if truth.any() else None,
            "subset_accuracy": float((predicted[complete] == truth).all(1).mean()) if complete.any() else None,
            "hamming_loss": float(hamming_loss(truth, predicted[complete])) if complete.any() else None,
            "label_accuracy": float((predicted == (y > 0.5))[known].mean()) if known.any() else None,
            "per_label": per_label, "notes": notes}
