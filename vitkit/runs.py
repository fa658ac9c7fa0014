"""The runs under a folder, read from their run directories without loading a model (no torch): what `vitkit runs`
lists. A run's status comes from `status.json`, which the training writes as it starts and ends:

    running      training now (its process is alive; on another host, as last written)
    finished     every planned epoch done, or stopped early by patience
    interrupted  stopped by Ctrl-C or SIGTERM after saving, or killed (its process is gone): `--resume` continues it
    failed       ended by an error (named in the table and in status.json)
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .errors import UserError
from .fileio import atomic_write

STATUS_FILE = "status.json"
STATUSES = ("running", "finished", "interrupted", "failed")
TOOL_FOLDERS = {"mlartifacts", "mlruns", "wandb", "tensorboard"}  # the trackers' own folders beside the runs
SORT_KEYS = ("name", "model", "data", "epochs", "best_val", "test", "seconds", "status", "started")


def write_status(run_dir: Path, status: str, error: str | None = None) -> None:
    """Record the run's status with this process's id and host (what tells a running run from a killed one)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    path = Path(run_dir) / STATUS_FILE
    started = _read_json(path).get("started")  # a resumed run keeps the start of its first part
    now = datetime.datetime.now().isoformat(timespec="seconds")
    atomic_write(path, json.dumps({"status": status, "pid": os.getpid(), "host": socket.gethostname(),
                                   "started": started or now, "updated": now,
                                   **({"error": error} if error else {})}, indent=2) + "\n")


@dataclass
class RunInfo:
    name: str
    path: str
    model: str
    data: str
    epochs: int  # completed
    planned: int
    best_val: float  # best val top-1, raw or averaged weights; nan without validation
    test: float | None  # top-1 of the latest `vitkit evaluate ... --split test` of best.safetensors, if any
    seconds: float  # training time, the epochs' own
    status: str
    started: str = ""
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def list_runs(folder: str | os.PathLike, sort: str = "started") -> tuple[list[RunInfo], list[str]]:
    """The runs directly under `folder` (or `folder` itself when it is one), sorted by `sort` (best first for
    best_val and test, newest first for started), and the names of subfolders that are not vitkit runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the folder that holds run directories (default runs/)")
    if sort not in SORT_KEYS:
        raise UserError(f"cannot sort by {sort!r}: choose one of {', '.join(SORT_KEYS)}")
    candidates = [folder] if (folder / "config.yaml").is_file() else sorted(p for p in folder.iterdir() if p.is_dir())
    runs, skipped = [], []
    for path in candidates:
        info = read_run(path)
        if info is None:
            if not path.name.startswith(".") and path.name not in TOOL_FOLDERS:
                skipped.append(path.name)
        else:
            runs.append(info)
    descending = sort in ("best_val", "test", "started", "epochs", "seconds")
    runs.sort(key=lambda r: _sort_key(getattr(r, sort)), reverse=descending)
    return runs, skipped


def read_history(run_dir: Path | None) -> list[dict]:
    """metrics.csv as numbers, one dict per epoch (empty cells left out); [] without one."""
    if run_dir is None or not (Path(run_dir) / "metrics.csv").is_file():
        return []
    with open(Path(run_dir) / "metrics.csv", newline="", encoding="utf-8") as f:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def _sort_key(value):
    if value is None or isinstance(value, float) and math.isnan(value):
        return (0, 0)
    return (1, value)


def read_run(path: Path) -> RunInfo | None:
    """What a run directory holds, or None when it is not a vitkit run (no readable config.yaml)."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        planned, model, data = config["train"]["epochs"], config["model"]["name"], config["data"]["source"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    rows = _metrics(path / "metrics.csv")
    best = max((max(_float(r.get("val_top1")), _float(r.get("val_top1_ema"))) for r in rows), default=math.nan)
    status, started, error = _status(path, len(rows), planned, config)
    return RunInfo(path.name, str(path), model, str(data), len(rows), planned, best, _test_top1(path),
                   round(sum(_float(r.get("seconds"), 0.0) for r in rows), 1), status, started, error)


def _status(path: Path, done: int, planned: int, config: dict) -> tuple[str, str, str | None]:
    recorded = _read_json(path / STATUS_FILE)
    status, started = recorded.get("status"), recorded.get("started", "")
    if status == "running" and recorded.get("host") == socket.gethostname() and not _alive(recorded.get("pid")):
        status = "interrupted"  # killed (kill -9, a crash of the machine): the last completed epoch is saved
    if status not in STATUSES:  # a run from before status.json: judged by its epochs
        patience = (config.get("train") or {}).get("patience", 0)
        status = "finished" if done >= planned or (patience and done) else "interrupted"
        if not started and (path / "config.yaml").exists():
            started = datetime.datetime.fromtimestamp((path / "config.yaml").stat().st_mtime).isoformat(
                timespec="seconds")
    return status, started, recorded.get("error")


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _metrics(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _test_top1(path: Path) -> float | None:
    """The newest test-split evaluation of best.safetensors (without TTA first), if one was written."""
    for pattern in ("best-eval-test.json", "best-eval-test-*.json"):
        files = sorted(path.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
        for f in files:
            top1 = _read_json(f).get("top1")
            if isinstance(top1, (int, float)):
                return float(top1)
    return None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _float(text, default: float = math.nan) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default
