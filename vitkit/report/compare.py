"""`vitkit runs compare RUN...`: one self-contained page (compare.html) with the runs' curves overlaid, their
configs side by side with the differences first and highlighted, and their final metrics; the figures also as PNGs
(compare/*.png) for slides and notes."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from ..console import duration
from ..errors import UserError
from ..fileio import atomic_write
from ..runs import RunInfo, read_history, read_run
from . import html as h
from .figures import _png, curve

PAGE = "compare.html"
FIGURE_DIR = "compare"
CURVES = {"loss": ("train_loss", "val_loss"), "top1": ("train_acc", "val_top1"), "lr": ("lr",),
          "speed": ("img_per_s",)}
TITLES = {"loss": "loss (dashed: train, solid: val)", "top1": "top-1 accuracy (dashed: train, solid: val)",
          "lr": "learning rate (end of epoch)", "speed": "training images per second"}
DIFF_STYLE = "td.diff{background:#fff4d6;font-weight:600}tr.diff td:first-child{border-left:3px solid #e0a000}"


def load_runs(paths: list[str | Path]) -> list[tuple[RunInfo, list[dict], dict]]:
    """Each run's summary, per-epoch history and flat config; a folder that is not a run is an error."""
    if len(paths) < 2:
        raise UserError("runs compare needs at least two run directories: vitkit runs compare RUN1 RUN2 [...]")
    runs = []
    for path in map(Path, paths):
        info = read_run(path) if path.is_dir() else None
        if info is None:
            raise UserError(f"{path} is not a vitkit run directory (no readable config.yaml): give run directories, "
                            "as 'vitkit runs' lists them")
        runs.append((info, read_history(path), _flat_config(path)))
    return runs


def _flat_config(path: Path) -> dict:
    import yaml

    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def curve_figure(runs, kind: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    for n, (info, history, _) in enumerate(runs):
        color = f"C{n % 10}"
        for column in CURVES[kind]:
            points = curve(history, column)
            if points[0]:
                style = "--" if column.startswith("train") and len(CURVES[kind]) > 1 else "-"
                ax.plot(*points, style, color=color, marker="o", ms=2.5,
                        label=info.name if column == CURVES[kind][-1] else None)
    ax.set(title=TITLES[kind], xlabel="epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if kind == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.legend(fontsize=7)
    return _png(fig)


def _config_table(runs) -> tuple[str, int]:
    """The configs side by side: keys that differ first, highlighted; then the rest, folded."""
    keys = list(dict.fromkeys(k for _, _, cfg in runs for k in cfg))
    differ = [k for k in keys if len({repr(cfg.get(k)) for _, _, cfg in runs}) > 1]
    same = [k for k in keys if k not in differ]
    head = "<tr><th>key</th>" + "".join(f"<th>{h.esc(info.name)}</th>" for info, _, _ in runs) + "</tr>"

    def rows(selected, css):
        return "".join(f'<tr class="{css}"><td>{h.esc(k)}</td>' + "".join(
            f'<td class="{css}">{h.esc(_show(cfg.get(k, "-")))}</td>' for _, _, cfg in runs) + "</tr>"
            for k in selected)

    table = f"<table><thead>{head}</thead><tbody>{rows(differ, 'diff')}</tbody></table>" if differ else \
        "<p>The configs are identical.</p>"
    if same:
        table += (f"<details><summary>{len(same)} settings the runs share</summary><table><thead>{head}</thead>"
                  f"<tbody>{rows(same, 'same')}</tbody></table></details>")
    return table, len(differ)


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    return "null" if value is None else str(value)


def _final_table(runs) -> str:
    rows = []
    for info, history, _ in runs:
        last = history[-1] if history else {}
        # the last epoch with a validation pass (see train.val_every)
        last_val = next((r for r in reversed(history) if math.isfinite(r.get("val_loss", math.nan))), {})
        rows.append([info.name, info.model, info.data, info.status, f"{info.epochs}/{info.planned}",
                     _pct(info.best_val), _pct(info.test), _pct(last_val.get("val_top1")),
                     f"{last_val['val_loss']:.4f}" if "val_loss" in last_val else "-",
                     duration(info.seconds), f"{last['img_per_s']:.0f}" if "img_per_s" in last else "-"])
    return h.table(["run", "model", "data", "status", "epochs", "best val top-1", "test top-1", "last val top-1",
                    "last val loss", "training time", "img/s"], rows)


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}%"


def compare_runs(paths: list[str | Path], out_dir: str | Path) -> Path:
    """Write OUT/compare.html and OUT/compare/*.png for the run directories `paths`; returns the page's path."""
    runs = load_runs(paths)
    out = Path(out_dir)
    pngs = {kind: curve_figure(runs, kind) for kind in CURVES if any(r for _, r, _ in runs)}
    for kind, png in pngs.items():
        atomic_write(out / FIGURE_DIR / f"{kind}.png", png)
    config, differences = _config_table(runs)
    best = max(runs, key=lambda r: -1 if r[0].best_val != r[0].best_val else r[0].best_val)[0]
    summary = h.cards([("runs", str(len(runs))), ("settings that differ", str(differences)),
                       ("best val top-1", f"{_pct(best.best_val)} ({best.name})")])
    figures = "".join(h.figure(png, TITLES[kind], kind) for kind, png in pngs.items())
    sections = [h.section("summary", summary + _final_table(runs), "summary"),
                h.section("curves", f'<div class="grid2">{figures}</div>' if figures else
                          "<p>No epochs finished yet.</p>", "curves"),
                h.section("configs", config, "configs")]
    page = h.page("vitkit: " + " vs ".join(info.name for info, _, _ in runs),
                  ", ".join(str(info.path) for info, _, _ in runs), sections)
    atomic_write(out / PAGE, page.replace("</style>", DIFF_STYLE + "</style>", 1))
    return out / PAGE
