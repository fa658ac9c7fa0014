"""TensorBoard: event files in RUN/tensorboard (`tensorboard --logdir runs/`). Step scalars at the global step
(train/loss, train/lr, train/img_per_s), epoch scalars at the epoch (epoch/val_top1, ...), the config as text and
hyperparameters, the report's figures as images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..config import Config
from ..optional import require
from .base import RunOutputs, Tracker

LOG_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, log_dir: Path):
        require("tensorboard", "track")  # torch's SummaryWriter writes through it
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.last_epoch = 0

    def start(self, params: dict[str, object]) -> None:
        from torch.utils.tensorboard.summary import hparams

        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table)
        values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        for summary in hparams(values, {}):  # the HPARAMS tab, in this run's own event file
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, values in rows:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        for key, value in row.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.last_epoch = epoch
        self.writer.flush()

    def ids(self) -> dict:
        return {"log_dir": LOG_DIR}

    def finish(self, status: str, outputs: RunOutputs | None) -> None:
        try:
            if outputs is not None:
                for png in outputs.figures():
                    with Image.open(png, formats=("PNG",)) as im:
                        pixels = np.asarray(im.convert("RGB"))
                    self.writer.add_image(f"report/{png.stem}", pixels, self.last_epoch, dataformats="HWC")
            self.writer.add_text("status", status, self.last_epoch)
        finally:
            self.writer.close()


def open_tensorboard(cfg: Config, run_dir: Path, ids: dict) -> TensorBoardTracker:
    return TensorBoardTracker(run_dir / LOG_DIR)
