"""The run directory's files, written by rank 0 alone and always whole (atomic writes): the config and split
manifest at the start, unreadable files, and at every epoch boundary the checkpoints, the resumable state and
`metrics.csv`; with the epoch's one-line summary for the log.

    RUN/config.yaml  split.csv  bad_files.csv  metrics.csv  last.safetensors  best.safetensors  [ema.safetensors]
        state.pt (everything a resume needs; the epoch counts as done once this exists)
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
from pathlib import Path

import torch

from ..config import Config, save_config
from ..data import write_manifest
from ..data.splits import MANIFEST
from ..errors import Interrupted
from ..fileio import atomic_write
from ..runs import write_status
from . import dist
from .checkpoint import EMA_FILE, MODEL_FILE, STATE_FILE, save_model, save_state

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "val_top1_ema", "lr",
                  "seconds", "img_per_s"]
# multi-label runs: validation mAP instead of top-k, train_acc is the share of labels right (1 - Hamming loss)
MULTI_LABEL_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_map", "val_map_ema", "lr", "seconds",
                       "img_per_s"]


class RunWriter:
    """Writes one run directory; every method is a no-op outside rank 0."""

    def __init__(self, run_dir: Path, meta: dict):
        self.run_dir, self.meta = run_dir, meta  # meta: what every checkpoint records (model, classes, config)

    def start(self, cfg: Config, manifest: list[tuple[str, str, str]]) -> None:
        if dist.is_main():
            self.config(cfg)
            write_manifest(self.run_dir / MANIFEST, manifest)

    def config(self, cfg: Config) -> None:
        if dist.is_main():
            atomic_write(self.run_dir / "config.yaml", save_config(cfg))

    def bad_files(self, rows: list[tuple[str, str]]) -> Path:
        path = self.run_dir / "bad_files.csv"
        if dist.is_main():
            buffer = io.StringIO()
            csv.writer(buffer).writerows([("path", "reason"), *rows])
            atomic_write(path, buffer.getvalue())
        return path

    def epoch(self, row: dict, model: torch.nn.Module, ema: torch.nn.Module | None, improved: bool, has_val: bool,
              state: dict, history: list[dict], score: str = "val_top1",
              thresholds: dict[str, list[float]] | None = None) -> None:
        """The checkpoints of an epoch, then its state (which makes the epoch count as done), then the metrics.
        `score`: what selects the best model (val_top1, or multi-label val_map); `thresholds`: multi-label, each
        label's threshold chosen on validation for the raw and the averaged weights, kept in their checkpoints."""
        if not dist.is_main():
            return
        thresholds = thresholds or {}
        meta = {**self.meta, "epoch": row["epoch"], score: row[score], "weights": "raw",
                **({"thresholds": thresholds["raw"]} if "raw" in thresholds else {})}
        # Without validation the average is preferred: at the end of a decaying schedule it is the steadier model.
        ema_better = ema is not None and (not has_val or row[f"{score}_ema"] > row[score])
        best = [self.run_dir / MODEL_FILE["best"]]
        save_model([self.run_dir / MODEL_FILE["last"]] + (best if improved and not ema_better else []), model, meta)
        if ema is not None:
            ema_meta = {**meta, score: row[f"{score}_ema"], "weights": "ema",
                        **({"thresholds": thresholds["ema"]} if "ema" in thresholds else {})}
            save_model([self.run_dir / EMA_FILE] + (best if improved and ema_better else []), ema, ema_meta)
        self.state(state)
        write_metrics(self.run_dir / "metrics.csv", history)

    def state(self, state: dict) -> None:
        if dist.is_main():
            save_state(self.run_dir / STATE_FILE, state)

    def status(self, status: str, error: str | None = None) -> None:
        if dist.is_main():
            write_status(self.run_dir, status, error)

    @contextlib.contextmanager
    def running(self):
        """Training inside: status.json says running, then finished, interrupted (a signal) or failed (an error)."""
        self.status("running")
        try:
            yield
        except (KeyboardInterrupt, Interrupted):
            self.status("interrupted")
            raise
        except BaseException as err:
            self.status("failed", f"{type(err).__name__}: {err}"[:500])
            raise
        self.status("finished")


def epoch_summary(row: dict, epochs: int, has_val: bool, with_ema: bool, improved: bool,
                  next_validation: int | None = None) -> str:
    """The log line of one epoch; `next_validation`: this epoch had no validation pass, the next is then."""
    if next_validation is not None:
        val = f"validation next at epoch {next_validation}"
    elif has_val and "val_map" in row:
        ema = f" (EMA {row['val_map_ema']:.4f})" if with_ema else ""
        val = f"val loss {row['val_loss']:.4f} mAP {row['val_map']:.4f}{ema}"
    elif has_val:
        ema = f" (EMA {row['val_top1_ema']:.4f})" if with_ema else ""
        val = f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.4f}{ema} top-5 {row['val_top5']:.4f}"
    else:
        val = "no validation split"
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | {val} | "
            f"{row['seconds']:.1f}s, {row['img_per_s']:.0f} img/s{'  *best*' if improved and has_val else ''}")


def write_metrics(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    columns = MULTI_LABEL_COLUMNS if history and "val_map" in history[0] else METRIC_COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue())
