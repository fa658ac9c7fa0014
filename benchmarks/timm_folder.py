"""Training epochs on an image folder the way timm's `train.py` does it, to compare with `vitkit train`.

    python benchmarks/timm_folder.py FOLDER [--preset fashion-mnist|photos] [--epochs 1] [--workers 2]
                                     [--batch-size N] [--device cpu|cuda] [--precision bf16|fp32] [--threads N]
                                     [--model NAME] [--img-size N]

FOLDER holds `train/CLASS/*` and `val/CLASS/*` (or `test/CLASS/*`): `benchmarks/export_fashion_mnist.py` writes
Fashion-MNIST as PNGs, `frozen_features.write_photos(folder, n, val_every=10)` photo-like JPEGs of varied sizes.
timm's `train.py` lives in timm's Git repository, not in the package on PyPI, so this script runs the same parts
of timm that `train.py` runs: `create_dataset` (an ImageFolder read with PIL), `create_loader` with worker
processes and per-image transforms (decode, random-resized crop, flip, normalize), `create_model`,
`create_optimizer_v2` (AdamW), label smoothing, bf16 autocast (`--precision`), and a validation pass after each epoch.

Presets, each with the vitkit command it is compared with:

- `fashion-mnist` (default): the demo preset with the patchify stem (`vit_micro_patch7_28`: 28 px, one channel,
  patch 7, dim 128, depth 4, 4 heads); flip, no crop, batch 256.

      vitkit train FOLDER --config configs/demo.yaml --set model.stem=patch --epochs 1 --no-progress

- `photos`: ViT-S/16 at 224 px, RGB, random-resized crops of 80-100% of the area and flips (vitkit's default
  crop), ImageNet's mean and std, no colour policy or erasing, batch 32.

      vitkit train FOLDER --model vit_small_patch16_224 --epochs 2 --batch-size 32 --set data.policy=none \\
          --set data.erase=0 --no-progress

Prints, per epoch, the training images/s, the training and validation seconds and the epoch's wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from timm.data import create_dataset, create_loader
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import create_model
from timm.optim import create_optimizer_v2

PRESETS = {
    "fashion-mnist": dict(model="vit_tiny_patch16_224", size=28, mode="L", mean=(0.2860,), std=(0.3530,),
                          scale=(1.0, 1.0), ratio=(1.0, 1.0), batch_size=256, lr=2e-3,
                          kwargs=dict(patch_size=7, in_chans=1, embed_dim=128, depth=4, num_heads=4)),
    "photos": dict(model="vit_small_patch16_224", size=224, mode="RGB", mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), batch_size=32, lr=1e-3,
                   kwargs={}),
}


def loaders(folder: str, preset: dict, size: int, batch_size: int, workers: int, device: torch.device) -> dict:
    """The training and validation loaders, as `train.py` builds them."""
    root = Path(folder)
    val_split = "val" if (root / "val").is_dir() else "test"
    out = {}
    for split, training in (("train", True), (val_split, False)):
        dataset = create_dataset("", root=folder, split=split, is_training=training, input_img_mode=preset["mode"])
        out["train" if training else "val"] = create_loader(
            dataset, input_size=(len(preset["mean"]), size, size), batch_size=batch_size, is_training=training,
            scale=preset["scale"], ratio=preset["ratio"], hflip=0.5, color_jitter=0.0, interpolation="bilinear",
            mean=preset["mean"], std=preset["std"], crop_pct=1.0, num_workers=workers, device=torch.device("cpu"),
            use_prefetcher=False, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (train.py's -j)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast or fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--model", default=None, help="another timm model (default: the preset's)")
    parser.add_argument("--img-size", type=int, default=None, help="another input size (default: the preset's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset, device = PRESETS[args.preset], torch.device(args.device)
    size = args.img_size or preset["size"]
    batch_size = args.batch_size or preset["batch_size"]

    started = time.perf_counter()
    data = loaders(args.folder, preset, size, batch_size, args.workers, device)
    classes = len(data["train"].dataset.reader.class_to_idx)
    model = create_model(args.model or preset["model"], pretrained=False, img_size=size, num_classes=classes,
                         drop_path_rate=0.0, **preset["kwargs"]).to(device)
    optimizer = create_optimizer_v2(model, "adamw", lr=preset["lr"], weight_decay=0.05)
    criterion = LabelSmoothingCrossEntropy(0.1)
    bf16 = args.precision == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    print(f"{args.preset}: {args.model or preset['model']} at {size} px on {device}; setup "
          f"{time.perf_counter() - started:.1f} s; {len(data['train'].dataset)} train and {len(data['val'].dataset)} "
          f"validation images; bf16 autocast: {bf16}; {torch.get_num_threads()} threads, {args.workers} workers",
          flush=True)

    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        seen = 0
        for images, labels in data["train"]:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast():
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        model.eval()
        correct = total = 0
        with torch.inference_mode(), autocast():
            for images, labels in data["val"]:
                logits = model(images.to(device, non_blocking=True))
                correct += (logits.argmax(1).cpu() == labels).sum().item()
                total += len(labels)
        t2 = time.perf_counter()
        print(f"epoch {epoch}: train {seen} images in {t1 - t0:.1f} s ({seen / (t1 - t0):.0f} img/s), "
              f"loss {loss.item():.4f}; validation {total} images in {t2 - t1:.1f} s, top-1 {correct / total:.4f}; "
              f"epoch wall {t2 - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
