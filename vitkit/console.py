"""What the CLI prints: reports, data checks and benchmarks as rich tables on standard output; log format."""
from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Piped output keeps whole table rows rather than wrapping them at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def shown(text) -> str:
    """A name (a file, a class) as a table cell: Rich markup in it is text (`bad[/red].jpg`), and the bytes of a
    name that is not UTF-8 on disk (`caf\\xe9.jpg`) show as U+FFFD instead of failing the write."""
    return escape(str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def print_report(report: dict) -> None:
    out.print(f"[bold]{shown(report['data'])}[/bold] {report['split']} split, {report['num_images']} images: "
              f"top-1 [bold]{report['top1']:.4f}[/bold]  top-5 {report['top5']:.4f}  loss {report['loss']:.4f}  "
              f"MCC {report['mcc']:.4f}" + (f"  macro ROC AUC {report['roc_auc_ovr_macro']:.4f}"
                                           if "roc_auc_ovr_macro" in report else ""))
    table = Table("class", "precision", "recall", "F1", "support", title="per class")
    for row in report["per_class"]:
        table.add_row(shown(row["class"]), f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                      str(row["support"]))
    for avg in ("macro", "weighted"):
        r = report[avg]
        table.add_row(f"[italic]{avg} avg[/italic]", f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}",
                      str(report["num_images"]))
    out.print(table)
    classes = [r["class"] for r in report["per_class"]]
    if len(classes) <= 20:
        cm = Table("true \\ predicted", *[shown(c[:10]) for c in classes], title="confusion matrix")
        for name, row in zip(classes, report["confusion_matrix"]):
            cm.add_row(shown(name), *[str(v) for v in row])
        out.print(cm)
    if "binary" in report:
        b = report["binary"]
        out.print(f"positive class {b['positive_class']!r}: sensitivity {b['sensitivity']:.4f}  specificity "
                  f"{b['specificity']:.4f}  precision {b['precision']:.4f}  F1 {b['f1']:.4f}  MCC {b['mcc']:.4f}  "
                  f"ROC AUC {b['roc_auc']:.4f}", markup=False)


def print_multilabel_report(report: dict) -> None:
    def num(v):
        return "-" if v is None else f"{v:.4f}"

    out.print(f"[bold]{shown(report['data'])}[/bold] {report['split']} split, {report['num_images']} images: "
              f"mAP [bold]{num(report['mAP'])}[/bold]  micro mAP {num(report['mAP_micro'])}  subset accuracy "
              f"{num(report['subset_accuracy'])}  Hamming loss {num(report['hamming_loss'])}")
    table = Table("label", "AP", "ROC AUC", "threshold", "precision", "recall", "F1", "support",
                  title="per label (at its threshold)")
    for name, r in report["per_label"].items():
        table.add_row(shown(name), num(r["average_precision"]), num(r["roc_auc"]), f"{r['threshold']:.3f}",
                      num(r["precision"]), num(r["recall"]), num(r["f1"]), str(r["support"]))
    out.print(table)
    for note in report["notes"]:
        out.print(f"note: {note}", markup=False)


def print_probe(result: dict) -> None:
    out.print(f"[bold]{shown(result['source'])}[/bold] ({shown(result['model'])}, {result['feature_dim']}-d features at "
              f"{result['img_size']} px) on [bold]{shown(result['data'])}[/bold]: fitted on {result['train_images']} "
              f"training images, scored on the {result['split']} split's {result['eval_images']}")
    how = "read from the cache" if result["features_cached"] else f"computed in {result['feature_seconds']:.1f} s"
    out.print(f"features {how}", markup=False)
    probes = result["probes"]
    names = {k: (f"k-NN, k={k[3:]}" if k.startswith("knn") else "logistic regression") for k in probes}
    summary = Table("probe", "top-1", "top-5", "macro F1", "MCC", "seconds", title="frozen-feature probes")
    for key, r in probes.items():
        summary.add_row(names[key], f"{r['top1']:.4f}", f"{r['top5']:.4f}", f"{r['macro_f1']:.4f}", f"{r['mcc']:.4f}",
                        f"{r['seconds']:.2f}")
    out.print(summary)
    table = Table("class", *[f"F1 {names[k]}" for k in probes], "support", title="per class")
    for i, name in enumerate(result["classes"]):
        table.add_row(shown(name), *[f"{r['per_class'][i]['f1']:.4f}" for r in probes.values()],
                      str(next(iter(probes.values()))["per_class"][i]["support"]))
    out.print(table)


def print_check(report, limit: int) -> None:
    out.print(f"[bold]{shown(report.source)}[/bold]: {shown(report.layout)}")
    usable = report.files - report.unusable
    summary = f"{report.files} files, {usable} usable, {report.unusable} unusable"
    if report.modes:
        summary += "; modes " + ", ".join(f"{m} {n}" for m, n in report.modes.items())
    if report.formats:
        summary += "; formats " + ", ".join(f"{m} {n}" for m, n in report.formats.items())
    if report.imbalance_ratio:
        summary += f"; imbalance {report.imbalance_ratio:g}:1"
    out.print(summary, markup=False)
    if report.counts:
        splits = list(report.counts)
        table = Table("class", *splits, "total", title="usable images")
        for cls in report.classes:
            row = [report.counts[s].get(cls, 0) for s in splits]
            table.add_row(shown(cls), *map(str, row), str(sum(row)))
        out.print(table)
    colors = {"error": "red", "warning": "yellow", "info": "cyan"}
    listed = report.findings if limit == 0 else report.findings[:limit]
    if listed:
        table = Table("severity", "problem", "file", "detail", title="findings")
        for f in listed:
            table.add_row(f"[{colors[f.severity]}]{f.severity}[/]", f.kind, shown(f.path), shown(f.detail))
        out.print(table)
    if len(listed) < len(report.findings):
        out.print(f"... {len(report.findings) - len(listed)} more findings: --limit 0 shows all, --json lists them")
    for note in report.notes:
        out.print(f"note: {shown(note)}")
    counts = Counter(f.severity for f in report.findings)
    tally = f"{counts['warning']} warning(s), {counts['info']} note(s)"
    if report.ok:
        out.print(f"[green]ok[/green]: training can proceed ({tally})")
    else:
        for reason in report.blocking:
            out.print(f"[red]cannot train[/red]: {shown(reason)}")


def print_json(data) -> None:
    """JSON for scripts on standard output, raw: a console would wrap long lines inside JSON strings. UTF-8, unless a
    file name that is not UTF-8 on disk is in it: then all ASCII, its bytes as \\udcXX escapes that
    `os.fsencode(json.loads(...))` turns back into the name."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=2)
    sys.stdout.write(text + "\n")


def duration(seconds: float) -> str:
    """'41s', '12m47s', '1h02m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_predictions(results: list, fmt: str, columns: int, thresholds: dict[str, float] | None = None) -> None:
    """`vitkit predict`'s answer: a table of the top-k per file, or JSON / CSV for scripts (raw, never wrapped).
    `thresholds` (multi-label models, label -> threshold): the table adds the labels that pass, the CSV each row's
    threshold and whether it passes."""
    import csv

    multi = thresholds is not None
    if fmt == "json":
        print_json([r.to_dict() for r in results])
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "rank", "class", "probability", *(["threshold", "passes"] if multi else []), "error"])
        for r in results:
            passing = {c for c, _, _ in r.labels or []}
            for rank, (c, p) in enumerate(r.top or [], 1):
                extra = [f"{thresholds[c]:.6f}", "yes" if c in passing else "no"] if multi else []
                writer.writerow([r.source, rank, c, f"{p:.6f}", *extra, ""])
            if r.top is None:
                writer.writerow([r.source, "", "", "", *(["", ""] if multi else []), r.error])
        sys.stdout.flush()  # a file name that is not UTF-8 goes out as the bytes it is on disk
        sys.stdout.buffer.write(buffer.getvalue().encode("utf-8", "surrogateescape"))
        sys.stdout.buffer.flush()
    else:
        table = Table("file", *(["labels (at their thresholds)"] if multi else []),
                      *[f"top-{i + 1}" for i in range(columns)])
        for r in results:
            if r.top is None:
                table.add_row(shown(r.source), f"[red]unreadable: {shown(r.error)}[/red]")
                continue
            passing = [", ".join(shown(f"{c} {p:.1%}") for c, p, _ in r.labels) or "[dim]none[/dim]"] if multi else []
            table.add_row(shown(r.source), *passing, *[shown(f"{c} {p:.1%}") for c, p in r.top[:columns]])
        out.print(table)


def print_runs(runs: list, skipped: list[str], folder) -> None:
    """`vitkit runs`: one row per run."""
    colors = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}
    table = Table("run", "model", "data", "epochs", "best val", "test", "time", "status", "started")
    for r in runs:
        status = f"[{colors[r.status]}]{r.status}[/]" + (f" ({shown(r.error)})" if r.error else "")
        table.add_row(shown(r.name), shown(r.model), shown(r.data), f"{r.epochs}/{r.planned}",
                      "-" if r.best_val != r.best_val else f"{r.best_val:.4f}",
                      "-" if r.test is None else f"{r.test:.4f}", duration(r.seconds), status,
                      r.started.replace("T", " "))
    out.print(table if runs else f"no vitkit runs in {shown(str(folder))}")
    if skipped:
        out.print(f"not vitkit runs (no config.yaml), skipped: {shown(', '.join(skipped))}")


def print_models(rows: list) -> None:
    """`vitkit models`: (name, parameters, FLOPs, spec, timm's default pretrained weights or None) per model."""
    table = Table("model", "family", "params", "GFLOPs", "image", "patch", "pretrained (--init)", "description")
    for name, params, flops, spec, weights in rows:
        table.add_row(name, spec.family, f"{params / 1e6:.2f}M", f"{flops / 1e9:.3f}", f"{spec.kwargs['img_size']}",
                      str(spec.kwargs["patch_size"]), weights or "-", spec.description)
    out.print(table)


def print_bench(result: dict) -> None:
    """`vitkit bench`'s answer as a table and the speed-ups."""
    master = result.get("bf16_weights") and any(r["mode"] == "train" for r in result["results"])
    timm = {r["gflop_per_image"] for r in result["results"] if r["implementation"] == "timm"}
    flops = f"{result['gflop_per_image_forward']} GFLOPs/image" + (f", timm's {timm.pop()}" if timm else "")
    out.print(f"{result['model']} ({flops}), batch {result['batch_size']}, "
              f"{result['precision']}, {result['device']}, torch {result['torch']}"
              f"{', compiled' if result['compile'] else ''}", markup=False)
    if master:
        out.print("vitkit's training step: a bf16 copy of the weights, fp32 master weights (as vitkit train here)",
                  markup=False)
    if result.get("malloc"):
        out.print(f"malloc, for both implementations: {result['malloc']}" + (
            " (glibc thresholds raised; VITKIT_MALLOC=default to leave them)" if result["malloc"] == "tuned" else ""),
            markup=False)
    before, after = result["matmul_tflop_per_s_runs"]
    out.print(f"measured {result['precision']} matmul rate: {result['matmul_tflop_per_s']:.3f} TFLOP/s (before the "
              f"runs {before:.3f}, after {after:.3f}; MFU uses the higher)", markup=False)
    table = Table("mode", "implementation", "img/s", "ms/batch", "peak MiB", "TFLOP/s", "MFU")
    for r in result["results"]:
        table.add_row(r["mode"], r["implementation"], f"{r['img_per_s']:,.1f}", f"{r['ms_per_batch']:.1f}",
                      f"{r['peak_mem_mib']:,.0f}", f"{r['tflop_per_s']:.3f}", f"{r['mfu']:.1%}")
    out.print(table)
    for mode, ratio in result.get("speedup_vs_timm", {}).items():
        out.print(f"{mode}: vitkit/timm = {ratio:.2f}x (medians of {result['repeats']} alternating runs)")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return prefix + record.getMessage()


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("vitkit")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all; the others only warn
        root.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(f"[rank {os.environ['RANK']}] %(levelname)s: %(message)s"))
    root.propagate = False
