"""Frozen-feature training: the backbone's features cached once, the head trained on them."""
import csv
import os

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from tests.test_train import config

# No augmentation, no stochastic depth: running the frozen backbone every step computes what the cache holds.
PLAIN = {"train.freeze": "backbone", "model.drop_path_rate": 0.0, "data.policy": "none", "data.erase": 0.0,
         "data.hflip": 0.0, "data.crop_scale": [1.0, 1.0], "data.translate": 0.0, "train.epochs": 3}


def _train(tmp_path, fake_mnist, name, **extra):
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{**PLAIN, "output.name": name,
                                                                 "output.report": False, **extra})
    return vitkit.train(cfg, show_progress=False)


def test_cached_features_train_the_head_the_backbone_would(fake_mnist, tmp_path, caplog):
    caplog.set_level("INFO")
    slow = _train(tmp_path, fake_mnist, "slow", **{"train.feature_cache": False})
    fast = _train(tmp_path, fake_mnist, "fast")
    assert "computing the frozen backbone's features: 600 images" in caplog.text  # 540 train + 60 val
    a, b = load_file(slow.run_dir / "last.safetensors"), load_file(fast.run_dir / "last.safetensors")
    assert set(a) == set(b)
    for key in a:
        if key.startswith("head."):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
        else:  # the backbone is the same random one in both
            assert torch.equal(a[key], b[key]), key
    rows = [list(csv.DictReader(open(r.run_dir / "metrics.csv"))) for r in (slow, fast)]
    assert [r["val_top1"] for r in rows[0]] == [r["val_top1"] for r in rows[1]]
    assert [float(r["train_loss"]) for r in rows[0]] == pytest.approx([float(r["train_loss"]) for r in rows[1]],
                                                                       abs=1e-5)
    # a second run reads the features back instead of computing them
    caplog.clear()
    again = _train(tmp_path, fake_mnist, "again")
    assert "frozen features read from the cache" in caplog.text and "computing the frozen" not in caplog.text
    torch.testing.assert_close(load_file(again.run_dir / "last.safetensors")["head.weight"], b["head.weight"],
                               rtol=0, atol=0)


def test_augmented_views_are_cached_and_a_damaged_entry_is_recomputed(fake_mnist, tmp_path, caplog):
    from vitkit.engine.features import features_dir

    caplog.set_level("INFO")
    before = set(features_dir().glob("*.safetensors")) if features_dir().is_dir() else set()
    _train(tmp_path, fake_mnist, "views", **{"data.probe_views": 3, "data.hflip": 0.5,
                                             "data.crop_scale": [0.6, 1.0], "train.epochs": 1})
    assert "(3 views of each training image)" in caplog.text
    (entry,) = set(features_dir().glob("*.safetensors")) - before
    stored = load_file(entry)
    assert stored["train"].shape[:2] == (3, 540) and stored["val"].shape[0] == 60
    assert not torch.equal(stored["train"][0], stored["train"][1])  # the views differ from the plain image
    entry.write_bytes(b"damaged")
    caplog.clear()
    _train(tmp_path, fake_mnist, "views2", **{"data.probe_views": 3, "data.hflip": 0.5,
                                              "data.crop_scale": [0.6, 1.0], "train.epochs": 1})
    assert "cannot be read" in caplog.text and "computing the frozen" in caplog.text
    assert load_file(entry)["train"].shape[:2] == (3, 540)
    assert not [p for p in os.listdir(features_dir()) if p.endswith(".tmp")]


def test_a_distilled_model_trains_both_heads_on_cached_features(fake_mnist, tmp_path, caplog):
    caplog.set_level("INFO")
    result = _train(tmp_path, fake_mnist, "dist", **{"model.dist_token": True, "train.epochs": 2})
    saved = load_file(result.run_dir / "last.safetensors")
    assert "head_dist.weight" in saved and not torch.equal(saved["head.weight"], saved["head_dist.weight"])
    assert "only the head trains (660 parameters)" in caplog.text  # both heads: 2 x (32 x 10 + 10)
