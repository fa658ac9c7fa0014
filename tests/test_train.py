"""The trainer: learning, run directory, exact resume."""
import csv

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.config import build_config
from vitkit.engine import trainer as trainer_mod
from vitkit.engine.checkpoint import read_meta
from vitkit.report.figures import curve, learning_curves
from vitkit.runs import read_history

TINY = {"model.name": "vit_micro_patch7_28", "model.img_size": 16, "model.patch_size": 4, "model.embed_dim": 32,
        "model.depth": 2, "model.num_heads": 2, "model.drop_path_rate": 0.1, "train.batch_size": 32,
        "train.lr": 3e-3, "train.warmup_epochs": 1, "train.precision": "fp32", "train.threads": 2}


def config(tmp_path, source, data_root=None, **extra):
    options = {**TINY, "data.source": str(source), "data.root": data_root, "output.dir": str(tmp_path / "runs"),
               **extra}
    return build_config(options=options)


def test_learns_a_synthetic_dataset_and_writes_the_run_directory(fake_mnist, tmp_path):
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 6, "output.name": "r"})
    result = vitkit.train(cfg, show_progress=False)
    run = result.run_dir
    assert result.best_val_top1 >= 0.95
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "split.csv", "metrics.csv", "best.safetensors",
                                               "last.safetensors", "state.pt"}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert set(rows[0]) == set(trainer_mod.METRIC_COLUMNS)
    meta = read_meta(run / "best.safetensors")
    assert meta["classes"][0] == "T-shirt/top" and meta["img_size"] == 16 and meta["in_chans"] == 1
    assert meta["mean"] == [0.2860] and meta["config"]["train"]["epochs"] == 6
    report = vitkit.evaluate(run / "best.safetensors", "fashion-mnist", "test", data_root=str(fake_mnist))
    assert report["top1"] >= 0.95 and report["num_images"] == 200


def _interrupt_after(epoch, monkeypatch):
    original = trainer_mod.Trainer.end_epoch

    def end_epoch(self, row):
        stop = original(self, row)
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(trainer_mod.Trainer, "end_epoch", end_epoch)


def test_resume_after_interruption_equals_an_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    full = vitkit.train(config(tmp_path, image_folder, **{"train.epochs": 3, "output.name": "full"}),
                        show_progress=False)
    with monkeypatch.context() as m:
        _interrupt_after(2, m)
        with pytest.raises(KeyboardInterrupt):
            vitkit.train(config(tmp_path, image_folder, **{"train.epochs": 3, "output.name": "cut"}),
                         show_progress=False)
    run = tmp_path / "runs" / "cut"
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 2
    resumed = vitkit.train(vitkit.engine.train.resume_config(run), resume=run, show_progress=False)
    a, b = load_file(full.run_dir / "last.safetensors"), load_file(resumed.run_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("seconds", "img_per_s")
    rows_a = [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(open(full.run_dir / "metrics.csv"))]
    rows_b = [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(open(run / "metrics.csv"))]
    assert rows_a == rows_b
    assert (full.run_dir / "split.csv").read_text() == (run / "split.csv").read_text()


def test_early_stopping_stops_when_val_stops_improving(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod.Trainer, "validate",
                        lambda self: {"val_loss": 1.0, "val_top1": 0.5, "val_top5": 1.0})
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 10, "train.patience": 2})
    result = vitkit.train(cfg, show_progress=False)
    assert result.epochs == 3 and result.best_epoch == 1


def test_non_finite_loss_stops_with_a_hint(fake_mnist, tmp_path):
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 1, "train.lr": 1e6,
                                                                "train.grad_clip": 0.0, "train.optimizer": "sgd"})
    with pytest.raises(trainer_mod.NonFiniteLoss, match="lower the learning rate"):
        vitkit.train(cfg, show_progress=False)


def test_val_every_validates_every_nth_epoch_and_the_last(fake_mnist, tmp_path, caplog):
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 5, "train.val_every": 2,
                                                                "train.ema": 0.9, "output.name": "r"})
    with caplog.at_level("INFO", logger="vitkit"):
        result = vitkit.train(cfg, show_progress=False)
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    validated = [int(r["epoch"]) for r in rows if r["val_top1"] != "nan"]
    assert validated == [2, 4, 5] and all(r["val_loss"] == "nan" for r in rows if int(r["epoch"]) in (1, 3))
    assert result.best_epoch in validated
    assert read_meta(result.run_dir / "best.safetensors")["epoch"] == result.best_epoch
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert "validation next at epoch 2" in lines[0] and "validation next at epoch 4" in lines[2]
    assert "top-1" in lines[1] and "top-1" in lines[4]
    history = read_history(result.run_dir)
    assert curve(history, "val_top1")[0] == [2, 4, 5] and curve(history, "train_loss")[0] == [1, 2, 3, 4, 5]
    assert learning_curves(history)[:8] == b"\x89PNG\r\n\x1a\n"


def test_patience_counts_epochs_and_is_checked_at_validations(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod.Trainer, "validate",
                        lambda self: {"val_loss": 1.0, "val_top1": 0.5, "val_top5": 1.0, "val_top1_ema": float("nan")})
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 10, "train.patience": 2,
                                                                "train.val_every": 3})
    result = vitkit.train(cfg, show_progress=False)
    assert result.epochs == 6 and result.best_epoch == 3  # epochs 4 and 5 are not validated: no stop before 6


def test_a_run_on_training_images_decoded_larger_learns_and_keeps_the_input_size(image_folder, tmp_path, caplog):
    """`data.decode_scale` 1.5: the 16 px model trains on crops resampled from 24 px images, validates at 16 px,
    writes a 16 px checkpoint; a teacher's cached views go through the same resampling."""
    caplog.set_level("INFO")
    extra = {"train.epochs": 4, "data.decode_scale": 1.5, "data.cache": False, "data.crop_scale": [1.0, 1.0],
             "data.policy": "none", "data.erase": 0.0}  # flips only: the teacher's views are cached
    result = vitkit.train(config(tmp_path, image_folder, **extra), show_progress=False)
    assert "train: decoded at 24x24 for crops resampled to 16x16" in caplog.text
    assert read_meta(result.best_checkpoint)["img_size"] == 16 and result.best_val_top1 > 0.6
    extra.update({"train.teacher": str(result.best_checkpoint), "output.name": "taught"})
    taught = vitkit.train(config(tmp_path, image_folder, **extra), show_progress=False)
    assert "teacher logits of 81 images, as they are and mirrored, computed once" in caplog.text
    assert taught.epochs == 4 and taught.best_val_top1 > 0.6
