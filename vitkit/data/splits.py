"""Splits: the `Split` protocol that in-memory and streamed splits share, the seeded stratified split of a folder,
and the manifest (`split.csv`) that records which image went where.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import DataError
from ..fileio import atomic_write
from .folder import FolderScan

log = logging.getLogger(__name__)

MANIFEST = "split.csv"


@runtime_checkable
class Split(Protocol):
    """What training and evaluation read of a split, in memory (`ImageSet`) or streamed from disk (`ShardSet`)."""

    streamed: bool  # True: read in passes from disk (no random access, no `images` tensor)

    def __len__(self) -> int: ...

    def class_counts(self, num_classes: int) -> torch.Tensor: ...


@dataclass
class ImageSet:
    """Images (N, C, H, W) uint8, labels (N,) int64 and an id per image (a relative path or 'train:123')."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    streamed = False

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes).float()


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split indices per class with a seeded permutation; every class keeps at least one training image."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{k: [] for k in fractions}}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for split, frac in fractions.items():
            n = int(round(len(idx) * frac))
            if frac > 0 and n == 0 and len(idx) - start > 1:
                n = 1  # a tiny class still gets one held-out image
            n = min(n, len(idx) - start - 1)
            parts[split].append(idx[start:start + n])
            start += n
        parts["train"].append(idx[start:])
    return {k: np.sort(np.concatenate(v)) if v else np.array([], dtype=np.int64) for k, v in parts.items()}


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", "split"])
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


def read_manifest(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:  # names as os.listdir gives them
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["id", "label", "split"]:
            raise DataError(f"{path} is not a vitkit split manifest (header {header}): remove it to make a new split")
        return [tuple(row) for row in reader]


def assign_splits(scan: FolderScan, val_fraction: float, test_fraction: float, seed: int
                  ) -> list[tuple[str, str, str]]:
    """(path, class, split) of every file: the folder's own train/val/test, or a stratified seeded split."""
    if scan.has_splits and any(s == "val" for _, _, s in scan.items):
        return [(p, c, s) for p, c, s in scan.items]
    if scan.has_splits:  # train/ and test/ only: validation images are held out of train/
        log.info("no val/ folder in %s: %.0f%% of train/ is held out for validation", scan.root, 100 * val_fraction)
        train = [(p, c) for p, c, s in scan.items if s == "train"]
        held = _stratified(scan.classes, train, {"val": val_fraction}, seed)
        return [(p, c, held.get(i, "train")) for i, (p, c) in enumerate(train)] + \
            [(p, c, s) for p, c, s in scan.items if s != "train"]
    split_of = _stratified(scan.classes, [(p, c) for p, c, _ in scan.items], {"val": val_fraction, "test": test_fraction},
                           seed)
    return [(p, c, split_of[i]) for i, (p, c, _) in enumerate(scan.items)]


def _stratified(classes: list[str], items: list[tuple[str, str]], fractions: dict[str, float], seed: int
                ) -> dict[int, str]:
    """Index of each item to its split ('train' and those of `fractions`), stratified by class and seeded."""
    label_of = {c: i for i, c in enumerate(classes)}
    parts = stratified_split(np.array([label_of[c] for _, c in items]), fractions, seed)
    return {int(i): s for s, idx in parts.items() for i in idx}
