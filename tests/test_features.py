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


def test_knn_votes_as_dino_and_k1_is_sklearns_nearest_neighbour():
    from sklearn.neighbors import KNeighborsClassifier

    from vitkit.engine.probe import knn_logits

    g = torch.Generator().manual_seed(0)
    train, labels, query = torch.randn(200, 16, generator=g), torch.randint(0, 4, (200,), generator=g), \
        torch.randn(50, 16, generator=g)
    ours = knn_logits(train, labels, query, 4, k=1).argmax(1)
    theirs = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(train.numpy(), labels.numpy()).predict(
        query.numpy())
    assert ours.tolist() == theirs.tolist()
    # by hand for one query: weights exp(cos / T) of its 5 nearest, summed per class, normalized
    q = torch.nn.functional.normalize(query[:1], dim=1)
    sim, idx = (q @ torch.nn.functional.normalize(train, dim=1).T).topk(5)
    votes = torch.zeros(4).index_add_(0, labels[idx[0]], (sim[0] / 0.1).exp())
    torch.testing.assert_close(knn_logits(train, labels, query[:1], 4, k=5, temperature=0.1)[0].exp(),
                               votes / votes.sum())


def test_probe_through_the_cli_on_a_checkpoint_and_on_init_weights(fake_mnist, tmp_path):
    import json

    from safetensors.torch import save_file

    from tests.conftest import TINY_MODEL, run_cli

    train = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "2", "--out",
                    tmp_path, "--name", "r", "--no-progress", "--set", "output.report=false")
    assert train.returncode == 0, train.stderr
    out = tmp_path / "probe.json"
    r = run_cli("probe", tmp_path / "r" / "best.safetensors", "fashion-mnist", "--data-root", fake_mnist,
                "--k", "5", "20", "--output", out)
    assert r.returncode == 0, r.stderr
    assert "k-NN, k=5" in r.stdout and "logistic regression" in r.stdout and "Ankle boot" in r.stdout
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["train_images"] == 600 and result["eval_images"] == 200
    assert set(result["probes"]) == {"knn5", "knn20", "logreg"}
    assert all(p["top1"] > 0.6 for p in result["probes"].values())  # the bands are learnable
    # --init weights: a registered model with them, the model named
    from vitkit.models import create_model

    weights = tmp_path / "w.safetensors"
    save_file(create_model("vit_micro_patch7_28", num_classes=0).state_dict(), weights)
    r = run_cli("probe", weights, "fashion-mnist", "--data-root", fake_mnist, "--json")
    assert r.returncode == 2 and "name the model its weights are for with --model" in r.stderr
    r = run_cli("probe", weights, "fashion-mnist", "--data-root", fake_mnist, "--model", "vit_micro_patch7_28",
                "--json", "--k", "10")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["model"] == "vit_micro_patch7_28" and result["feature_dim"] == 128 and result["img_size"] == 28
    r = run_cli("probe", weights, "fashion-mnist", "--data-root", fake_mnist, "--model", "vit_tiny_patch16_224")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2
