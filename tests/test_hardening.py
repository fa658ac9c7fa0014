"""Holes found by reading the data and run code, each with its regression test: images that cost memory out of
all proportion, decoders that should never run, damaged EXIF, file names that are not UTF-8 or look like markup,
two runs in one directory, a resume on changed data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

import vitkit
from vitkit.config import build_config
from vitkit.data.images import MAX_ASPECT_RATIO, decode, resize_center_crop
from vitkit.errors import BadImage, UserError
from vitkit.fileio import DirectoryLock

from .conftest import TINY_MODEL, run_cli, write_folder

PEAK_RSS = ("import resource, sys\n"
            "from vitkit.data.images import decode\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n"
            "    decode(sys.argv[1], int(sys.argv[2]), 3)\n"
            "    print('decoded', end=' ')\n"
            "except Exception as err:\n"
            "    print(type(err).__name__, getattr(err, 'reason', ''), end=' ')\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n")


def _peak_mib(path: Path, size: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), str(size)], capture_output=True, text=True,
                         timeout=120).stdout.split()
    return " ".join(out[:-1]), int(out[-1])


def test_a_very_wide_image_is_refused_without_the_memory_a_full_resize_would_take(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("L", (200_000, 1)).save(wide)  # a few hundred bytes; resized whole to 224 px high: 13 GB
    assert wide.stat().st_size < 1000
    outcome, grew = _peak_mib(wide, 224)
    assert outcome == "BadImage aspect-ratio" and grew < 200, (outcome, grew)
    with pytest.raises(BadImage, match=f"beyond {MAX_ASPECT_RATIO}:1"):
        decode(wide, 64, 1)
    # just inside the limit: decoded from the centre box alone, not the whole strip resized
    strip = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40 * MAX_ASPECT_RATIO), np.uint8)).save(strip)
    outcome, grew = _peak_mib(strip, 224)
    assert outcome == "decoded" and grew < 100, (outcome, grew)


def test_the_centre_box_resize_is_the_resize_then_crop_it_replaces():
    rng = np.random.default_rng(1)
    for w, h in [(40, 30), (30, 40), (640, 480), (200, 20), (28, 28)]:
        img = Image.fromarray(np.full((h, w), 100, np.uint8) + rng.integers(0, 20, (h, w), dtype=np.uint8))
        scale = 32 / min(w, h)
        nw, nh = max(32, round(w * scale)), max(32, round(h * scale))
        left, top = (nw - 32) // 2, (nh - 32) // 2
        old = img.resize((nw, nh), Image.Resampling.BICUBIC).crop((left, top, left + 32, top + 32))
        new = resize_center_crop(img, 32)
        assert new.size == (32, 32)
        assert np.abs(np.asarray(new, int) - np.asarray(old, int)).mean() < 1.0


def test_eps_and_other_formats_outside_the_list_never_reach_their_decoder(tmp_path, monkeypatch):
    eps = tmp_path / "drawing.png"  # a suffix that lies: the bytes decide, and they are PostScript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n")
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or (_ for _ in ()).throw(OSError))
    with pytest.raises(BadImage) as err:
        decode(eps, 32, 3)
    assert err.value.reason == "not-an-image" and not started
    ico = tmp_path / "icon.png"
    Image.new("RGB", (16, 16)).save(ico, format="ICO")  # a format Pillow reads but vitkit does not accept
    with pytest.raises(BadImage, match="not an image format"):
        decode(ico, 32, 3)
    mpo_like = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(mpo_like, format="JPEG")
    assert decode(mpo_like, 8, 3).shape == (3, 8, 8)


def test_file_names_that_are_not_utf8_or_look_like_markup_train_and_predict(tmp_path):
    data = write_folder(tmp_path / "photos", per_class=6)
    for i, name in enumerate([b"caf\xe9.png", b"[red]coat.png"]):  # not UTF-8; Rich markup
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(os.path.join(bytes(data / "bag"), name),
                                                                    format="PNG")
    trained = run_cli("train", data, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--name", "odd",
                      "--no-progress", "--set", "output.report=false", "--val-fraction", "0.3")
    assert trained.returncode == 0, trained.stderr
    manifest = (tmp_path / "runs" / "odd" / "split.csv").read_bytes()
    assert b"bag/caf\xe9.png" in manifest and b"bag/[red]coat.png" in manifest  # the bytes on disk
    (tmp_path / "bad[").mkdir()
    markup = tmp_path / "bad[" / "red].png"  # its path reads as a closing tag: bad[/red].png
    Image.new("RGB", (20, 20)).save(markup)
    files = [os.fsdecode(os.path.join(bytes(data / "bag"), b"caf\xe9.png")), str(data / "bag" / "[red]coat.png"),
             str(markup)]
    table = run_cli("predict", tmp_path / "runs" / "odd" / "best.safetensors", *files)
    assert table.returncode == 0, table.stderr
    assert "caf\ufffd.png" in table.stdout and "[red]coat.png" in table.stdout and "bad[/red].png" in table.stdout
    as_json = run_cli("predict", tmp_path / "runs" / "odd" / "best.safetensors", *files, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [os.fsencode(r["file"]) for r in json.loads(as_json.stdout)] == [os.fsencode(f) for f in files]
    as_csv = subprocess.run([sys.executable, "-m", "vitkit", "predict", str(tmp_path / "runs" / "odd" /
                            "best.safetensors"), *files, "--format", "csv", "--top-k", "1"], capture_output=True,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # a UTF-8 terminal: strict encoding
    assert as_csv.returncode == 0, as_csv.stderr
    assert os.fsencode(files[0]) + b",1," in as_csv.stdout  # the name's own bytes
    resumed = run_cli("train", "--resume", tmp_path / "runs" / "odd", "--epochs", "2", "--no-progress")
    assert resumed.returncode == 0 and "not in the split manifest" not in resumed.stderr, resumed.stderr


SAME_SECOND = ("import sys, time\n"
               "time.strftime = lambda fmt, *a: '20260101-000000'\n"  # both runs start in the same second
               "from vitkit.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


def test_two_runs_started_together_get_two_run_directories(tmp_path):
    data = write_folder(tmp_path / "photos", per_class=6)
    args = ["train", str(data), *TINY_MODEL, "--epochs", "1", "--out", str(tmp_path / "runs"), "--no-progress",
            "--set", "output.report=false"]
    both = [subprocess.Popen([sys.executable, "-c", SAME_SECOND, *args], stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in both]
    assert [p.returncode for p in both] == [0, 0], errors
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["photos-vit_micro_patch7_28-20260101-000000", "photos-vit_micro_patch7_28-20260101-000000-2"]
    for run in runs:
        assert (tmp_path / "runs" / run / "state.pt").is_file()


def test_a_run_directory_in_use_is_refused_and_a_failed_start_leaves_none(tmp_path):
    data = write_folder(tmp_path / "photos", per_class=6)
    common = [data, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--no-progress", "--set",
              "output.report=false"]
    assert run_cli("train", *common, "--name", "done").returncode == 0
    (tmp_path / "runs" / "fresh").mkdir()
    locks = [DirectoryLock(tmp_path / "runs" / name) for name in ("done", "fresh")]
    assert all(lock.acquire() for lock in locks)  # as a training process holds them
    try:
        resumed = run_cli("train", "--resume", tmp_path / "runs" / "done", "--no-progress")
        with pytest.raises(UserError, match=f"fresh is in use by pid {os.getpid()}"):  # the same check, in-process
            vitkit.train(build_config(options={"data.source": str(data), "output.dir": str(tmp_path / "runs"),
                                               "output.name": "fresh"}), show_progress=False)
    finally:
        for lock in locks:
            lock.release()
    assert resumed.returncode == 2 and f"is in use by pid {os.getpid()}" in resumed.stderr, resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    failed = run_cli("train", empty, *TINY_MODEL, "--out", tmp_path / "runs", "--no-progress")
    assert failed.returncode == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["done", "fresh"]  # no empty run directory


def test_resume_after_a_class_was_added_is_one_line(tmp_path):
    data = write_folder(tmp_path / "photos", per_class=6)
    first = run_cli("train", data, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--name", "r",
                    "--no-progress", "--set", "output.report=false")
    assert first.returncode == 0, first.stderr
    write_folder(tmp_path / "photos", per_class=6, classes=("anorak",))  # sorts first: would shift every label
    resumed = run_cli("train", "--resume", tmp_path / "runs" / "r", "--epochs", "2", "--no-progress")
    assert resumed.returncode == 2, resumed.stderr
    line = resumed.stderr.strip().splitlines()[-1]
    assert "the classes of" in line and "added anorak" in line and "--init" in line
    assert "Traceback" not in resumed.stderr


def _jpeg_with_broken_exif() -> bytes:
    """A JPEG whose EXIF block gives the text tag Make the number of ImageWidth: Pillow reads it, then fails with
    struct.error when it writes the block back after turning the image (what ImageOps.exif_transpose does)."""
    import io

    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Camera"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(buffer, "JPEG", exif=exif.tobytes())
    data = buffer.getvalue()
    assert data.count(b"\x01\x0f\x00\x02") == 1  # tag 0x010F (Make), type 2 (ASCII), big-endian
    return data.replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02")


def test_a_jpeg_with_damaged_exif_is_a_bad_file_in_training_data_check_and_predict(tmp_path):
    broken = _jpeg_with_broken_exif()
    with pytest.raises(BadImage, match="malformed EXIF data"):
        decode(broken, 16, 3)
    data = write_folder(tmp_path / "photos", per_class=6)
    (data / "bag" / "phone.jpg").write_bytes(broken)
    trained = run_cli("train", data, *TINY_MODEL, "--epochs", "1", "--out", tmp_path / "runs", "--name", "exif",
                      "--no-progress", "--set", "output.report=false")
    assert trained.returncode == 0, trained.stderr
    assert "bag/phone.jpg" in (tmp_path / "runs" / "exif" / "bad_files.csv").read_text()
    checked = run_cli("data", "check", data, "--json")
    findings = {f["path"]: f for f in json.loads(checked.stdout)["findings"]}
    assert "malformed EXIF" in findings["bag/phone.jpg"]["detail"]
    predicted = run_cli("predict", tmp_path / "runs" / "exif" / "best.safetensors", data / "bag" / "phone.jpg",
                        data / "bag" / "img_001.png", "--json")
    assert predicted.returncode == 0, predicted.stderr
    answers = json.loads(predicted.stdout)
    assert "malformed EXIF" in answers[0]["error"] and answers[1]["top"]


def test_a_checkpoint_whose_metadata_claims_a_huge_model_is_refused_before_it_is_built(tmp_path):
    import time

    from safetensors.torch import save_file

    from tests.serving import make_checkpoint
    from vitkit.engine.checkpoint import read_meta

    real = make_checkpoint(tmp_path / "real.safetensors")
    meta = read_meta(real)
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (90, 40, 10)).save(image)
    for name, change in (("deep", {"depth": 10_000}), ("wide", {"embed_dim": 65_536, "num_heads": 1}),
                         ("huge-input", {"img_size": 1_000_000})):
        lying = {**meta, "model_kwargs": {**meta["model_kwargs"], **change}}
        path = tmp_path / f"{name}.safetensors"
        save_file({"cls_token": torch.zeros(1, 1, 32)}, path, metadata={"vitkit": json.dumps(lying)})
        if name == "deep":
            assert path.stat().st_size < 1024
        started = time.monotonic()
        result = run_cli("predict", path, image)
        assert result.returncode == 2 and "metadata describes another model" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 30
    stretched = tmp_path / "stretched.safetensors"  # every tensor there, but the metadata says another width
    from safetensors.torch import load_file
    save_file(load_file(real), stretched, metadata={"vitkit": json.dumps(
        {**meta, "model_kwargs": {**meta["model_kwargs"], "embed_dim": 64}})})
    result = run_cli("predict", stretched, image)
    assert result.returncode == 2 and "first difference" in result.stderr
    assert run_cli("predict", real, image).returncode == 0


def test_dependency_floors_leave_out_the_versions_with_known_holes():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["serve"]]
    floors = {r.name.lower(): min(Version(s.version) for s in r.specifier if s.operator == ">=") for r in requirements}
    fixed = {"pillow": "10.3.0",  # libwebp heap overflow CVE-2023-4863 (10.0.1), CVE-2024-28219 (10.3.0)
             "python-multipart": "0.0.18",  # CVE-2024-24762 (0.0.7), CVE-2024-53981 (0.0.18)
             "fastapi": "0.115.3"}  # pulls starlette >= 0.40: multipart form DoS CVE-2024-47874
    for name, version in fixed.items():
        assert floors[name] >= Version(version), (name, floors[name])
