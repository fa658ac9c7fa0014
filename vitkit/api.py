"""The Python API that the CLI and notebooks share: training with its report, evaluation, loading a model.

It sits on top of the layers: the engine trains and evaluates, the report package draws, and this facade wires the
two (the engine never imports the report).
"""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .engine.evaluate import evaluate_checkpoint as evaluate
from .engine.predict import Classifier
from .engine.train import RunResult
from .engine.train import train as train_run


def train(cfg: Config, resume: str | Path | None = None, show_progress: bool = True) -> RunResult:
    """Train a model as `cfg` says and write its run directory, ending with report.html unless
    `output.report` is false; with `resume`, continue that run."""
    from .report import training_report

    return train_run(cfg, resume=resume, show_progress=show_progress, report=training_report)


def load(checkpoint, device: str = "auto", precision: str = "auto") -> Classifier:
    """Load a trained model file; the result's `.predict(images)` returns top-k classes per image."""
    return Classifier(checkpoint, device=device, precision=precision)


__all__ = ["evaluate", "load", "train"]
