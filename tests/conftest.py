"""Shared fixtures: tiny learnable image data made on the fly, and a runner for the real CLI."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
