"""What the README promises and no other test checked: the learning-rate schedule, where weight decay applies,
resize-then-centre-crop, `data check` splitting as training does, and resume refusing what would change the run."""
import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.config import TrainConfig, build_config
from vitkit.data.images import decode
from vitkit.engine.optim import build_optimizer, build_scheduler
from vitkit.engine.train import resume_config
from vitkit.errors import UserError
from vitkit.models import create_model

from .conftest import TINY_MODEL, run_cli, write_folder
from .test_train import config


def test_warmup_then_cosine_from_lr_to_min_lr():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1e-2, min_lr=1e-4, warmup_epochs=2, epochs=10)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    warmup, total = 10, 50
    assert lrs[:warmup] == pytest.approx([1e-2 * (s + 1) / warmup for s in range(warmup)])  # linear to the peak
    for s in range(warmup, total):
        progress = (s - warmup) / (total - warmup)
        assert lrs[s] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))), s
    assert max(lrs) == pytest.approx(1e-2) and 1e-4 < lrs[-1] < 1.2e-4  # the last step is just before the end


def test_the_lr_column_follows_the_schedule(fake_mnist, tmp_path):
    result = vitkit.train(config(tmp_path, "fashion-mnist", str(fake_mnist), **{
        "train.epochs": 3, "train.warmup_epochs": 1.0, "train.lr": 2e-3, "train.min_lr": 2e-5}), show_progress=False)
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    lrs = [float(r["lr"]) for r in rows]  # the rate after each epoch's last step
    assert lrs[0] == pytest.approx(2e-3, rel=0.05)  # warmup ends at the peak with epoch 1
    assert lrs[0] > lrs[1] > lrs[2] >= 2e-5 and lrs[2] == pytest.approx(2e-5, rel=0.05)


def test_no_weight_decay_on_biases_norms_position_embedding_or_class_token():
    model = create_model("vit_micro_patch7_28", num_classes=3)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.05))
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        no_decay = name.endswith(".bias") or "norm" in name or name in ("pos_embed", "cls_token")
        assert decay_of[id(p)] == (0.0 if no_decay else 0.05), name
    assert decay_of[id(model.blocks[0].attn.qkv.weight)] == 0.05 and decay_of[id(model.pos_embed)] == 0.0


@pytest.mark.parametrize("size,channels", [((50, 30), 3), ((31, 64), 1), ((24, 24), 3)])
def test_decoding_resizes_the_shorter_side_then_crops_the_centre_as_pillow_does(tmp_path, size, channels):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    out = decode(path, 16, channels)
    reference = Image.open(path).convert("RGB" if channels == 3 else "L")
    w, h = reference.size
    scale = 16 / min(w, h)
    nw, nh = max(16, round(w * scale)), max(16, round(h * scale))
    reference = reference.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - 16) // 2, (nh - 16) // 2
    expected = np.asarray(reference.crop((left, top, left + 16, top + 16)))
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert out.shape == (channels, 16, 16) and np.array_equal(out, expected)


def test_data_check_splits_the_folder_as_training_does(tmp_path):
    folder = write_folder(tmp_path / "photos", per_class=25)
    check = run_cli("data", "check", folder, "--json", "--val-fraction", "0.2", "--test-fraction", "0.1",
                    "--seed", "3")
    assert check.returncode == 0, check.stderr
    counts = json.loads(check.stdout)["counts"]
    train = run_cli("train", folder, *TINY_MODEL, "--epochs", "1", "--val-fraction", "0.2", "--test-fraction",
                    "0.1", "--seed", "3", "--out", tmp_path / "runs", "--name", "r", "--no-progress",
                    "--set", "output.report=false")
    assert train.returncode == 0, train.stderr
    rows = list(csv.DictReader(open(tmp_path / "runs" / "r" / "split.csv")))
    trained = Counter((r["split"], r["label"]) for r in rows)
    assert {(s, c): n for s, per_class in counts.items() for c, n in per_class.items() if n} == dict(trained)


def test_resume_refuses_changing_the_seed_the_optimizer_or_the_split(fake_mnist, tmp_path):
    result = vitkit.train(config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 1}),
                          show_progress=False)
    for change in ({"train.seed": 1}, {"train.optimizer": "sgd"}, {"data.val_fraction": 0.2},
                   {"data.test_fraction": 0.1}, {"train.freeze": "backbone"}):
        key = next(iter(change))
        with pytest.raises(UserError, match=f"--resume cannot change {key}"):
            resume_config(result.run_dir, change)
    assert resume_config(result.run_dir, {"train.patience": 3}).train.patience == 3  # free to change
    assert build_config(base={"train": {"epochs": 1}}).train.epochs == 1
