"""One entry point for every kind of DATA: a named dataset or an image folder, split into train/val[/test].

Everything is decoded once into memory as uint8 tensors at the model's resolution (an image folder's training split,
with `data.decode_scale`, a little larger, for the augmentation's crops). The split is written as a manifest (id,
label, split) and read back by resume and evaluate, so the validation set is never the training set.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, UserError
from .cache import cache_root, content_key, load_entry, save_entry
from .folder import decode_all, detect_channels, scan_folder
from .labels import LabelSpec, LabelTable, labeled_by_file, read_labels
from .named import DATASETS, load_named
from .shards import ShardSet, is_sharded, read_index, shard_channels
from .splits import ImageSet, Split, assign_splits, iterative_split, read_manifest, stratified_split

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DataBundle:
    """A loaded DATA: its classes, splits, image size and channels, and the normalization the model uses."""

    source: str
    classes: list[str]
    splits: dict[str, Split]  # ImageSet in memory, or ShardSet streamed from shards
    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    manifest: list[tuple[str, str, str]] = field(default_factory=list)  # (id, class, split) of every item, decoded or not


def is_named(source: str) -> bool:
    return source.lower() in DATASETS


# ----------------------------------------------------------------------------------------- tensor transforms
def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to `channels` channels: gray is repeated, RGB is reduced to ITU-R 601 luma (as Pillow)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) to (N, C, size, size), antialiased bilinear, in chunks to bound memory."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if len(images) == 0:  # an empty split (data.val_fraction=0)
        return images.new_empty((0, images.shape[1], size, size))
    out = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ loading
def load_data(source: str, *, img_size: int | None = None, channels: int | None = None,
              data_root: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0,
              manifest: Path | None = None, splits: tuple[str, ...] | None = None,
              allow_empty_classes: bool = False, use_cache: bool = True, show_progress: bool = True,
              max_image_pixels: int | None = None, labels: LabelSpec | None = None,
              decode_scale: float = 1.0) -> DataBundle:
    """Load DATA into memory, split it (or reuse `manifest`), at `img_size` with `channels` (None: the data's own).

    `splits` limits which splits are decoded (evaluate needs only one); image files of more than
    `max_image_pixels` pixels are refused as possible decompression bombs (default: Pillow's limit). With a label
    file in `labels` (or a folder with Hugging Face's metadata.csv/.jsonl), the images it lists under `source`.
    With `decode_scale` > 1 (image files only), the training split is decoded at that multiple of `img_size`, for
    crops that the augmentation resamples to `img_size` (`Augment.size`); the other splits stay at `img_size`.
    """
    by_file = labeled_by_file(source, labels)
    if decode_scale != 1 and not by_file and (is_sharded(source) or is_named(source)):
        raise UserError("data.decode_scale applies to image folders and label files, which are decoded from larger "
                        f"images; {source} is used at its own size: drop data.decode_scale")
    if by_file:
        rows = read_manifest(manifest) if manifest is not None and manifest.exists() else None
        return _load_labeled(Path(source), labels, img_size, channels, val_fraction, test_fraction, seed, rows,
                             splits, use_cache, show_progress, max_image_pixels, decode_scale)
    if is_sharded(source):
        return _load_shards(Path(source), img_size, channels, splits)
    rows = read_manifest(manifest) if manifest is not None and manifest.exists() else None
    if is_named(source):
        return _load_named(source.lower(), img_size, channels, data_root, val_fraction, seed, rows, splits)
    return _load_folder(Path(source), img_size, channels, val_fraction, test_fraction, seed, rows, splits,
                        allow_empty_classes, use_cache, show_progress, max_image_pixels, decode_scale)


def _load_named(name, img_size, channels, data_root, val_fraction, seed, rows, wanted) -> DataBundle:
    spec = DATASETS[name]
    arrays, classes = load_named(name, data_root)
    train_x, train_y = arrays["train"]
    if rows is not None:
        held = {int(i.split(":")[1]) for i, _, s in rows if s == "val"}
        val_idx = np.array(sorted(held), dtype=np.int64)
        train_idx = np.setdiff1d(np.arange(len(train_y)), val_idx)
    else:
        parts = stratified_split(train_y, {"val": val_fraction}, seed)
        train_idx, val_idx = parts["train"], parts["val"]
    channels = channels or spec.channels
    img_size = img_size or spec.img_size
    chosen = {"train": (train_x, train_y, train_idx, "train"), "val": (train_x, train_y, val_idx, "train"),
              "test": (*arrays["test"], np.arange(len(arrays["test"][1])), "test")}
    out = {}
    for split, (x, y, idx, origin) in chosen.items():
        if wanted and split not in wanted:
            continue
        images = resize_images(convert_channels(torch.from_numpy(x[idx]), channels), img_size)
        out[split] = ImageSet(images, torch.from_numpy(y[idx]), [f"{origin}:{i}" for i in idx])
    mean, std = adapt_stats(spec.mean, spec.std, channels)
    manifest = [(f"train:{i}", classes[int(train_y[i])], split) for split, idx in (("train", train_idx), ("val", val_idx))
                for i in idx]
    return DataBundle(name, list(classes), out, img_size, channels, mean, std, spec.hflip, manifest=manifest)


def adapt_stats(mean, std, channels):
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    m, s = float(np.mean(mean)), float(np.mean(std))
    return (m,) * channels, (s,) * channels


def split_size(img_size: int, split: str, decode_scale: float) -> int:
    """The side a split of image files is decoded at: the training split's `decode_scale` times larger."""
    if split != "train" or decode_scale == 1:
        return img_size
    size = round(img_size * decode_scale)
    log.info("train: decoded at %dx%d for crops resampled to %dx%d (data.decode_scale %g)", size, size, img_size,
             img_size, decode_scale)
    return size


def _load_folder(root, img_size, channels, val_fraction, test_fraction, seed, rows, wanted,
                 allow_empty_classes, use_cache=True, show_progress=True, max_pixels=None,
                 decode_scale=1.0) -> DataBundle:
    scan = scan_folder(root, allow_empty_classes)
    if img_size is None:
        raise DataError("an image folder needs an image size: pass --img-size or choose a model with one")
    label_of = {c: i for i, c in enumerate(scan.classes)}
    if rows is not None:
        assigned = [(path, label, split) for path, label, split in rows]
        known = {p for p, _, _ in scan.items}
        missing = [p for p, _, _ in assigned if p not in known]
        if missing:
            log.warning("%d file(s) of the split manifest are gone from %s (first: %s)", len(missing), root,
                        missing[0])
        added = sorted(known - {p for p, _, _ in assigned})
        if added:
            log.warning("%d file(s) in %s are not in the split manifest and are left out, so that the split stays "
                        "as it was (first: %s)", len(added), root, added[0])
        assigned = [r for r in assigned if r[0] in known]
    else:
        assigned = assign_splits(scan, val_fraction, test_fraction, seed)
    channels = channels or detect_channels(root, [p for p, _, _ in assigned])
    out, bad = {}, []
    for split in ("train", "val", "test"):
        chosen = [(p, c) for p, c, s in assigned if s == split]
        if not chosen or (wanted and split not in wanted):
            continue
        size = split_size(img_size, split, decode_scale)
        stacked, keep, bad_here = decode_split(root, [p for p, _ in chosen], size, channels, split, use_cache,
                                                 show_progress, max_pixels)
        bad += bad_here
        images = torch.from_numpy(stacked)
        out[split] = ImageSet(images, torch.tensor([label_of[chosen[i][1]] for i in keep], dtype=torch.int64),
                              [chosen[i][0] for i in keep])
    mean, std = folder_stats(out.get("train") or next(iter(out.values()), None), channels)
    return DataBundle(str(root), scan.classes, out, img_size, channels, mean, std, True, bad, assigned)


def _load_labeled(root, spec, img_size, channels, val_fraction, test_fraction, seed, rows, wanted, use_cache,
                  show_progress, max_pixels, decode_scale=1.0) -> DataBundle:
    """The images a label file lists, split (by group where it has groups, stratified by label) or as `rows` say."""
    table = read_labels(root, spec)
    if img_size is None:
        raise DataError("an image folder needs an image size: pass --img-size or choose a model with one")
    split_of = label_splits(table, val_fraction, test_fraction, seed, rows)
    channels = channels or detect_channels(root, table.files)
    out, bad = {}, list(table.missing)
    for split in ("train", "val", "test"):
        chosen = [i for i, s in enumerate(split_of) if s == split]
        if not chosen or (wanted and split not in wanted):
            continue
        stacked, keep, bad_here = decode_split(root, [table.files[i] for i in chosen],
                                                 split_size(img_size, split, decode_scale), channels, split,
                                                 use_cache, show_progress, max_pixels)
        bad += bad_here
        picked = [chosen[k] for k in keep]
        out[split] = ImageSet(torch.from_numpy(stacked), torch.from_numpy(table.targets[picked]),
                              [table.files[i] for i in picked])
    mean, std = folder_stats(out.get("train") or next(iter(out.values()), None), channels)
    manifest = [(f, label_text(table, i), s) for i, (f, s) in enumerate(zip(table.files, split_of)) if s]
    return DataBundle(str(root), table.classes, out, img_size, channels, mean, std, True, bad, manifest)


def label_text(table: LabelTable, i: int) -> str:
    """Item i's labels as the manifest records them: the class, or the positive labels joined by '|'."""
    if not table.multi_label:
        return table.classes[int(table.targets[i])]
    return "|".join(c for c, v in zip(table.classes, table.targets[i]) if v == 1)


def label_splits(table: LabelTable, val_fraction: float, test_fraction: float, seed: int, rows) -> list[str]:
    """Each listed image's split: the manifest's (images it lacks are left out), or a new seeded split that keeps
    groups whole and label shares even."""
    if rows is not None:
        recorded = {p: s for p, _, s in rows}
        added = sum(1 for f in table.files if f not in recorded)
        if added:
            log.warning("%d image(s) of %s are not in the split manifest and are left out, so that the split stays "
                        "as it was", added, table.source.name)
        return [recorded.get(f, "") for f in table.files]
    fractions = {k: v for k, v in (("val", val_fraction), ("test", test_fraction)) if v > 0}
    if table.groups is None and not table.multi_label:
        parts = stratified_split(table.targets, fractions, seed)
        split_of = [""] * len(table.files)
        for name, idx in parts.items():
            for i in idx:
                split_of[int(i)] = name
        return split_of
    return list(iterative_split(table.targets, fractions, seed, table.groups))


def _load_shards(root: Path, img_size, channels, wanted) -> DataBundle:
    """Shards written by `vitkit data shard`: train streams from disk, val and test are decoded into memory."""

    index = read_index(root)
    if img_size is None:
        raise DataError("sharded data needs an image size: pass --img-size or choose a model with one")
    channels = channels or shard_channels(root, index)
    out: dict = {}
    for split, info in index["splits"].items():
        if wanted and split not in wanted:
            continue
        shard_set = ShardSet(root, info["shards"], info["count"], info["class_counts"], img_size, channels,
                             len(index["classes"]))
        out[split] = shard_set if split == "train" else shard_set.decode()
        log.info("%s: %d images in %d shard(s)%s", split, info["count"], len(info["shards"]),
                 ", streamed from disk" if split == "train" else "")
    sample = out["train"].decode(limit=2000) if "train" in out else next(iter(out.values()), None)
    mean, std = folder_stats(sample, channels)
    bad = [tuple(b) for b in index.get("bad_files", [])]
    return DataBundle(str(root), index["classes"], out, img_size, channels, mean, std, True, bad, [])


def decode_split(root: Path, paths: list[str], size: int, channels: int, split: str, use_cache: bool = True,
                 show_progress: bool = True, max_pixels: int | None = None
                 ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """A split's images as one uint8 array (K, C, H, W), the indices of `paths` decoded, and the bad files.

    With `use_cache`, from the decode cache when the same files were decoded the same way before (`data/cache.py`).
    """
    key = content_key(root, paths, size, channels, max_pixels) if use_cache and paths else None
    cached = load_entry(key) if key else None
    if cached is not None:
        log.info("%s: %d decoded images from the cache (%s)", split, len(cached[0]), cache_root() / key)
        return cached
    arrays, bad = decode_all(root, paths, size, channels, desc=f"decoding {split}", show_progress=show_progress,
                             max_pixels=max_pixels)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    images = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, channels, size, size), np.uint8)
    if key:
        save_entry(key, images, keep, bad)
    return images, keep, bad


def check_bad_files(bad: list[tuple[str, str]], total: int, max_fraction: float, listed_in: str | None = None) -> None:
    """Log the files that could not be decoded; raise `DataError` when they are more than `max_fraction`."""
    if not bad:
        return
    shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
    where = f", listed in {listed_in}" if listed_in else ""
    log.warning("skipped %d unreadable file(s) of %d%s: %s%s", len(bad), total, where, shown,
                " ..." if len(bad) > 3 else "")
    if len(bad) / max(total, 1) > max_fraction:
        raise DataError(f"{len(bad)} of {total} files cannot be read (more than data.max_bad_fraction={max_fraction}): "
                        f"fix the data (run 'vitkit data check' on it) or raise the limit")


def folder_stats(images: ImageSet | None, channels: int, chunk: int | None = None
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training images (on up to 10,000 of them), summed `chunk` images at a time
    (default: about 2M pixel values, 16 MB of float64): memory stays flat instead of holding the whole sample as
    floats (12 GB for 9,000 RGB images at 224 px)."""
    if images is None or len(images) == 0:
        return (0.5,) * channels, (0.5,) * channels
    sample = images.images[:: max(1, len(images) // 10_000)]  # a strided view: nothing is copied yet
    sums = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in sample.split(chunk or max(1, 2**21 // sample[0].numel())):
        x = part.to(torch.float64)
        sums += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = sample.numel() // channels
    mean = sums / n
    std = ((squares - n * mean.square()) / max(n - 1, 1)).clamp_min(0).sqrt()
    mean, std = mean / 255.0, (std / 255.0).clamp_min(1e-3)
    return tuple(round(m, 4) for m in mean.tolist()), tuple(round(s, 4) for s in std.tolist())
