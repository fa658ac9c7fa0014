"""Sharded datasets for data larger than memory: WebDataset-format tar files streamed from disk.

`vitkit data shard FOLDER OUT` writes `OUT/{train,val,test}-NNNNNN.tar` and `OUT/dataset.json`. Each tar holds
samples as consecutive members sharing a key, WebDataset's layout, so other WebDataset readers can read them too:
`KEY.png` (or .jpg, ...: the original file's bytes), `KEY.cls` (the class index as text) and `KEY.id` (the file's
path in the source folder). Training images are shuffled across shards when written, so every shard mixes classes.

Training streams the train shards: each process reads its share of them (shards drawn anew each epoch), DataLoader
workers decode, a shuffle buffer mixes samples, and the batch is augmented on the training device like the
in-memory path. Validation and test splits are decoded into memory.
"""
from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataError, UserError
from ..fileio import atomic_write
from .folder import scan_folder
from .images import BadImage, decode, open_image
from .splits import ImageSet, assign_splits

log = logging.getLogger(__name__)

FORMAT = "vitkit-shards/1"
INDEX = "dataset.json"


def is_sharded(source: str | Path) -> bool:
    return (Path(source) / INDEX).is_file()


# ------------------------------------------------------------------------------------------------ writing
def write_shards(folder: str | Path, out: str | Path, shard_size: int = 1000, val_fraction: float = 0.1,
                 test_fraction: float = 0.0, seed: int = 0, show_progress: bool = True) -> dict:
    """Write the image folder `folder` as tar shards of `shard_size` samples into `out`; returns the index."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, not {shard_size}")
    out = Path(out)
    if is_sharded(out):
        raise UserError(f"{out} already holds shards ({INDEX}): choose an empty folder")
    scan = scan_folder(folder)
    label_of = {c: i for i, c in enumerate(scan.classes)}
    rows = assign_splits(scan, val_fraction, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    index = {"format": FORMAT, "source": str(folder), "classes": scan.classes, "splits": {}, "bad_files": []}
    rng = random.Random(seed)
    for split in ("train", "val", "test"):
        items = [(p, c) for p, c, s in rows if s == split]
        if not items:
            continue
        if split == "train":
            rng.shuffle(items)
        bar = tqdm(total=len(items), desc=f"sharding {split}", unit="img", disable=None if show_progress else True)
        shards, counts, key = [], [0] * len(scan.classes), 0
        for start in range(0, len(items), shard_size):
            name = f"{split}-{len(shards):06d}.tar"
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for rel, cls in items[start:start + shard_size]:
                    data = (Path(folder) / rel).read_bytes()
                    reason = _unreadable(data)
                    bar.update()
                    if reason:
                        index["bad_files"].append([rel, reason])
                        continue
                    stem = f"{key:08d}"
                    _add(tar, f"{stem}{Path(rel).suffix.lower() or '.img'}", data)
                    _add(tar, f"{stem}.cls", str(label_of[cls]).encode())
                    _add(tar, f"{stem}.id", rel.encode())
                    counts[label_of[cls]] += 1
                    key += 1
            atomic_write(out / name, buffer.getvalue())
            shards.append(name)
        bar.close()
        index["splits"][split] = {"shards": shards, "count": sum(counts), "class_counts": counts}
    atomic_write(out / INDEX, json.dumps(index, indent=1))
    if index["bad_files"]:
        log.warning("%d unreadable file(s) left out (listed in %s under bad_files)", len(index["bad_files"]),
                    out / INDEX)
    return index


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _unreadable(data: bytes) -> str | None:
    try:
        decode(data, 8, 1)
    except BadImage as err:
        return str(err)
    return None


# ------------------------------------------------------------------------------------------------ reading
def read_index(root: str | Path) -> dict:
    root = Path(root)
    try:
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {root / INDEX} ({err}): write the shards again with 'vitkit data shard'") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{root / INDEX} is not a vitkit shard index (format "
                        f"{index.get('format') if isinstance(index, dict) else None!r})")
    classes, splits = index.get("classes"), index.get("splits")
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes)
            or not isinstance(splits, dict)
            or any(len(info.get("class_counts", ())) != len(classes) for info in splits.values())):
        raise DataError(f"{root / INDEX} is damaged (its classes and class counts do not agree): write the shards "
                        "again with 'vitkit data shard'")
    missing = [s for split in index["splits"].values() for s in split["shards"] if not (root / s).is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) listed in {root / INDEX} are missing (first: {missing[0]})")
    return index


def samples(root: Path, shards: list[str], size: int, channels: int, num_classes: int
            ) -> Iterator[tuple[np.ndarray, int, str]]:
    """(image (C, size, size) uint8, label, id) of every readable sample of `shards`, in order; a sample that does
    not decode, or whose label is not one of the `num_classes` classes, is logged and skipped."""
    for name in shards:
        with tarfile.open(root / name, mode="r|") as tar:  # a stream: one pass, no seeking
            parts: dict[str, bytes] = {}
            current = None
            for member in tar:
                stem, _, ext = member.name.partition(".")
                if stem != current and current is not None:
                    yield from _sample(parts, size, channels, name, num_classes)
                    parts = {}
                current = stem
                parts[ext] = tar.extractfile(member).read() if member.isfile() else b""
            if parts:
                yield from _sample(parts, size, channels, name, num_classes)


def _sample(parts: dict[str, bytes], size: int, channels: int, shard: str, num_classes: int):
    image = next((v for k, v in parts.items() if k not in ("cls", "id")), None)
    sample_id = parts.get("id", b"?").decode(errors="replace")
    try:
        if image is None or "cls" not in parts:
            raise BadImage("no image or no .cls member")
        label = int(parts["cls"])
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} is not one of the index's {num_classes} classes")
        yield decode(image, size, channels), label, sample_id
    except (BadImage, ValueError) as err:
        log.warning("skipped %s in %s: %s", sample_id, shard, err)


def shard_channels(root: Path, index: dict, sample: int = 50) -> int:
    """1 if the first training (or other) samples are all grayscale, else 3."""
    from .images import GRAY_MODES

    split = index["splits"].get("train") or next(iter(index["splits"].values()))
    seen = 0
    for name in split["shards"]:
        with tarfile.open(root / name, mode="r|") as tar:
            for member in tar:
                if member.name.endswith((".cls", ".id")) or not member.isfile():
                    continue
                try:
                    with open_image(io.BytesIO(tar.extractfile(member).read())) as img:
                        if img.mode not in GRAY_MODES:
                            return 3
                except Exception:  # a damaged sample says nothing about the others
                    continue
                seen += 1
                if seen >= sample:
                    return 1
    return 1


@dataclass
class ShardSet:
    """A split that stays on disk: its shards, size and class counts (`len`, `class_counts` as `ImageSet`)."""

    root: Path
    shards: list[str]
    count: int
    counts: list[int]
    img_size: int
    channels: int
    num_classes: int

    streamed = True

    def __len__(self) -> int:
        return self.count

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.tensor(self.counts, dtype=torch.float)[:num_classes]

    def decode(self, limit: int | None = None) -> ImageSet:
        """Decode the split (or its first `limit` samples) into memory."""
        images, labels, ids = [], [], []
        for image, label, sample_id in samples(self.root, self.shards, self.img_size, self.channels,
                                                     self.num_classes):
            images.append(image)
            labels.append(label)
            ids.append(sample_id)
            if limit is not None and len(images) >= limit:
                break
        stacked = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, self.channels, self.img_size,
                                                                                 self.img_size, dtype=torch.uint8)
        return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64), ids)


class ShardStream(torch.utils.data.IterableDataset):
    """Samples of `shards` for one pass: each DataLoader worker reads its own shards through a shuffle buffer."""

    def __init__(self, data: ShardSet, shards: list[str], seed: int, buffer: int):
        self.data, self.shards, self.seed, self.buffer = data, shards, seed, buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(self.seed * 1009 + worker)
        pool: list = []
        for image, label, _ in samples(self.data.root, self.shards[worker::workers], self.data.img_size,
                                       self.data.channels, self.data.num_classes):
            pool.append((torch.from_numpy(np.array(image)), label))  # a writable copy
            if len(pool) >= self.buffer:
                yield pool.pop(rng.randrange(len(pool)))
        rng.shuffle(pool)
        yield from pool
