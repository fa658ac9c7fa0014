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
    """Images (N, C, H, W) uint8, labels (N,) int64 (or, multi-label, (N, L) float32 multi-hot with NaN for an
    uncertain label to ignore) and an id per image (a relative path or 'train:123')."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    streamed = False

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """Images per class (multi-label: positives per label)."""
        if self.labels.ndim == 2:
            return self.labels.nan_to_num(0.0).sum(0).float()
        return torch.bincount(self.labels, minlength=num_classes).float()


def is_multi_label(split: Split | None) -> bool:
    """Whether a split's labels are multi-hot rows (label files with several labels per image; shards never are)."""
    labels = getattr(split, "labels", None)
    return labels is not None and labels.ndim == 2


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


def iterative_split(targets: np.ndarray, fractions: dict[str, float], seed: int,
                    groups: list[str] | None = None) -> np.ndarray:
    """The split ('train' or a key of `fractions`) of each item, keeping every label's share in each split (iterative
    stratification, Sechidis et al. 2011) and, with `groups`, every group's items in one split.

    `targets`: class indices (N,) or multi-hot rows (N, L) (NaN counts as absent). The units that are placed are the
    groups (or the items): the label with the fewest unplaced examples goes first, each of its units to the split that
    still wants that label most (then the most items, then a seeded draw); units without labels fill the splits
    that want the most items.
    """
    rng = np.random.default_rng(seed)
    y = np.eye(int(targets.max()) + 1 if len(targets) else 1)[targets] if targets.ndim == 1 else \
        np.nan_to_num(targets) > 0
    unit_of = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(len(y))
    units = int(unit_of.max()) + 1 if len(y) else 0
    sizes = np.bincount(unit_of, minlength=units).astype(float)
    unit_labels = np.zeros((units, y.shape[1]))
    np.add.at(unit_labels, unit_of, y.astype(float))
    names = ["train", *fractions]
    shares = np.array([1.0 - sum(fractions.values()), *fractions.values()])
    want, want_label = shares * len(y), np.outer(shares, y.sum(0))
    placed = np.full(units, -1)
    left = unit_labels.sum(0)
    order = rng.permutation(units)

    def place(u: int, scores: np.ndarray) -> None:
        best = np.flatnonzero(scores == scores.max())
        if len(best) > 1:
            best = best[want[best] == want[best].max()]
        s = int(rng.choice(best))
        placed[u] = s
        want[s] -= sizes[u]
        want_label[s] -= unit_labels[u]
        left[:] -= unit_labels[u]

    while (placed < 0).any():
        active = np.flatnonzero(left > 0)
        if len(active) == 0:  # the units without any label left to place
            for u in order[placed[order] < 0]:
                place(int(u), want.copy())
            break
        label = int(active[np.argmin(left[active])])
        for u in order[(placed[order] < 0) & (unit_labels[order, label] > 0)]:
            place(int(u), want_label[:, label].copy())
    return np.array(names, dtype=object)[placed[unit_of]] if len(y) else np.array([], dtype=object)
