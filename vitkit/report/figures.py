"""The report's figures, drawn with matplotlib's headless backend; each function returns PNG bytes."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display needed, ever

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9,
                     "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.25})


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def curve(history: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) of the epochs that have a value for `key`: validation columns are NaN on epochs without a
    validation pass (`train.val_every`, or no validation split), which would otherwise break the line."""
    points = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [e for e, _ in points], [v for _, v in points]


def learning_curves(history: list[dict]) -> bytes:
    """Loss, top-1 (multi-label: validation mAP, of the raw and the averaged weights) and learning rate per epoch,
    train beside val."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(*curve(history, "train_loss"), "o-", label="train", ms=3)
    axes[0].plot(*curve(history, "val_loss"), "o-", label="val", ms=3)
    axes[0].set(title="loss", xlabel="epoch")
    if "val_map" in history[0]:
        axes[1].plot(*curve(history, "val_map"), "o-", label="val", ms=3)
        if curve(history, "val_map_ema")[0]:  # none where no average was kept
            axes[1].plot(*curve(history, "val_map_ema"), "o-", label="val (EMA)", ms=3)
        axes[1].set(title="validation mAP", xlabel="epoch")
    else:
        axes[1].plot(*curve(history, "train_acc"), "o-", label="train", ms=3)
        axes[1].plot(*curve(history, "val_top1"), "o-", label="val", ms=3)
        axes[1].set(title="top-1 accuracy", xlabel="epoch")
    axes[2].plot(*curve(history, "lr"), "o-", color="gray", ms=3)
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def confusion_matrix(cm: np.ndarray, classes: list[str], normalize: bool) -> bytes:
    """Counts, or rows normalized to the share of each true class."""
    cm = np.asarray(cm, dtype=np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title="confusion matrix, rows normalized" if normalize else "confusion matrix, counts")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax.grid(False)
    if k <= 25:
        top = shown.max() or 1
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > top / 2 else "black")
    return _png(fig)


def roc_pr_curves(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[bytes, dict]:
    """ROC and precision-recall curves (one-vs-rest per class; the positive class alone for two classes), with
    their areas: {'roc_auc': {class: auc}, 'average_precision': {class: ap}}."""
    from sklearn import metrics as skm  # here: `vitkit runs compare` draws curves without loading scikit-learn

    k = len(classes)
    shown = [1] if k == 2 else list(range(k))
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.4))
    areas: dict[str, dict[str, float]] = {"roc_auc": {}, "average_precision": {}}
    for c in shown:
        truth = labels == c
        if truth.all() or not truth.any():
            continue  # a curve needs both positives and negatives
        fpr, tpr, _ = skm.roc_curve(truth, probs[:, c])
        precision, recall, _ = skm.precision_recall_curve(truth, probs[:, c])
        areas["roc_auc"][classes[c]] = float(skm.auc(fpr, tpr))
        areas["average_precision"][classes[c]] = float(skm.average_precision_score(truth, probs[:, c]))
        roc.plot(fpr, tpr, lw=1.2, label=f"{classes[c]} ({areas['roc_auc'][classes[c]]:.3f})")
        pr.plot(recall, precision, lw=1.2, label=f"{classes[c]} ({areas['average_precision'][classes[c]]:.3f})")
    roc.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    macro = np.mean(list(areas["roc_auc"].values())) if areas["roc_auc"] else float("nan")
    roc.set(title=f"ROC (AUC; macro {macro:.3f})" if k > 2 else "ROC (AUC)", xlabel="false positive rate",
            ylabel="true positive rate")
    pr.set(title="precision-recall (average precision)", xlabel="recall", ylabel="precision")
    for ax in (roc, pr):
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
    return _png(fig), areas


def _label_color(j: int):
    return plt.get_cmap("tab20")(j % 20)


def multilabel_curves(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> bytes:
    """Each label's ROC and precision-recall curve (sigmoid probability against that label's known targets; NaN
    targets, uncertain, left out), with its area in the legend; labels without positives or negatives are skipped."""
    from sklearn import metrics as skm

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    for j, name in enumerate(classes):
        known = ~np.isnan(targets[:, j])
        truth = targets[known, j] > 0.5
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = skm.roc_curve(truth, probs[known, j])
        precision, recall, _ = skm.precision_recall_curve(truth, probs[known, j])
        ap = skm.average_precision_score(truth, probs[known, j])
        roc.plot(fpr, tpr, lw=1.1, color=_label_color(j), label=f"{name} ({skm.auc(fpr, tpr):.3f})")
        pr.plot(recall, precision, lw=1.1, color=_label_color(j), label=f"{name} ({ap:.3f})")
    roc.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    roc.set(title="ROC per label (AUC)", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="precision-recall per label (average precision)", xlabel="recall", ylabel="precision")
    for ax in (roc, pr):
        ax.legend(fontsize=6.5, loc="lower right" if ax is roc else "lower left", ncol=2 if len(classes) > 10 else 1)
    return _png(fig)


def cooccurrence(counts: np.ndarray, classes: list[str]) -> bytes:
    """How many images carry both labels (the diagonal: each label's images), coloured off the diagonal by the share
    of the row label's images that also carry the column label."""
    counts = np.asarray(counts, dtype=np.float64)
    share = counts / np.maximum(np.diag(counts)[:, None], 1)
    np.fill_diagonal(share, np.nan)  # 1 by definition: it would wash out the rest of the scale
    top = max(float(np.nanmax(share)) if len(classes) > 1 else 0.0, 0.05)
    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    cmap = plt.get_cmap("Purples").copy()
    cmap.set_bad("#e4e7ec")
    image = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0, vmax=top)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row label's images")
    ax.set(xticks=range(k), yticks=range(k), title="label co-occurrence (images with both labels)")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax.grid(False)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                dark = i != j and share[i, j] > top / 2
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", fontweight="bold" if i == j else "normal")
    return _png(fig)


def threshold_curves(probs: np.ndarray, targets: np.ndarray, classes: list[str], thresholds: list[float],
                     columns: int = 4) -> bytes:
    """Per label: precision, recall and F1 as its threshold moves, with the threshold the model keeps marked."""
    cuts = np.linspace(0.0, 1.0, 101)
    rows = -(-len(classes) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.3 * rows), squeeze=False, sharex=True,
                             sharey=True)
    for ax in axes.flat[len(classes):]:
        ax.axis("off")
    for j, (ax, name) in enumerate(zip(axes.flat, classes)):
        known = ~np.isnan(targets[:, j])
        truth, score = targets[known, j] > 0.5, probs[known, j]
        passed = score[None, :] >= cuts[:, None]  # (cuts, images)
        tp = (passed & truth).sum(1)
        precision = np.where(passed.sum(1) > 0, tp / np.maximum(passed.sum(1), 1), np.nan)
        recall = tp / max(int(truth.sum()), 1) if truth.any() else np.full(len(cuts), np.nan)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        ax.plot(cuts, precision, lw=1.1, label="precision")
        ax.plot(cuts, recall, lw=1.1, label="recall")
        ax.plot(cuts, f1, lw=1.4, color="black", label="F1")
        ax.axvline(thresholds[j], color="#c44e52", ls="--", lw=1)
        ax.set_title(f"{name} (threshold {thresholds[j]:.2f})", fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.supxlabel("threshold on the label's probability", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def reliability_diagram(bins: list[dict], ece: float) -> bytes:
    """Accuracy against confidence per bin; the gap to the diagonal is miscalibration."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = (bins[0]["high"] - bins[0]["low"]) if bins else 0.1
    ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, color="#4c72b0", label="accuracy")
    ax.plot(centres, [b["confidence"] for b in bins], "_", color="#c44e52", ms=14, mew=2.5,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy",
           title=f"reliability (ECE {ece:.4f})")
    ax.legend(loc="upper left")
    return _png(fig)


def image_grid(images: list[np.ndarray | None], captions: list[str], columns: int = 8, title: str = "") -> bytes:
    """uint8 images, (C, H, W) or (H, W, 3), in a grid with a caption under each; None leaves its cell empty."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        if image is None:
            continue
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
        ax.imshow(image.squeeze(), cmap="gray" if image.ndim == 2 or image.shape[-1] == 1 else None, vmin=0,
                  vmax=255)
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def prediction_panel(image: np.ndarray, overlay_rgb: np.ndarray, top: list[tuple[str, float]], title: str) -> bytes:
    """An image, its attention overlay and its top-k probabilities as bars."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(9, 3), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    shown = image.transpose(1, 2, 0).squeeze()
    a.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255)
    a.set_title("image")
    b.imshow(overlay_rgb)
    b.set_title("attention rollout")
    for ax in (a, b):
        ax.axis("off")
    names = [t[0] for t in top][::-1]
    c.barh(names, [t[1] for t in top][::-1], color="#4c72b0")
    c.set(xlim=(0, 1), title="top-k probability")
    for y, (_, p) in enumerate(top[::-1]):
        c.text(min(p + 0.02, 0.8), y, f"{p:.1%}", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _png(fig)
