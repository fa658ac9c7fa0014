"""One training epoch on an image folder the way timm's `train.py` does it, to compare with `vitkit train`.

    python benchmarks/timm_folder.py FOLDER [--epochs 1] [--workers 2] [--batch-size 256] [--threads N]

FOLDER holds `train/CLASS/*.png` and `test/CLASS/*.png` (`benchmarks/export_fashion_mnist.py` writes one).
timm's `train.py` lives in timm's Git repository, not in the package on PyPI, so this script runs the same parts
of timm that `train.py` runs: `create_dataset` (an ImageFolder read with PIL), `create_loader` with worker
processes and per-image transforms, `create_model`, `create_optimizer_v2` (AdamW), label smoothing, bf16 autocast
(`--precision`), and a validation pass on `test/` after each epoch. The model and the augmentation are the
demo preset's with the patchify stem (`vit_micro_patch7_28`: 28 px, one channel, patch 7, dim 128, depth 4,
4 heads; horizontal flip, no crop, no colour jitter). The vitkit side of the comparison:

    vitkit train FOLDER --config configs/demo.yaml --set model.stem=patch --epochs 1 --no-progress

Prints, per epoch, the training images/s, the training and validation seconds and the epoch's wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from timm.data import create_dataset, create_loader
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import create_model
from timm.optim import create_optimizer_v2

MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (train.py's -j)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast or fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.perf_counter()
    loaders = {}
    for split, training in (("train", True), ("test", False)):
        dataset = create_dataset("", root=args.folder, split=split, is_training=training, input_img_mode="L")
        loaders[split] = create_loader(
            dataset, input_size=(1, 28, 28), batch_size=args.batch_size, is_training=training,
            scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, color_jitter=0.0, interpolation="bilinear",
            mean=MEAN, std=STD, crop_pct=1.0, num_workers=args.workers, device=torch.device("cpu"),
            use_prefetcher=False, persistent_workers=True,
        )
    classes = len(loaders["train"].dataset.reader.class_to_idx)
    model = create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1,
                         num_classes=classes, embed_dim=128, depth=4, num_heads=4, drop_path_rate=0.0)
    optimizer = create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05)
    criterion = LabelSmoothingCrossEntropy(0.1)
    bf16 = args.precision == "bf16"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    print(f"setup {time.perf_counter() - started:.1f} s; {len(loaders['train'].dataset)} train and "
          f"{len(loaders['test'].dataset)} test images; bf16 autocast: {bf16}; {torch.get_num_threads()} threads, "
          f"{args.workers} workers", flush=True)

    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        seen = 0
        for images, labels in loaders["train"]:
            with autocast():
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        t1 = time.perf_counter()
        model.eval()
        correct = total = 0
        with torch.inference_mode(), autocast():
            for images, labels in loaders["test"]:
                correct += (model(images).argmax(1) == labels).sum().item()
                total += len(labels)
        t2 = time.perf_counter()
        print(f"epoch {epoch}: train {seen} images in {t1 - t0:.1f} s ({seen / (t1 - t0):.0f} img/s), "
              f"loss {loss.item():.4f}; validation {total} images in {t2 - t1:.1f} s, top-1 {correct / total:.4f}; "
              f"epoch wall {t2 - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
