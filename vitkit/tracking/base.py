"""The tracker interface, the fan-out the trainer talks to, and `open_trackers` (which trackers, with which ids)."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import Interrupted
from ..fileio import atomic_write

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"  # in the run directory: each tracker's run id, for a resume
FLUSH_EVERY_S = 10.0  # buffered step metrics are written this often (and at every epoch's end)
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}  # ours -> MLflow's words


@dataclass(frozen=True)
class RunOutputs:
    """What a finished run hands the trackers: its directory (checkpoints, report/, report.html, split.csv), the
    best checkpoint, a few images as the model takes them (uint8 N, C, H, W: MLflow's input example) and a name
    for the registered model."""
    run_dir: Path
    checkpoint: Path
    example: np.ndarray | None
    model_name: str

    def figures(self) -> list[Path]:
        return sorted((self.run_dir / "report").glob("*.png"))

    def artifacts(self) -> list[Path]:
        names = [self.checkpoint.name, "report.html", "split.csv", "metrics.csv", "config.yaml", "bad_files.csv"]
        return [self.run_dir / n for n in names if (self.run_dir / n).is_file()]


class Tracker:
    """One experiment tracker. Its methods may raise; `Trackers` turns a failure into one warning and drops it."""

    name = "tracker"
    continued = False  # set by `open_trackers`: this tracker already logged the run's earlier part

    def ids(self) -> dict:
        """What a resume needs to continue this tracked run (kept in tracking.json)."""
        return {}

    def start(self, params: dict[str, object]) -> None:
        """Once per run part: the flat config and the run's facts (model size, data sizes, machine, versions)."""

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """(global step, {'train/loss': ..., 'train/lr': ..., 'train/img_per_s': ...}) rows, oldest first."""

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        """metrics.csv's columns for `epoch`, which ended at global step `step`."""

    def finish(self, status: str, outputs: RunOutputs | None) -> None:
        """`status`: finished, interrupted or failed; `outputs` only when finished."""


class Trackers:
    """All trackers of a run (none on ranks other than 0): buffers step metrics without waiting for the device, and
    keeps training going when a tracker fails."""

    def __init__(self, trackers: list[Tracker] | None = None, flush_every_s: float = FLUSH_EVERY_S):
        self.trackers = list(trackers or [])
        self.flush_every_s = flush_every_s
        self.pending: list[tuple[int, object, int, float, float]] = []  # step, loss sum (a tensor), images, lr, s
        self.last_time = self.last_flush = self.began = time.perf_counter()
        self.finished = False
        self.seconds = 0.0  # spent in the trackers on the training thread (what logging costs the run)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # a tracker's own failure (server gone, disk full) must not stop training
                log.warning("%s stopped working (%s: %s); training goes on without it", tracker.name,
                            type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "")
                self.trackers.remove(tracker)

    def save_ids(self, run_dir: Path) -> None:
        ids = {t.name: t.ids() for t in self.trackers if t.ids()}
        if ids:
            atomic_write(run_dir / TRACKING_FILE, json.dumps({**read_ids(run_dir), **ids}, indent=2) + "\n")

    def start(self, params: dict[str, object], history: list[dict] | None = None, steps_per_epoch: int = 0) -> None:
        """The run's parameters; and for a tracker added when the run was resumed, the epochs it missed."""
        self.began = time.perf_counter()
        self._each("start", params)
        for tracker in [t for t in self.trackers if not t.continued]:
            for row in history or []:
                values = finite({k: v for k, v in row.items() if k != "epoch"})
                try:
                    tracker.log_epoch(int(row["epoch"]), int(row["epoch"]) * steps_per_epoch, values)
                except Exception as err:
                    log.warning("%s could not log the earlier epochs (%s)", tracker.name, err)
                    break

    def begin_epoch(self) -> None:
        self.last_time = time.perf_counter()

    def step(self, step: int, loss_sum, images: int, lr: float) -> None:
        """After global step `step` (1-based): the step's summed loss as the device holds it (read later, in one
        transfer, so that logging never waits for the device), its images and learning rate."""
        if not self.trackers:
            return
        now = time.perf_counter()
        self.pending.append((step, loss_sum, images, lr, now - self.last_time))
        if now - self.last_flush >= self.flush_every_s:
            self.flush()
        self.last_time = time.perf_counter()
        self.seconds += self.last_time - now

    def flush(self) -> None:
        self.last_flush = time.perf_counter()
        if not self.pending or not self.trackers:
            self.pending = []
            return
        import torch  # the losses are device tensors

        try:
            losses = torch.stack([p[1].detach().float().reshape(()) for p in self.pending]).cpu().tolist()
        except Exception as err:  # a device that failed (the error that ends the run): these steps are not logged
            log.debug("the last %d steps' losses cannot be read (%s)", len(self.pending), err)
            self.pending = []
            return
        rows = [(step, {"train/loss": loss / max(images, 1), "train/lr": lr,
                        "train/img_per_s": images / max(seconds, 1e-9)})
                for (step, _, images, lr, seconds), loss in zip(self.pending, losses)]
        self.pending = []
        self._each("log_steps", [(s, finite(v)) for s, v in rows])

    def epoch(self, row: dict, step: int) -> None:
        if not self.trackers:
            return
        start = time.perf_counter()
        self.flush()
        values = finite({k: v for k, v in row.items() if k != "epoch"})
        self._each("log_epoch", int(row["epoch"]), step, values)
        self.seconds += time.perf_counter() - start

    def finish(self, status: str, outputs: RunOutputs | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if self.trackers:
            log.info("tracking took %.1f s of the %.0f s since training began (%.2f%%), before the final uploads",
                     self.seconds, time.perf_counter() - self.began,
                     100 * self.seconds / max(time.perf_counter() - self.began, 1e-9))
        self.flush()  # the steps done before a signal count: a resume continues after them
        self._each("finish", status, outputs)

    @contextlib.contextmanager
    def session(self):
        """Inside: the run. A signal ends the tracked runs as killed, an error as failed; a normal end leaves them
        to `finish('finished', outputs)`."""
        try:
            yield self
        except (KeyboardInterrupt, Interrupted):
            self.finish("interrupted")
            raise
        except BaseException:
            self.finish("failed")
            raise
        self.finish("finished")  # when the caller had nothing to hand over


def finite(values: dict) -> dict[str, float]:
    """The numbers worth logging: no NaN (no validation, no EMA), no None."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


def read_ids(run_dir: Path) -> dict:
    try:
        value = json.loads((Path(run_dir) / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def experiment_name(cfg: Config) -> str:
    """The dataset: a named one's name, or the image folder's name (how a run directory's name begins)."""
    return Path(cfg.data.source.rstrip("/")).name or "data"
