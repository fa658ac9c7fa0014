"""Class balancing on a deliberately imbalanced Fashion-MNIST subset: --balance none, loss and sampler.

    python benchmarks/imbalance.py OUT [--major 2000] [--minor 60] [--epochs 15] [--data-root DIR]

Writes OUT/data/train/CLASS/*.png with `--major` images of classes 0-4 and `--minor` of classes 5-9 (a 33:1
imbalance by default) and OUT/data/test/ with the whole balanced test set (1,000 per class). Then trains the demo
model on it three times (same seed, same recipe but for --balance) and prints each run's recall on the minority
classes and macro F1 on the test set.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import vitkit
from vitkit.config import build_config
from vitkit.data import load_data
from vitkit.engine.evaluate import evaluate_checkpoint


def write_subset(out: Path, major: int, minor: int, data_root: str | None) -> list[str]:
    data = load_data("fashion-mnist", data_root=data_root, val_fraction=0.0, splits=("train", "test"))
    names = [c.replace("/", "-") for c in data.classes]
    rng = np.random.default_rng(0)
    if out.exists():
        return names
    for split, subset in data.splits.items():
        labels = subset.labels.numpy()
        for k, name in enumerate(names):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == k)
            if split == "train":
                idx = rng.choice(idx, major if k < 5 else minor, replace=False)
            for i in idx:
                Image.fromarray(subset.images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--major", type=int, default=2000)
    p.add_argument("--minor", type=int, default=60)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--data-root")
    args = p.parse_args()
    folder = args.out / "data"
    names = write_subset(folder, args.major, args.minor, args.data_root)  # Fashion-MNIST's class order

    rows = []
    for balance in ("none", "loss", "sampler"):
        cfg = build_config("configs/demo.yaml", {
            "data.source": str(folder), "model.img_size": 28, "train.epochs": args.epochs, "train.balance": balance,
            "data.policy": "none", "data.erase": 0.0, "train.compile": False, "output.dir": str(args.out / "runs"),
            "output.name": f"balance-{balance}", "output.report": False})
        result = vitkit.train(cfg, show_progress=False)
        report = evaluate_checkpoint(result.best_checkpoint, str(folder), "test")
        by_name = {row["class"]: row["recall"] for row in report["per_class"]}  # folder classes sort by name
        recall = [by_name[n] for n in names]
        rows.append({"balance": balance, "minority_recall": float(np.mean(recall[5:])),
                     "majority_recall": float(np.mean(recall[:5])), "macro_f1": report["macro"]["f1"],
                     "top1": report["top1"], "recall": dict(zip(names, recall))})
    print(json.dumps(rows, indent=1))
    print(f"\n{'balance':<10}{'minority recall':>17}{'majority recall':>17}{'macro F1':>10}{'top-1':>8}")
    for r in rows:
        print(f"{r['balance']:<10}{r['minority_recall']:>17.3f}{r['majority_recall']:>17.3f}{r['macro_f1']:>10.3f}"
              f"{r['top1']:>8.3f}")


if __name__ == "__main__":
    main()
