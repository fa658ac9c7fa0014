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
