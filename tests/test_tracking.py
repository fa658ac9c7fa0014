"""Experiment tracking: what TensorBoard, MLflow (a real SQLite store) and W&B (offline) received, read back with
each tool's own reader; a SIGTERM'd then resumed run as one MLflow run; failures that must not stop training."""
import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vitkit.config import build_config
from vitkit.errors import UserError
from vitkit.tracking import Tracker, Trackers, open_trackers

from .conftest import TINY_MODEL, run_cli, write_folder

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


def _metrics_csv(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _wandb_history(run: Path) -> list[dict]:
    """The history records of W&B's offline run files (RUN/wandb/offline-run-*/run-ID.wandb): a LevelDB-style log
    of 32 KiB blocks after a 7-byte header, each record W&B's own protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, pending = 7, b""
        while pos + 7 <= len(data):
            left_in_block = 32768 - pos % 32768
            if left_in_block < 7:  # a block's tail too short for a header is padding
                pos += left_in_block
                continue
            length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
            chunk = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind == 0:
                continue
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):  # FULL or LAST: a whole record
                record = pb.Record()
                record.ParseFromString(pending)
                if record.WhichOneof("record_type") == "history":
                    rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                                 for item in record.history.item})
    return rows


STOP_IN_EPOCH_2 = ("import os, signal, sys\n"
                   "from vitkit.engine import trainer\n"
                   "step = trainer.Trainer.train_step\n"
                   "def at(self, batch, epoch=0, i=0):\n"
                   "    if (epoch, i) == (2, 2):\n"
                   "        os.kill(os.getpid(), signal.SIGTERM)\n"
                   "    return step(self, batch, epoch, i)\n"
                   "trainer.Trainer.train_step = at\n"
                   "from vitkit.cli import main\n"
                   "sys.exit(main(sys.argv[1:]))\n")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A 2-epoch run on an image folder with all three trackers (MLflow in a SQLite database, W&B offline), stopped
    by SIGTERM after step 2 of epoch 2 and resumed: every history below must be one, without gap or repeat."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("tracked")
    data = write_folder(root / "photos", per_class=24)
    db = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    (root / "store").mkdir()
    args = ["train", data, *TINY_MODEL, "--epochs", "2", "--batch-size", "16", "--out", root / "runs", "--name",
            "tracked", "--no-progress", "--log", "tensorboard,mlflow,wandb", "--mlflow-uri", db]
    env = {**os.environ, "WANDB_MODE": "offline"}
    child = subprocess.run([sys.executable, "-c", STOP_IN_EPOCH_2, *map(str, args)], capture_output=True, text=True,
                           timeout=300, env=env)
    assert child.returncode == 143, child.stderr
    run = root / "runs" / "tracked"
    first_ids = json.loads((run / "tracking.json").read_text())
    killed = MlflowClient(db).get_run(first_ids["mlflow"]["run_id"]).info.status
    resumed = subprocess.run([sys.executable, "-m", "vitkit", "train", "--resume", str(run), "--no-progress"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    return run, db, data, {"killed_status": killed, "first_ids": first_ids, "log": resumed.stderr}


def test_tensorboard_has_every_scalar_at_its_step_and_the_report_figures(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _, _ = tracked
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    rows = _metrics_csv(run)
    steps = [e.step for e in events.Scalars("train/loss")]
    per_epoch = len(steps) // 2
    assert steps == list(range(1, 2 * per_epoch + 1)) and per_epoch == 4  # 66 training images, full batches of 16
    assert all(e.value > 0 for e in events.Scalars("train/img_per_s"))
    for column in ("train_loss", "train_acc", "val_loss", "val_top1", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(f"epoch/{column}")]
        assert [s for s, _ in logged] == [1, 2]
        assert [v for _, v in logged] == pytest.approx([float(r[column]) for r in rows], rel=1e-4)
    # the last step's learning rate is the epoch's
    assert events.Scalars("train/lr")[-1].value == pytest.approx(float(rows[-1]["lr"]), rel=1e-4)
    assert {"report/confusion_counts", "report/learning_curves"} <= set(events.Tags()["images"])
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_sqlite_store_has_params_metrics_artifacts_and_a_registered_model(tracked):
    from mlflow.tracking import MlflowClient

    run, db, _, _ = tracked
    ids = json.loads((run / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(db)
    logged = client.get_run(ids["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tracked"
    assert client.get_experiment(logged.info.experiment_id).name == "photos"
    params = logged.data.params
    assert params["train.epochs"] == "2" and params["model.name"] == "vit_micro_patch7_28"
    split = (run / "split.csv").read_text().splitlines()
    assert int(params["run.train_images"]) == sum(",train" in line for line in split) and int(params["run.parameters"]) > 0 and "run.torch" in params
    rows = _metrics_csv(run)
    for column in ("train_loss", "val_top1", "val_loss", "lr"):
        history = client.get_metric_history(ids["run_id"], column)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([float(r[column]) for r in rows], rel=1e-4)
    assert [m.step for m in client.get_metric_history(ids["run_id"], "train/loss")] == list(range(1, 9))
    artifacts = {a.path for a in client.list_artifacts(ids["run_id"])}
    assert {"best.safetensors", "report.html", "split.csv", "report"} <= artifacts
    assert "report/confusion_counts.png" in {a.path for a in client.list_artifacts(ids["run_id"], "report")}
    versions = client.search_model_versions("name='photos-vit_micro_patch7_28'")
    assert len(versions) == 1 and versions[0].run_id == ids["run_id"]


def test_the_registered_mlflow_model_predicts_what_vitkit_predict_says(tracked):
    import mlflow

    import vitkit

    run, db, data, _ = tracked
    files = sorted(str(p) for p in data.rglob("*.png"))[:12]
    cli = run_cli("predict", run / "best.safetensors", *files, "--json")
    assert cli.returncode == 0, cli.stderr
    expected = [r["top"][0]["class"] for r in json.loads(cli.stdout)]
    mlflow.set_tracking_uri(db)
    model = mlflow.pyfunc.load_model("models:/photos-vit_micro_patch7_28/1")
    classifier = vitkit.load(run / "best.safetensors")
    images = np.stack([classifier.preprocess(f) for f in files])
    table = model.predict(images)
    assert list(table["class"]) == expected
    assert np.allclose(table[[f"p_{c}" for c in classifier.classes]].sum(axis=1), 1, atol=1e-5)


def test_wandb_offline_run_files_hold_the_metrics(tracked):
    run, _, _, _ = tracked
    history = _wandb_history(run)
    steps = [r["_step"] for r in history if "train/loss" in r]
    assert steps == list(range(1, 9))
    epochs = [r for r in history if "epoch/val_top1" in r]
    rows = _metrics_csv(run)
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["epoch/val_top1"] for r in epochs] == pytest.approx([float(r["val_top1"]) for r in rows], rel=1e-4)
    figures = {key.rsplit("/", 1)[0] for r in history for key in r if key.endswith("/_type") and
               r[key] == "image-file"}
    assert {"report/confusion_counts", "report/learning_curves"} <= figures  # the report's figures, as images
    assert json.loads((run / "tracking.json").read_text())["wandb"]["run_id"] in str(
        next(run.glob("wandb/offline-run-*")))


def test_a_sigterm_then_resumed_run_is_one_mlflow_run_marked_killed_between(tracked):
    from mlflow.tracking import MlflowClient

    run, db, _, facts = tracked
    assert facts["killed_status"] == "KILLED"
    assert json.loads((run / "tracking.json").read_text()) == facts["first_ids"]  # the same runs continued
    client = MlflowClient(db)
    run_id = facts["first_ids"]["mlflow"]["run_id"]
    experiment = client.get_run(run_id).info.experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]  # one MLflow run, not two
    assert "continuing MLflow run" in facts["log"] and "continuing epoch 2 at step 4 of 4" in facts["log"]


def test_unknown_logger_and_unreachable_mlflow_server_are_one_line_errors(tmp_path):
    data = write_folder(tmp_path / "photos", per_class=6)
    common = ["train", data, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--no-progress",
              "--set", "output.report=false"]
    typo = run_cli(*common, "--log", "tensorbord")
    assert typo.returncode == 2 and "did you mean 'tensorboard'" in typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1
    gone = run_cli(*common, "--log", "mlflow", "--mlflow-uri", "http://127.0.0.1:9")
    assert gone.returncode == 2, gone.stderr
    assert "the MLflow tracking server http://127.0.0.1:9 cannot be reached" in gone.stderr
    assert "--log-optional" in gone.stderr and "Traceback" not in gone.stderr


def test_wandb_online_without_a_login_is_an_error_that_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = build_config(options={"output.loggers": ["wandb"], "data.source": "photos"})
    with pytest.raises(UserError, match="W&B is not logged in.*WANDB_MODE=offline"):
        open_trackers(cfg, tmp_path / "run", resumed=False)


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    cfg = build_config(options={"output.loggers": ["tensorboard"], "data.source": "photos"})
    with pytest.raises(UserError, match=r"pip install 'vitkit\[track\]'"):
        open_trackers(cfg, tmp_path / "run", resumed=False)
    cfg.output.log_optional = True
    assert not open_trackers(cfg, tmp_path / "run", resumed=False)


class Recorder(Tracker):
    def __init__(self, name, fail_on=None):
        self.name, self.fail_on, self.calls = name, fail_on, []

    def __getattribute__(self, attr):
        if attr in ("start", "log_steps", "log_epoch", "finish") and object.__getattribute__(self, "fail_on") == attr:
            raise ConnectionError("server gone")
        return object.__getattribute__(self, attr)

    def log_steps(self, rows):
        self.calls.append(("steps", rows))

    def log_epoch(self, epoch, step, row):
        self.calls.append(("epoch", epoch, step, row))

    def finish(self, status, outputs):
        self.calls.append(("finish", status))


def test_a_failing_tracker_warns_once_and_the_others_go_on(caplog):
    import torch

    good, bad = Recorder("good"), Recorder("bad", fail_on="log_steps")
    trackers = Trackers([bad, good], flush_every_s=1e9)
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        with trackers.session():
            trackers.begin_epoch()
            for step in (1, 2):
                trackers.step(step, torch.tensor(3.0 * step), 4, 0.1)
            trackers.epoch({"epoch": 1, "val_top1": 0.5, "val_top1_ema": float("nan")}, 2)
            trackers.step(3, torch.tensor(1.0), 4, 0.1)
            trackers.epoch({"epoch": 2, "val_top1": 0.75}, 3)
    assert caplog.text.count("bad stopped working (ConnectionError: server gone)") == 1
    assert trackers.names == ["good"]
    steps = [row for call in good.calls if call[0] == "steps" for row in call[1]]
    assert [(s, v["train/loss"], v["train/lr"]) for s, v in steps] == [(1, 0.75, 0.1), (2, 1.5, 0.1), (3, 0.25, 0.1)]
    assert ("epoch", 1, 2, {"val_top1": 0.5}) in good.calls  # NaN (no EMA) is not logged
    assert good.calls[-1] == ("finish", "finished")


def test_an_interrupted_session_ends_the_tracked_runs_as_interrupted():
    rec = Recorder("r")
    with pytest.raises(KeyboardInterrupt):
        with Trackers([rec]).session():
            raise KeyboardInterrupt
    assert rec.calls == [("finish", "interrupted")]
    rec = Recorder("r")
    with pytest.raises(ValueError):
        with Trackers([rec]).session():
            raise ValueError("bug")
    assert rec.calls == [("finish", "failed")]


def test_runs_skips_the_trackers_own_folders_silently(tracked):
    run, _, _, _ = tracked
    (run.parent / "mlartifacts").mkdir(exist_ok=True)
    listed = run_cli("runs", run.parent, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["skipped"] == []


def test_a_tracker_added_when_resuming_gets_the_earlier_epochs_and_log_optional_skips_one_that_fails(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_folder(tmp_path / "photos", per_class=8)
    first = run_cli("train", data, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--name", "late",
                    "--no-progress", "--set", "output.report=false")
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "late"
    # --log-optional: the MLflow server that does not answer is a warning, and TensorBoard logs alone
    longer = run_cli("train", "--resume", run, "--epochs", "2", "--log", "tensorboard,mlflow", "--mlflow-uri",
                     "http://127.0.0.1:9", "--log-optional", "--no-progress")
    assert longer.returncode == 0, longer.stderr
    assert "cannot be reached" in longer.stderr and "training without mlflow" in longer.stderr
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2]
    assert [e.value for e in events.Scalars("epoch/val_loss")] == pytest.approx(
        [float(r["val_loss"]) for r in _metrics_csv(run)], rel=1e-4)
    assert json.loads((run / "tracking.json").read_text()) == {"tensorboard": {"log_dir": "tensorboard"}}
