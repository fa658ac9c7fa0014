"""The report of a multi-label model: every label judged on its own, at the threshold kept in the checkpoint.

Beside the run and its learning curves (validation mAP), the page shows the per-label table (average precision, ROC
AUC, and precision, recall and F1 at the threshold), each label's ROC and precision-recall curve, how often labels
occur together, how precision, recall and F1 move with each threshold, the most confident false positives and the
most clearly missed positives of each label, and attention maps of sample images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import Normalize
from ..fileio import atomic_write
from ..metrics import multilabel_report
from ..models import has_attention_maps
from ..runs import read_history
from . import figures
from . import html as h
from .attention import explain, overlay
from .common import FIGURE_DIR, REPORT_FILE, fig, finish_page, run_section

MISTAKES = 6  # images per row of a label's mistakes figure
MISTAKE_LABELS = 16  # labels with a mistakes figure, those with the most mistakes first


def build_multilabel_report(ev, checkpoint: Path, run_dir: Path | None, out: Path, samples: int = 8) -> Path:
    """report.html (and report/*.png, report/metrics.json) of the multi-label model `ev` on its split."""
    classes = ev.meta["classes"]
    logits = ev.logits()
    targets = ev.data.labels.float().numpy()  # (N, K): 1, 0, NaN for uncertain
    probs = torch.sigmoid(logits.float()).numpy()
    metrics = multilabel_report(logits, ev.data.labels, classes, ev.meta.get("thresholds"))
    cuts = np.array([metrics["per_label"][c]["threshold"] for c in classes])
    history = read_history(run_dir)
    positive = np.nan_to_num(targets) > 0.5
    counts = positive.T.astype(np.int64) @ positive.astype(np.int64)

    pngs: dict[str, tuple[bytes, str]] = {}
    if history:
        pngs["learning_curves"] = (figures.learning_curves(history), "loss, validation mAP and learning rate per epoch")
    pngs["curves"] = (figures.multilabel_curves(probs, targets, classes),
                      "ROC and precision-recall curve of each label (sigmoid probability; uncertain targets left out)")
    pngs["cooccurrence"] = (figures.cooccurrence(counts, classes),
                            f"images carrying both labels (diagonal: each label's images); "
                            f"{int((~positive.any(1)).sum()):,} images carry no label")
    pngs["thresholds"] = (figures.threshold_curves(probs, targets, classes, list(cuts)),
                          "precision, recall and F1 of each label as its threshold moves; dashed: the threshold kept "
                          "in the checkpoint")
    mistakes = _mistake_figures(ev, probs, targets, cuts, classes)
    pngs.update(mistakes)
    attention = _attention_figure(ev, targets, cuts, samples)
    if attention is not None:
        pngs["attention"] = (attention, "per sample: the image, attention rollout over all layers, and the last "
                                        "layer's class-token attention of each head")
    figure_dir = out / FIGURE_DIR
    for name, (png, _) in pngs.items():
        atomic_write(figure_dir / f"{name}.png", png)
    numbers = {"split": ev.split, **metrics, "cooccurrence": counts.tolist()}
    atomic_write(figure_dir / "metrics.json", json.dumps(numbers, indent=2, default=float) + "\n")
    html_path = out / REPORT_FILE
    atomic_write(html_path, _render(ev, checkpoint, run_dir, metrics, history, pngs, list(mistakes)))
    return html_path


def _mistake_figures(ev, probs: np.ndarray, targets: np.ndarray, cuts: np.ndarray, classes: list[str]) -> dict:
    """Per label with mistakes: its most confident false positives (top row) and its positives with the lowest
    probability among those missed (bottom row)."""
    found = []
    for j, name in enumerate(classes):
        known = np.flatnonzero(~np.isnan(targets[:, j]))
        truth, score = targets[known, j] > 0.5, probs[known, j]
        fp = known[(~truth) & (score >= cuts[j])]
        fn = known[truth & (score < cuts[j])]
        if len(fp) or len(fn):
            found.append((len(fp) + len(fn), j, fp[np.argsort(-probs[fp, j])], fn[np.argsort(probs[fn, j])]))
    out = {}
    for total, j, fp, fn in sorted(found, key=lambda f: (-f[0], f[1]))[:MISTAKE_LABELS]:
        images, captions = [], []
        for row, kind in ((fp[:MISTAKES], "false +"), (fn[:MISTAKES], "missed")):
            for i in row:
                images.append(ev.data.images[i].numpy())
                captions.append(f"{kind} {probs[i, j]:.0%}")
            images += [None] * (MISTAKES - len(row))  # empty cells: the missed ones stay on the second row
            captions += [""] * (MISTAKES - len(row))
        out[f"mistakes_{j}"] = (figures.image_grid(images, captions, columns=MISTAKES),
                                f"{classes[j]} (threshold {cuts[j]:.2f}): {len(fp)} false positives, most confident "
                                f"first (top row); {len(fn)} missed, lowest probability first (bottom row)")
    return out


def _sample_indices(targets: np.ndarray, count: int) -> list[int]:
    """Up to `count` images: each label's first positive image in turn, then an image without labels."""
    positive = np.nan_to_num(targets) > 0.5
    per_label = [list(np.flatnonzero(positive[:, j])) for j in range(targets.shape[1])]
    per_label.append(list(np.flatnonzero(~positive.any(1))))
    chosen: list[int] = []
    while len(chosen) < count and any(per_label):
        for items in per_label:
            while items and int(items[0]) in chosen:
                items.pop(0)
            if items and len(chosen) < count:
                chosen.append(int(items.pop(0)))
    return chosen


def _attention_figure(ev, targets: np.ndarray, cuts: np.ndarray, samples: int) -> bytes | None:
    idx = _sample_indices(targets, samples)
    if not idx or not has_attention_maps(ev.model):  # a timm model has no attention maps to show
        return None
    classes = ev.meta["classes"]
    images = ev.data.images[idx]
    x = Normalize(ev.meta["mean"], ev.meta["std"], ev.device)(images.to(ev.device))
    logits, rollout, heads = explain(ev.model, x)
    passing = (torch.sigmoid(logits.float()).cpu().numpy() >= cuts)
    shown_heads = min(heads.shape[1], 6)
    cells, captions = [], []
    for n, i in enumerate(idx):
        image = images[n].numpy()
        truth = [classes[j] for j in np.flatnonzero(np.nan_to_num(targets[i]) > 0.5)]
        predicted = [classes[j] for j in np.flatnonzero(passing[n])]
        cells += [image, np.asarray(overlay(image, rollout[n].cpu()))]
        captions += [_short(truth) or "no label", "pred " + (_short(predicted) or "none")]
        for head in range(shown_heads):
            cells.append(np.asarray(overlay(image, heads[n, head].cpu())))
            captions.append(f"head {head + 1}")
    return figures.image_grid(cells, captions, columns=2 + shown_heads)


def _short(names: list[str], width: int = 22) -> str:
    text = ", ".join(names)
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _render(ev, checkpoint, run_dir, metrics: dict, history: list[dict], pngs: dict, mistakes: list[str]) -> str:
    meta, per_label = ev.meta, metrics["per_label"]
    f1s = [v["f1"] for v in per_label.values() if v["support"]]
    summary = [("images", f"{metrics['num_images']:,}"), ("mAP (macro)", _num(metrics["mAP"])),
               ("mAP (micro)", _num(metrics["mAP_micro"])),
               ("F1 at thresholds (macro)", _num(float(np.mean(f1s)) if f1s else None)),
               ("subset accuracy", _num(metrics["subset_accuracy"])), ("Hamming loss", _num(metrics["hamming_loss"]))]
    sections = [h.section(f"{ev.split} split, multi-label", h.cards(summary), "summary")]
    sections.append(run_section(ev.model, meta, run_dir, history, "val_map", "labels"))
    if "learning_curves" in pngs:
        sections.append(h.section("learning curves", fig(pngs, "learning_curves"), "curves"))
    rows = [[name, _num(v["average_precision"]), _num(v["roc_auc"]), f"{v['threshold']:.3f}", _num(v["precision"]),
             _num(v["recall"]), _num(v["f1"]), v["support"], v["uncertain"]] for name, v in per_label.items()]
    body = h.table(["label", "average precision", "ROC AUC", "threshold", "precision", "recall", "F1", "support",
                    "uncertain"], rows)
    body += "".join(f"<p class=\"muted\">{h.esc(note)}</p>" for note in metrics["notes"])
    body += ("<p class=\"muted\">Precision, recall and F1 at each label's threshold: chosen on the validation split "
             "when the model was trained" + ("" if meta.get("thresholds") else " (none kept: 0.5)") + ".</p>")
    sections.append(h.section("per-label metrics", body, "metrics"))
    sections.append(h.section("ROC and precision-recall", fig(pngs, "curves"), "roc"))
    sections.append(h.section("label co-occurrence", fig(pngs, "cooccurrence"), "cooccurrence"))
    sections.append(h.section("thresholds", fig(pngs, "thresholds"), "thresholds"))
    if mistakes:
        sections.append(h.section("most confident mistakes per label", "".join(fig(pngs, m) for m in mistakes),
                                  "mistakes"))
    return finish_page(ev, checkpoint, pngs, sections, f"vitkit report: {meta['model']} (multi-label)")
