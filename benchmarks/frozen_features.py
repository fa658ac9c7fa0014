"""Frozen-feature training against running the frozen backbone every epoch, side by side on one machine.

    python benchmarks/frozen_features.py [--images 10000] [--model vit_small_patch16_224] [--epochs 3]
                                         [--slow-epochs 1] [--folder /tmp/ff/photos] [--out /tmp/ff/runs]

Writes (once) a photo-like folder of JPEGs of varied sizes (10 classes, each a colour scheme of soft blobs on a
gradient), then trains a linear probe on it with `vitkit train --freeze backbone` twice, through the CLI:

1. `--set train.feature_cache=false`: the backbone runs over every image in every epoch (augmented anew), as
   `--freeze backbone` did before the feature cache;
2. the default: the backbone's features are computed once (reported apart as the cache fill) and cached, the head
   trains on them.

Both read the images from vitkit's decode cache (a first, untimed run fills it). Prints each run's epoch seconds and
best validation top-1 (from metrics.csv), the fill time, and the ratio of epoch times.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def write_photos(folder: Path, n: int, classes: int = 10, seed: int = 0, val_every: int = 0) -> None:
    """n JPEGs, classes x (n / classes), 160-400 px on a side: blobs whose colours depend on the class. With
    `val_every` k, every k-th image of each class goes to `val/CLASS/` and the others to `train/CLASS/` (a fixed
    split that vitkit and timm's pipeline both read), else all to `CLASS/`."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (classes, 3, 3))
    for i in range(n):
        label = i % classes
        w, h = (int(v) for v in rng.integers(160, 401, 2))
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, h)[:, None, None]
        img = Image.fromarray(((1 - ramp) * top + ramp * bottom).repeat(w, axis=1).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 8))):
            colour = palette[label, int(rng.integers(0, 3))] + rng.integers(-30, 31, 3)
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(15, max(16, min(w, h) // 3)))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in np.clip(colour, 0, 255)))
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
        split = ("val" if (i // classes) % val_every == 0 else "train") if val_every else ""
        path = folder / split / f"class{label}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, "JPEG", quality=int(rng.integers(70, 95)))


def train(folder: Path, out: Path, name: str, model: str, epochs: int, extra: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "vitkit", "train", str(folder), "--model", model, "--freeze", "backbone",
           "--epochs", str(epochs), "--out", str(out), "--name", name, "--no-progress", "--batch-size", "128",
           "--set", "output.report=false", *extra]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if run.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start, run.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the cached run")
    parser.add_argument("--slow-epochs", type=int, default=1,
                        help="epochs of the run without the cache (as many as --epochs compares accuracy)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/ff/photos"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/ff/runs"))
    args = parser.parse_args()
    if not args.folder.is_dir():
        start = time.perf_counter()
        write_photos(args.folder, args.images)
        print(f"wrote {args.images} JPEGs to {args.folder} in {time.perf_counter() - start:.0f} s", flush=True)
    stamp = time.strftime("%H%M%S")
    # fill vitkit's decode cache, untimed: both runs below read the decoded images from it
    train(args.folder, args.out, f"decode-{stamp}", "vit_micro_patch7_28", 1,
          ["--img-size", "224", "--set", "model.patch_size=16"])
    rows = {}
    for label, name, epochs, extra in (("backbone every epoch", "slow", args.slow_epochs,
                                        ["--set", "train.feature_cache=false"]),
                                       ("cached features", "fast", args.epochs, [])):
        wall, log = train(args.folder, args.out, f"{name}-{stamp}", args.model, epochs, extra)
        metrics = list(csv.DictReader(open(args.out / f"{name}-{stamp}" / "metrics.csv")))
        fill = re.search(r"frozen features: \d+ images in ([\d.]+) s", log)
        rows[label] = ([float(r["seconds"]) for r in metrics], max(float(r["val_top1"]) for r in metrics),
                       float(fill.group(1)) if fill else None, wall)
    print(f"{args.model}, {args.images} images at 224 px, {os.cpu_count()} CPUs")
    for label, (seconds, top1, fill, wall) in rows.items():
        filled = f", cache fill {fill:.1f} s" if fill is not None else ""
        print(f"  {label}: epochs {', '.join(f'{s:.2f}' for s in seconds)} s{filled}; best val top-1 {top1:.4f}; "
              f"wall {wall:.0f} s")
    slow, fast = rows["backbone every epoch"][0][0], min(rows["cached features"][0])
    print(f"  epoch time ratio: {slow / fast:.0f}x")


if __name__ == "__main__":
    main()
