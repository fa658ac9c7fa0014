"""Experiment trackers beside `metrics.csv`: TensorBoard, MLflow and Weights & Biases (`output.loggers`).

Each tracker is an optional dependency (`pip install 'vitkit[track]'`), opened by rank 0 alone before the data is
read (so a wrong URI fails at once), and fed by the trainer through one `Trackers` object:

    start     the resolved config as hyperparameters; model size and FLOPs, data sizes, machine, versions
    steps     per optimizer step: loss, learning rate, images per second (buffered, written every few seconds)
    epoch     every column of metrics.csv, at the epoch's number
    finish    the report's figures as images; in MLflow the checkpoint, report.html, split.csv and the model in
              MLflow's registry format; the run's end status (finished, killed, failed)

A tracker that fails while training (a server gone) is warned about once and dropped: the run goes on. The ids that
let a resumed run continue the same tracked run are kept in RUN/tracking.json.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config
from ..errors import UserError
from .base import TRACKING_FILE, RunOutputs, Tracker, Trackers, experiment_name, read_ids

__all__ = ["TRACKING_FILE", "RunOutputs", "Tracker", "Trackers", "experiment_name", "open_trackers"]

log = logging.getLogger(__name__)


def open_trackers(cfg: Config, run_dir: Path, resumed: bool) -> Trackers:
    """Connect every tracker of `output.loggers` for the run in `run_dir` (continuing its tracked runs when
    `resumed`). A tracker that cannot start is an error, or with `output.log_optional` a warning."""
    from . import mlflow_tracker, tensorboard_tracker, wandb_tracker

    factories = {"tensorboard": tensorboard_tracker.open_tensorboard, "mlflow": mlflow_tracker.open_mlflow,
                 "wandb": wandb_tracker.open_wandb}
    ids = read_ids(run_dir) if resumed else {}
    trackers = []
    for name in dict.fromkeys(cfg.output.loggers):  # each once, in the order given
        try:
            trackers.append(factories[name](cfg, run_dir, ids.get(name) or {}))
            trackers[-1].continued = bool(ids.get(name))
        except UserError as err:
            if not cfg.output.log_optional:
                Trackers(trackers).finish("failed")  # those already open end as failed, not as running forever
                raise
            log.warning("%s; --log-optional: training without %s", err, name)
        except BaseException:
            Trackers(trackers).finish("failed")
            raise
    if trackers:
        log.info("tracking with %s", ", ".join(t.name for t in trackers))
    return Trackers(trackers)
