"""`vitkit report`: a run's or a checkpoint's report.html and the same figures as PNG files.

The report evaluates the checkpoint on one split (the run's validation split after training; test or val when asked
later), and draws learning curves, confusion matrices, ROC and precision-recall curves, calibration, the most
confused class pairs with their images, and attention maps of sample images.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..data import BadImage, Normalize
from ..engine.checkpoint import MODEL_FILE, load_model
from ..engine.evaluate import Evaluation, prepare_evaluation
from ..errors import UserError
from ..fileio import atomic_write
from ..metrics import calibration, classification_report, confused_pairs
from ..models import has_attention_maps
from ..runs import read_history
from . import figures
from . import html as h
from .attention import explain, overlay
from .common import FIGURE_DIR, REPORT_FILE, fig, finish_page, run_section
from .multilabel import build_multilabel_report

log = logging.getLogger(__name__)


def resolve_target(target: str | Path) -> tuple[Path, Path | None]:
    """A run directory or a checkpoint file to (checkpoint, run directory or None)."""
    path = Path(target)
    if path.is_dir():
        checkpoint = path / MODEL_FILE["best"]
        if not checkpoint.is_file():
            raise UserError(f"{path} holds no {MODEL_FILE['best']}: give a run directory written by 'vitkit train' "
                            "or a checkpoint file")
        return checkpoint, path
    if path.is_file():
        return path, path.parent if (path.parent / "metrics.csv").is_file() else None
    raise UserError(f"{path} not found: give a run directory or a .safetensors checkpoint")


def build_report(target: str | Path, data: str | None = None, split: str | None = None,
                 out_dir: str | Path | None = None, data_root: str | None = None, device: str = "auto",
                 precision: str = "auto", samples: int = 8, evaluation: Evaluation | None = None) -> Path:
    """Write report.html (and report/*.png, with the numbers behind them in report/metrics.json) for a run
    directory or checkpoint; returns the HTML file's path."""
    checkpoint, run_dir = resolve_target(target)
    ev = evaluation or prepare_evaluation(checkpoint, data, split, data_root, device, precision)
    out = Path(out_dir) if out_dir else (run_dir or checkpoint.parent)
    if ev.meta.get("task") == "multi-label":
        return build_multilabel_report(ev, checkpoint, run_dir, out, samples)
    classes = ev.meta["classes"]
    logits = ev.logits()
    labels = ev.data.labels.numpy()
    probs = logits.softmax(dim=1).numpy()
    metrics = classification_report(logits, ev.data.labels, classes)
    calib = calibration(probs, labels)
    history = read_history(run_dir)

    pngs: dict[str, tuple[bytes, str]] = {}
    if history:
        pngs["learning_curves"] = (figures.learning_curves(history), "loss, top-1 and learning rate per epoch")
    cm = np.asarray(metrics["confusion_matrix"])
    pngs["confusion_counts"] = (figures.confusion_matrix(cm, classes, False), "confusion matrix (counts)")
    pngs["confusion_normalized"] = (figures.confusion_matrix(cm, classes, True),
                                    "confusion matrix (each row: share of the true class)")
    roc_png, areas = figures.roc_pr_curves(probs, labels, classes)
    pngs["roc_pr"] = (roc_png, "ROC and precision-recall curves, one-vs-rest")
    pngs["reliability"] = (figures.reliability_diagram(calib["bins"], calib["ece"]),
                           f"reliability diagram; expected calibration error {calib['ece']:.4f}")
    pairs = confused_pairs(metrics["confusion_matrix"], classes)
    for n, pair in enumerate(pairs, 1):
        pngs[f"confused_{n}"] = (_gallery(ev, probs, labels, pair), f"true {pair['true']}, predicted "
                                 f"{pair['predicted']}: {pair['count']} images (most confident mistakes first)")
    attention = _attention_figure(ev, labels, samples)
    if attention is not None:
        pngs["attention"] = (attention, "per sample: the image, attention rollout over all layers, and the last "
                                        "layer's class-token attention of each head")

    figure_dir = out / FIGURE_DIR
    for name, (png, _) in pngs.items():
        atomic_write(figure_dir / f"{name}.png", png)
    numbers = {"split": ev.split, **metrics, "calibration": calib, "curves": areas}  # the figures' numbers
    atomic_write(figure_dir / "metrics.json", json.dumps(numbers, indent=2, default=float) + "\n")
    html_path = out / REPORT_FILE
    atomic_write(html_path, _render(ev, checkpoint, run_dir, metrics, calib, areas, pairs, history, pngs))
    return html_path


def _gallery(ev: Evaluation, probs: np.ndarray, labels: np.ndarray, pair: dict, limit: int = 8) -> bytes:
    predicted = probs.argmax(axis=1)
    idx = np.flatnonzero((labels == pair["true_index"]) & (predicted == pair["predicted_index"]))
    idx = idx[np.argsort(-probs[idx, pair["predicted_index"]])][:limit]
    images = [ev.data.images[i].numpy() for i in idx]
    captions = [f"{probs[i, pair['predicted_index']]:.0%} {pair['predicted'][:12]}" for i in idx]
    return figures.image_grid(images, captions, columns=limit)


def _sample_indices(labels: np.ndarray, count: int) -> list[int]:
    """Up to `count` images, taking each class's first image in turn."""
    per_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count and any(per_class):
        for items in per_class:
            if items and len(chosen) < count:
                chosen.append(int(items.pop(0)))
    return chosen


def _attention_figure(ev: Evaluation, labels: np.ndarray, samples: int) -> bytes | None:
    idx = _sample_indices(labels, samples)
    if not idx or not has_attention_maps(ev.model):  # a timm model has no attention maps to show
        return None
    images = ev.data.images[idx]
    x = Normalize(ev.meta["mean"], ev.meta["std"], ev.device)(images.to(ev.device))
    logits, rollout, heads = explain(ev.model, x)
    probs = logits.softmax(dim=1).cpu()
    shown_heads = min(heads.shape[1], 6)
    cells, captions = [], []
    classes = ev.meta["classes"]
    for n, i in enumerate(idx):
        image = images[n].numpy()
        p, c = probs[n].max(dim=0)
        cells += [image, np.asarray(overlay(image, rollout[n].cpu()))]
        captions += [f"{classes[labels[i]][:14]}", f"pred {classes[int(c)][:10]} {float(p):.0%}"]
        for head in range(shown_heads):
            cells.append(np.asarray(overlay(image, heads[n, head].cpu())))
            captions.append(f"head {head + 1}")
    return figures.image_grid(cells, captions, columns=2 + shown_heads)


def _render(ev, checkpoint, run_dir, metrics, calib, areas, pairs, history, pngs) -> str:
    meta = ev.meta
    model = ev.model
    summary = [("images", f"{metrics['num_images']:,}"), ("top-1", f"{metrics['top1']:.4f}"),
               ("top-5", f"{metrics['top5']:.4f}"), ("loss", f"{metrics['loss']:.4f}"), ("MCC", f"{metrics['mcc']:.4f}"),
               ("ECE", f"{calib['ece']:.4f}")]
    if "roc_auc_ovr_macro" in metrics:
        summary.append(("macro ROC AUC", f"{metrics['roc_auc_ovr_macro']:.4f}"))
    sections = [h.section(f"{ev.split} split", h.cards(summary), "summary")]

    sections.append(run_section(model, meta, run_dir, history))
    if "learning_curves" in pngs:
        sections.append(h.section("learning curves", fig(pngs, "learning_curves"), "curves"))

    rows = [[r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
            for r in metrics["per_class"]]
    rows += [[f"{avg} avg", f"{metrics[avg]['precision']:.4f}", f"{metrics[avg]['recall']:.4f}",
              f"{metrics[avg]['f1']:.4f}", metrics["num_images"]] for avg in ("macro", "weighted")]
    body = h.table(["class", "precision", "recall", "F1", "support"], rows, avg_rows=2)
    if "binary" in metrics:
        b = metrics["binary"]
        body += f"<p>positive class <b>{h.esc(b['positive_class'])}</b></p>" + h.cards(
            [(k, f"{b[k]:.4f}") for k in ("sensitivity", "specificity", "precision", "f1", "mcc", "roc_auc")])
    sections.append(h.section("per-class metrics", body, "metrics"))
    sections.append(h.section("confusion matrix", '<div class="grid2">' + fig(pngs, "confusion_counts")
                              + fig(pngs, "confusion_normalized") + "</div>", "confusion"))
    sections.append(h.section("ROC and precision-recall", fig(pngs, "roc_pr"), "roc"))
    sections.append(h.section("calibration", fig(pngs, "reliability") + "<p class=\"muted\">Expected calibration "
                              "error: the average gap between confidence and accuracy, weighted by how many images "
                              "fall in each confidence bin (15 bins).</p>", "calibration"))
    if pairs:
        sections.append(h.section("most confused pairs", "".join(fig(pngs, f"confused_{n}")
                                                                 for n in range(1, len(pairs) + 1)), "confused"))
    return finish_page(ev, checkpoint, pngs, sections, f"vitkit report: {meta['model']}")


@torch.inference_mode()
def explain_files(clf, paths: list, out_dir: str | Path, top_k: int = 5) -> list[Path]:
    """`predict --explain`: for each readable image, a PNG with the image, its attention overlay and its top-k
    (`clf`: the `Classifier` that predicted them)."""
    out_dir = Path(out_dir)
    written = []
    normalize = Normalize(clf.meta["mean"], clf.meta["std"], clf.device)
    used: Counter = Counter()
    for path in paths:
        try:
            image = clf.preprocess(path)
        except BadImage as err:  # predict's own table reports it; there is nothing to draw
            log.debug("no explanation for %s: %s", path, err)
            continue
        x = normalize(torch.from_numpy(image)[None].to(clf.device))
        logits, rollout, _ = explain(clf.model, x)
        probs = (logits.float().sigmoid() if clf.multi_label else logits.float().softmax(dim=1))[0].cpu()
        values, indices = probs.topk(min(top_k, len(clf.classes)))
        top = [(clf.classes[int(i)], float(v)) for v, i in zip(values, indices)]
        stem = Path(path).stem
        used[stem] += 1
        name = f"{stem}.png" if used[stem] == 1 else f"{stem}-{used[stem]}.png"
        png = figures.prediction_panel(image, np.asarray(overlay(image, rollout[0].cpu())), top, str(path))
        atomic_write(out_dir / name, png)
        written.append(out_dir / name)
    return written


def training_report(run_dir: Path, data, device: torch.device, amp_dtype) -> None:
    """report.html of a finished run's best model on its validation split, from the images already in memory (the
    hook `vitkit.train` gives the engine). A failure is a warning: the run itself is saved."""
    val = data.splits.get("val")
    if not (run_dir / MODEL_FILE["best"]).is_file():
        return
    if val is None or len(val) == 0:
        log.info("no report: there is no validation split; 'vitkit report %s [DATA]' writes one on the test split",
                 run_dir)
        return
    model, meta = load_model(run_dir / MODEL_FILE["best"], device)
    evaluation = Evaluation(model, meta, device, amp_dtype, data.source, "val", val, data.bad_files)
    try:
        path = build_report(run_dir, evaluation=evaluation)
    except (OSError, ValueError, RuntimeError) as err:
        log.warning("could not write the report (%s: %s); try: vitkit report %s", type(err).__name__, err, run_dir)
        return
    log.info("report: %s", path)
