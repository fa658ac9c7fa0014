"""What the single-label and the multi-label report share: the run section and figures placed in the page."""
from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

import yaml

from ..console import duration
from ..data import MANIFEST, read_manifest
from ..models import model_flops, num_params
from ..version import __version__
from . import html as h

REPORT_FILE = "report.html"
FIGURE_DIR = "report"  # beside report.html: each figure as PNG, and metrics.json with the numbers behind them


def split_sizes(run_dir: Path | None) -> dict[str, int]:
    if run_dir is None or not (run_dir / MANIFEST).is_file():
        return {}
    return dict(Counter(split for _, _, split in read_manifest(run_dir / MANIFEST)))


def run_section(model, meta: dict, run_dir: Path | None, history: list[dict], score: str = "val_top1",
                kind: str = "classes") -> str:
    """The model, its size, the split sizes, the epochs (best by `score`) and the configuration."""
    classes = meta["classes"]
    cards = [("model", meta["model"]), ("parameters", f"{num_params(model) / 1e6:.2f}M"),
             ("GFLOPs / image", f"{model_flops(model) / 1e9:.3f}"),
             ("input", f"{meta['img_size']}px x {meta['in_chans']}ch"), (kind, str(len(classes)))]
    cards += [(f"{k} images", f"{v:,}") for k, v in split_sizes(run_dir).items()]
    if history:
        best = max(history, key=lambda r: r.get(score, float("-inf")))
        cards += [("epochs", str(len(history))), ("best epoch", str(best["epoch"])),
                  ("training time", duration(sum(r.get("seconds", 0.0) for r in history)))]
    body = h.cards(cards) + f"<p class=\"muted\">{kind}: {h.esc(', '.join(classes))}</p>"
    if meta.get("config"):
        body += ("<details><summary>configuration</summary><pre>"
                 + h.esc(yaml.safe_dump(meta["config"], sort_keys=False)) + "</pre></details>")
    return h.section("run", body, "run")


def fig(pngs: dict, name: str) -> str:
    png, caption = pngs[name]
    return h.figure(png, caption, name)


def finish_page(ev, checkpoint, pngs: dict, sections: list[str], title: str) -> str:
    """The page of either report: its sections, then the attention maps and the skipped files where there are any."""
    if "attention" in pngs:
        sections.append(h.section("attention maps", fig(pngs, "attention"), "attention"))
    if ev.bad_files:
        sections.append(h.section("skipped files", h.table(["file", "reason"], [list(b) for b in ev.bad_files]),
                                  "skipped"))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return h.page(title, f"{checkpoint} on {ev.source} ({ev.split}), vitkit {__version__}, {when}", sections)
