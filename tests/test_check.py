"""`vitkit data check` and training on a messy folder, through the real CLI."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.check import check_data, difference_hash, near_pairs
from vitkit.data.images import BadImage, allow_pixels, decode, load_image, set_max_pixels

from .conftest import MESSY_BAD, MESSY_ODD, TINY_MODEL, run_cli


def test_data_check_reports_every_problem_file_by_file(messy_folder):
    result = run_cli("data", "check", messy_folder, "--json")
    assert result.returncode == 1, result.stderr  # the empty class folder blocks training
    report = json.loads(result.stdout)
    kinds = {}
    for f in report["findings"]:
        kinds.setdefault(f["path"], set()).add(f["kind"])
    for path, kind in {**MESSY_BAD, **MESSY_ODD}.items():
        assert kind in kinds.get(path, set()), (path, kind, kinds.get(path))
    assert {f["path"] for f in report["findings"] if f["kind"] == "empty-class"} == {"train/empty"}
    assert report["unusable"] == len(MESSY_BAD) and not report["ok"]
    assert report["counts"]["train"] == {"cat": 28, "dög": 28, "empty": 0}
    assert report["counts"]["val"] == {"cat": 7, "dög": 7, "empty": 0}
    assert report["modes"]["CMYK"] == 1 and report["modes"]["I;16"] == 1
    hidden = " ".join(report["notes"])
    assert ".DS_Store" in hidden and ".ipynb_checkpoints" in hidden and ".hidden_class" in hidden
    everything = json.dumps(report)
    assert "0-checkpoint.png" not in everything and "hidden_class/" not in everything
    # Unique images of the same class are neither duplicates nor near duplicates of each other.
    flagged = {f["path"] for f in report["findings"] if "duplicate" in f["kind"]}
    assert flagged == {"val/cat/copy_of_0.bmp", "val/dög/reencoded_1.jpg", "train/dög/really_png.jpg"}


def test_data_check_table_and_exit_code_when_training_can_proceed(messy_folder):
    result = run_cli("data", "check", messy_folder, "--allow-empty-classes", "--limit", "0")
    assert result.returncode == 0, result.stderr
    for path in MESSY_BAD:
        assert path in result.stdout
    assert "café ñ 日本 5.png" not in result.stdout  # a good file with a Unicode name is not a finding
    assert "ok: training can proceed" in result.stdout


def test_data_check_errors(tmp_path):
    result = run_cli("data", "check", tmp_path / "nowhere")
    assert result.returncode == 2 and result.stderr.startswith("vitkit: error:") and "does not exist" in result.stderr
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    result = run_cli("data", "check", tmp_path / "flat")
    assert result.returncode == 1 and "no class subfolders" in result.stdout


def test_data_check_on_a_named_dataset_counts_the_splits(fake_mnist):
    report = check_data("fashion-mnist", data_root=str(fake_mnist), show_progress=False)
    assert report.ok and report.files == 800
    assert sum(report.counts["train"].values()) == 540 and sum(report.counts["test"].values()) == 200
    assert report.counts["val"]["T-shirt/top"] == 15


def test_training_survives_the_messy_folder_and_names_the_bad_files(messy_folder, tmp_path):
    args = ["train", messy_folder, *TINY_MODEL, "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "runs",
            "--name", "r", "--no-progress"]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "train/empty" in refused.stderr and "--allow-empty-classes" in refused.stderr
    result = run_cli(*args, "--allow-empty-classes")
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(MESSY_BAD)} unreadable file(s)" in result.stderr
    rows = list(csv.DictReader(open(tmp_path / "runs" / "r" / "bad_files.csv", encoding="utf-8")))
    assert {r["path"] for r in rows} == set(MESSY_BAD)
    assert "decompression bomb" in next(r["reason"] for r in rows if r["path"].endswith("bomb.png"))
    split = (tmp_path / "runs" / "r" / "split.csv").read_text(encoding="utf-8")
    assert "café ñ 日本 5.png" in split and ".ipynb_checkpoints" not in split
    evaluated = run_cli("evaluate", tmp_path / "runs" / "r" / "best.safetensors", messy_folder, "--split", "train",
                        "--format", "json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert {f["path"] for f in json.loads(evaluated.stdout)["skipped_files"]} == set(MESSY_BAD)
    assert f"skipped {len(MESSY_BAD)} unreadable file(s)" in evaluated.stderr
    # The checkpoint's class order is the folder's, empty class included; evaluate and predict use the same.
    predicted = run_cli("predict", tmp_path / "runs" / "r" / "best.safetensors", messy_folder / "val" / "cat",
                        "--format", "json", "--top-k", "3")
    assert predicted.returncode == 0, predicted.stderr
    assert {t["class"] for p in json.loads(predicted.stdout) for t in p["top"]} == {"cat", "dög", "empty"}


def test_too_many_bad_files_stop_training_with_the_limit_named(messy_folder, tmp_path):
    result = run_cli("train", messy_folder, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs",
                     "--allow-empty-classes", "--set", "data.max_bad_fraction=0.05", "--no-progress")
    assert result.returncode == 2 and "data.max_bad_fraction=0.05" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 300


def test_pixel_limit_refuses_large_images_before_decoding_and_leaves_pillow_alone(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    with pytest.raises(BadImage, match="40x30 is 1,200 pixels") as refused:
        decode(tmp_path / "a.png", 16, 3, max_pixels=1000)
    assert refused.value.reason == "too-large"
    assert decode(tmp_path / "a.png", 16, 3, max_pixels=1200).shape == (3, 16, 16)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # a library call changed no process-wide setting
    try:
        set_max_pixels(1000)  # Pillow's own limit is the default
        with pytest.raises(BadImage, match="40x30 is 1,200 pixels"):
            load_image(tmp_path / "a.png", 16, 3)
        allow_pixels(500)  # an entry point only ever raises Pillow's limit
        assert Image.MAX_IMAGE_PIXELS == 1000
    finally:
        set_max_pixels(89_478_485)


def test_near_pairs_equal_brute_force_hamming():
    g = torch.Generator().manual_seed(0)
    thumbs = torch.rand(300, 16, 17, generator=g) * 255
    thumbs[1] = thumbs[0] + 1.0  # near copy
    thumbs[7] = thumbs[3].flip(-1)  # mirrored: not a copy
    bits = difference_hash(thumbs)
    found = {(i, j) for i, j, _ in near_pairs(bits, thumbs, max_bits=256, max_diff=2.0, chunk=64)}
    brute = {(i, j) for i in range(300) for j in range(i + 1, 300)
             if (thumbs[i] - thumbs[j]).abs().mean() <= 2.0}
    assert found == brute == {(0, 1)}
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1).numpy()
    within = {(i, j) for i, j, _ in near_pairs(bits, torch.zeros_like(thumbs), max_bits=120, chunk=50)}
    assert within == {(i, j) for i, j in zip(*np.nonzero(np.triu(hamming <= 120, 1)))}
