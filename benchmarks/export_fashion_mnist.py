"""Fashion-MNIST as an image folder of PNG files, for folder-training benchmarks.

    python benchmarks/export_fashion_mnist.py OUT [--data-root DIR]

writes OUT/train/CLASS/00000.png (60,000 files) and OUT/test/CLASS/00000.png (10,000 files), reading the dataset the
way `vitkit train fashion-mnist` does (Debian's package, --data-root, or the download).
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from vitkit.data import load_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--data-root")
    args = p.parse_args()
    data = load_data("fashion-mnist", data_root=args.data_root, val_fraction=0.0, splits=("train", "test"))
    names = [c.replace("/", "-") for c in data.classes]  # "T-shirt/top" cannot be a folder name
    jobs = []
    for split, subset in data.splits.items():
        for name in names:
            (args.out / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(subset.images.numpy(), subset.labels.tolist())):
            jobs.append((args.out / split / names[label] / f"{i:05d}.png", image[0]))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: Image.fromarray(job[1]).save(job[0]), jobs))
    print(f"{args.out}: {len(jobs)} PNG files in {', '.join(data.splits)}")


if __name__ == "__main__":
    main()
