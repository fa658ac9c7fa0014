"""Weights & Biases: one W&B run per vitkit run (project: the dataset, or $WANDB_PROJECT; name: the run
directory's), resumed under the same id. Online when `wandb login` was done (or WANDB_API_KEY is set);
`WANDB_MODE=offline` writes RUN/wandb/ without a network, for `wandb sync` later. Step metrics at the global step;
epoch metrics as epoch/NAME against the `epoch` axis."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..optional import require
from .base import RunOutputs, Tracker, experiment_name

log = logging.getLogger(__name__)

EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 143}  # what W&B records as the run's end


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, project: str, run_name: str, run_dir: Path, run_id: str | None):
        wandb = require("wandb", "track")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE", "online")
        if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _logged_in(wandb)):
            raise UserError("W&B is not logged in: run 'wandb login', set WANDB_API_KEY, or log offline with "
                            "WANDB_MODE=offline (upload later with 'wandb sync')")
        self.run_id = run_id or secrets.token_hex(4)  # W&B's ids: short, lowercase, alphanumeric
        try:
            self.run = wandb.init(project=project, name=run_name, id=self.run_id, resume="allow", dir=str(run_dir),
                                  reinit="create_new")
        except Exception as err:  # wandb's errors: no network, a refused key, a bad project name
            first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise UserError(f"W&B cannot start a run ({first}): check 'wandb login' and the network, set "
                            "WANDB_MODE=offline, or pass --log-optional to train without it") from None
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.last_step = 0

    def ids(self) -> dict:
        return {"run_id": self.run_id}

    def start(self, params: dict[str, object]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, values in rows:
            self.run.log(values, step=step)
            self.last_step = step

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        step = max(step, self.last_step)  # W&B's steps only go forward
        self.run.log({"epoch": epoch, **{f"epoch/{k}": v for k, v in row.items()}}, step=step)
        self.last_step = step

    def finish(self, status: str, outputs: RunOutputs | None) -> None:
        try:
            if outputs is not None:
                figures = {f"report/{p.stem}": self.wandb.Image(str(p)) for p in outputs.figures()}
                if figures:  # one step after the last, which W&B may have committed already
                    self.run.log(figures, step=self.last_step + 1)
        finally:
            self.run.finish(exit_code=EXIT_CODES[status])


def _logged_in(wandb) -> bool:
    """Whether W&B has a key here, asked without a prompt and without the network."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # wandb's errors for a broken settings file
        return False


def open_wandb(cfg: Config, run_dir: Path, ids: dict) -> WandbTracker:
    project = os.environ.get("WANDB_PROJECT") or experiment_name(cfg)
    return WandbTracker(project, run_dir.name, run_dir, ids.get("run_id"))
