"""Shared fixtures: tiny learnable image data made on the fly, and a runner for the real CLI."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

@pytest.fixture(scope="session", autouse=True)
def _private_decode_cache(tmp_path_factory):
    """Tests (and the CLI runs they start) keep decoded image folders in a cache of their own."""
    os.environ["VITKIT_CACHE"] = str(tmp_path_factory.mktemp("decode-cache"))


# A model small enough to train in seconds on 16x16 images.
TINY_MODEL = ["--model", "vit_micro_patch7_28", "--img-size", "16", "--set", "model.patch_size=4",
              "--set", "model.embed_dim=32", "--set", "model.depth=2", "--set", "model.num_heads=2"]


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A learnable image: class k lights up horizontal band k of 4, on noise (mirroring keeps the class)."""
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    h = size // 4
    img[(label % 4) * h:(label % 4 + 1) * h, :] += 150
    return img


def make_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    """An IDX-format dataset laid out like Fashion-MNIST (600 train, 200 test), learnable."""
    root = tmp_path_factory.mktemp("data")
    directory = root / "fashion-mnist"
    directory.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 600), ("t10k", 200)):
        labels = np.arange(n) % 4
        images = np.stack([np.kron(pattern(int(y), 14, rng), np.ones((2, 2), np.uint8)) for y in labels])
        make_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        make_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_folder(root: Path, per_class: int = 30, classes=("ankle", "bag", "coat"), size=(20, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gray = np.array(Image.fromarray(pattern(k, 16, rng)).resize(size))
            rgb = np.stack([gray, gray, np.full_like(gray, 30 * k)], axis=-1)
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(rgb).save(root / cls / f"img_{i:03d}.{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes of RGB PNG/JPEG images, with a corrupt file and hidden clutter."""
    root = write_folder(tmp_path / "photos")
    (root / "bag" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "coat" / ".hidden.png").write_bytes(b"")
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _png_with_size(path: Path, width: int, height: int) -> None:
    """A tiny valid PNG whose header claims width x height: a decompression bomb for Pillow's size check."""
    import io
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


# Every file of the messy folder that training must skip, with the kind `data check` gives it.
MESSY_BAD = {"train/cat/empty.jpg": "empty-file", "train/cat/truncated.png": "truncated",
             "train/dög/cut.jpg": "truncated", "train/dög/notes.txt": "not-an-image",
             "train/cat/page.jpg": "not-an-image", "train/dög/bomb.png": "decompression-bomb"}
MESSY_ODD = {"train/cat/tiny.png": "tiny", "train/cat/banner.png": "aspect-ratio",
             "train/dög/rotated.jpg": "exif-rotated", "train/cat/cmyk.jpg": "mode", "train/dög/deep.png": "mode",
             "train/cat/alpha.png": "mode", "train/dög/palette.png": "mode", "train/dög/really_png.jpg": "extension",
             "val/cat/copy_of_0.bmp": "duplicate-across-splits",
             "val/dög/reencoded_1.jpg": "near-duplicate-across-splits"}


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """train/ and val/ folders with every kind of trouble a real folder has, Unicode names included."""
    rng = np.random.default_rng(1)
    root = tmp_path / "messy"
    for split, n in (("train", 24), ("val", 6)):
        for k, cls in enumerate(("cat", "dög")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                gray = np.array(Image.fromarray(pattern(k, 16, rng)).resize((32, 32)))
                name = f"café ñ 日本 {i}.png" if i == 5 else f"{i}.png"
                Image.fromarray(gray).save(root / split / cls / name)
    (root / "train" / "empty").mkdir()
    cat, dog = root / "train" / "cat", root / "train" / "dög"
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "truncated.png").write_bytes((cat / "1.png").read_bytes()[:200])
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(dog / "full.jpg", quality=90)
    (dog / "cut.jpg").write_bytes((dog / "full.jpg").read_bytes()[:900])
    (dog / "full.jpg").unlink()
    (dog / "notes.txt").write_text("labels were checked by hand\n", encoding="utf-8")
    (cat / "page.jpg").write_text("<html><body>404 Not Found</body></html>", encoding="utf-8")
    _png_with_size(dog / "bomb.png", 40_000, 40_000)
    Image.new("L", (4, 4), 128).save(cat / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (20, 200), dtype=np.uint8)).save(cat / "banner.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(dog / "rotated.jpg", exif=exif.tobytes())
    Image.new("CMYK", (32, 32), (0, 120, 50, 10)).save(cat / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (32, 32))).astype(np.uint16)).save(dog / "deep.png")
    Image.new("RGBA", (32, 32), (200, 10, 10, 100)).save(cat / "alpha.png")
    Image.new("P", (32, 32), 3).save(dog / "palette.png")
    Image.open(dog / "2.png").save(dog / "really_png.jpg", format="PNG")
    Image.open(cat / "0.png").save(root / "val" / "cat" / "copy_of_0.bmp")
    Image.open(dog / "1.png").convert("RGB").save(root / "val" / "dög" / "reencoded_1.jpg", quality=95)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / ".ipynb_checkpoints").mkdir()
    Image.new("L", (32, 32)).save(cat / ".ipynb_checkpoints" / "0-checkpoint.png")
    (root / "train" / ".hidden_class").mkdir()
    return root


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny checkpoint and `vitkit export --json`'s answer for it (MODEL.onnx beside the checkpoint)."""
    pytest.importorskip("onnxruntime")
    import json

    from tests.serving import make_checkpoint

    checkpoint = make_checkpoint(tmp_path_factory.mktemp("export") / "model.safetensors")
    r = run_cli("export", checkpoint, "--json")
    assert r.returncode == 0, r.stderr
    return checkpoint, json.loads(r.stdout)


def chromium() -> str:
    """Chromium's path; without one the test skips, or fails where CI requires a browser."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("VITKIT_REQUIRE_BROWSER"):
            pytest.fail("VITKIT_REQUIRE_BROWSER is set but no Chromium is installed (apt-get install chromium)")
        pytest.skip("no Chromium: apt-get install chromium (CI installs it and sets VITKIT_REQUIRE_BROWSER=1)")
    return found


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]


def render_in_chromium(page: Path) -> tuple[int, int]:
    """Open a report-style page in headless Chromium: (figures on the page, figures that decoded), from the
    data-figures and data-loaded attributes its script sets on <body> once loaded."""
    import re

    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, "--dump-dom", page.resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    return (int(re.search(r'data-figures="(\d+)"', body.group(0)).group(1)),
            int(re.search(r'data-loaded="(\d+)"', body.group(0)).group(1)))
