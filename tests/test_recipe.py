"""The accuracy recipe in training: EMA, mixing, accumulation, class balance, small-data defaults, TTA."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.engine.checkpoint import read_meta
from vitkit.engine.evaluate import predict_logits
from vitkit.models import create_model

from .conftest import TINY_MODEL, run_cli, write_folder
from .test_train import config

STRONG = {"data.policy": "trivial", "data.erase": 0.5, "data.translate": 0.1, "data.repeats": 2,
          "train.mixup": 0.8, "train.cutmix": 1.0, "train.ema": 0.9, "model.drop_path_rate": 0.0}


def _weights(path):
    return load_file(path)


def test_full_recipe_is_reproducible_and_saves_the_weight_average(fake_mnist, tmp_path):
    runs = [vitkit.train(config(tmp_path / str(i), "fashion-mnist", str(fake_mnist), **STRONG,
                                **{"train.epochs": 3, "output.name": "r"}), show_progress=False) for i in range(2)]
    a, b = (r.run_dir for r in runs)
    for name in ("last.safetensors", "ema.safetensors", "best.safetensors"):
        wa, wb = _weights(a / name), _weights(b / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    raw, ema = _weights(a / "last.safetensors"), _weights(a / "ema.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    rows = list(csv.DictReader(open(a / "metrics.csv")))
    assert all(0 <= float(r["val_top1_ema"]) <= 1 for r in rows)
    best = read_meta(a / "best.safetensors")
    best_row = max(rows, key=lambda r: max(float(r["val_top1"]), float(r["val_top1_ema"])))
    assert best["weights"] == ("ema" if float(best_row["val_top1_ema"]) > float(best_row["val_top1"]) else "raw")
    assert read_meta(a / "ema.safetensors")["weights"] == "ema"


def test_without_validation_best_holds_the_weight_average(fake_mnist, tmp_path):
    r = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "2", "--ema", "0.9",
                "--set", "data.val_fraction=0", "--out", tmp_path, "--name", "r", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "no validation split: every epoch's averaged (EMA) weights become best.safetensors" in r.stderr
    assert "epoch 2/2  train loss" in r.stderr and "| no validation split |" in r.stderr and "nan" not in r.stderr
    assert "no validation split: best is the last epoch, 2 epochs in" in r.stdout
    assert f"no report: there is no validation split; 'vitkit report {tmp_path / 'r'} [DATA]'" in r.stderr
    run = tmp_path / "r"
    best, ema, raw = (_weights(run / f"{n}.safetensors") for n in ("best", "ema", "last"))
    assert all(torch.equal(best[k], ema[k]) for k in best)
    assert any(not torch.equal(best[k], raw[k]) for k in best)
    meta = read_meta(run / "best.safetensors")
    assert (meta["weights"], meta["epoch"]) == ("ema", 2)


def test_accumulated_passes_give_the_same_weights_as_one_pass(fake_mnist, tmp_path):
    # SGD without clipping: an update proportional to the gradient, so a wrongly scaled sum of the passes shows
    # (AdamW and clipping would hide a factor, and Adam's division turns rounding into ~1e-5 differences)
    runs = [vitkit.train(config(tmp_path / str(k), "fashion-mnist", str(fake_mnist), **{
        "train.epochs": 1, "train.accum_steps": k, "model.drop_path_rate": 0.0, "train.mixup": 0.5,
        "train.optimizer": "sgd", "train.grad_clip": 0, "output.name": "r"}), show_progress=False) for k in (1, 4)]
    one, four = (_weights(r.run_dir / "last.safetensors") for r in runs)
    assert max(float((one[k] - four[k]).abs().max()) for k in one) < 1e-5


def test_imbalance_is_warned_about_and_balancing_says_what_it_does(tmp_path):
    root = tmp_path / "skewed"
    write_folder(root, per_class=40, classes=("common",))
    write_folder(root, per_class=3, classes=("rare",), seed=1)
    plain = run_cli("train", root, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--no-progress")
    assert plain.returncode == 0, plain.stderr
    assert "strongly imbalanced: 'common' has 36 images, 'rare' only 2" in plain.stderr
    assert "small training split (38 images < 20000): data.policy=trivial, data.erase=0.25" in plain.stderr
    run = run_cli("train", root, *TINY_MODEL, "--epochs", "1", "--balance", "loss", "--out", tmp_path / "runs",
                  "--no-progress")  # the sampler's draws are checked in test_augment
    assert run.returncode == 0, run.stderr
    assert "--balance loss: class weights from 0.53 to 9.50" in run.stderr and "imbalanced" not in run.stderr


def test_flip_tta_averages_the_mirror_images_logits(fake_mnist, tmp_path):
    model = create_model("vit_micro_patch7_28", num_classes=4).eval()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    args = ((0.5,), (0.25,), torch.device("cpu"), None)
    both = predict_logits(model, images, *args, tta="flip")
    plain, mirrored = predict_logits(model, images, *args), predict_logits(model, images.flip(-1), *args)
    torch.testing.assert_close(both, (plain + mirrored) / 2)
    result = vitkit.train(config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 1}),
                          show_progress=False)
    out = run_cli("evaluate", result.best_checkpoint, "fashion-mnist", "--data-root", fake_mnist, "--tta", "flip",
                  "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tta"] == "flip"
    plain = run_cli("evaluate", result.best_checkpoint, "fashion-mnist", "--data-root", fake_mnist, "--format", "json")
    assert plain.returncode == 0, plain.stderr
    run = result.best_checkpoint.parent  # each evaluation keeps its own file
    assert json.loads((run / "best-eval-test-tta-flip.json").read_text())["tta"] == "flip"
    assert json.loads((run / "best-eval-test.json").read_text())["tta"] == "none"


@pytest.mark.parametrize("assignment,message", [
    ("data.policy=autoaugment", "data.policy must be one of"), ("train.accum_steps=3", "multiple of train.accum"),
    ("train.mixup=-1", "must not be negative"), ("data.erase=2", "data.erase must be between 0 and 1")])
def test_recipe_options_are_checked(assignment, message):
    out = run_cli("train", "fashion-mnist", "--batch-size", "64", "--set", assignment)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_the_weight_average_follows_its_formula_on_a_known_sequence():
    from vitkit.engine.ema import ModelEma

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.5)
    expected = 0.0
    for n, value in enumerate([8.0, 4.0, 2.0, 1.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        decay = min(0.5, (1 + n) / (10 + n))  # the warm-up ramp, then the configured decay
        expected = decay * expected + (1 - decay) * value
        assert float(ema.module.weight) == pytest.approx(expected, rel=1e-6), n
    assert ema.updates == 4 and float(model.weight.detach()) == 1.0  # the raw weights are left alone


def _bundle(counts, size=8):
    from vitkit.data import DataBundle, ImageSet

    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, size, size, dtype=torch.uint8)
    train = ImageSet(images, labels, [str(i) for i in range(len(labels))])
    return DataBundle("x", [f"c{k}" for k in range(len(counts))], {"train": train}, size, 1, (0.5,), (0.25,), True)


def test_balance_loss_weights_the_loss_as_cross_entropy_with_class_weights():
    from vitkit.config import build_config
    from vitkit.engine.parts import build_parts
    from vitkit.models import create_model

    counts = [30, 10, 5]
    cfg = build_config(options={"train.balance": "loss", "train.batch_size": 8})
    data = _bundle(counts)
    parts = build_parts(cfg, data, create_model("vit_micro_patch7_28", img_size=8, in_chans=1, num_classes=3,
                                                patch_size=4), torch.device("cpu"))
    expected = torch.tensor([45 / (3 * n) for n in counts])
    logits, labels = torch.randn(12, 3), torch.tensor([0, 1, 2] * 4)
    reference = torch.nn.functional.cross_entropy(logits, labels, weight=expected, label_smoothing=0.1,
                                                  reduction="sum")
    torch.testing.assert_close(parts.loss_fn(logits, labels), reference)
    plain = build_parts(build_config(options={"train.batch_size": 8}), data,
                        create_model("vit_micro_patch7_28", img_size=8, in_chans=1, num_classes=3, patch_size=4),
                        torch.device("cpu"))
    torch.testing.assert_close(plain.loss_fn(logits, labels), torch.nn.functional.cross_entropy(
        logits, labels, label_smoothing=0.1, reduction="sum"))


@pytest.mark.parametrize("options,policy,erase", [
    ({}, "trivial", 0.25),  # small data: the stronger defaults
    ({"data.policy": "none", "data.erase": 0.0}, "none", 0.0),  # what the config sets wins
    ({"data.policy": "randaugment"}, "randaugment", 0.25)])
def test_small_data_defaults_are_the_augmentation_the_trainer_uses(options, policy, erase):
    from vitkit.config import build_config
    from vitkit.engine.recipe import build_recipe

    recipe = build_recipe(build_config(options=options), _bundle([20, 20]))
    assert (recipe.augment.policy, recipe.augment.erase) == (policy, erase)


def test_large_data_gets_no_augmentation_policy_by_default(monkeypatch):
    from vitkit.config import build_config
    from vitkit.engine import recipe as recipe_mod

    monkeypatch.setattr(recipe_mod, "SMALL_DATA", 30)
    recipe = recipe_mod.build_recipe(build_config(), _bundle([20, 20]))
    assert (recipe.augment.policy, recipe.augment.erase) == ("none", 0.0)
