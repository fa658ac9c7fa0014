"""Image folders: class subfolders (split by us) or train/ val/ [test/] subfolders (split by the user)."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from .images import GRAY_MODES, BadImage, decode, image_mode, is_hidden

log = logging.getLogger(__name__)

SPLIT_DIRS = ("train", "val", "test")


@dataclass
class FolderScan:
    """Every candidate file of a folder dataset: (path relative to root, class name, split or None)."""

    root: Path
    classes: list[str]
    items: list[tuple[str, str, str | None]]
    empty: list[str] = field(default_factory=list)  # class folders with no files (relative paths)
    hidden: list[str] = field(default_factory=list)  # hidden files and folders that were ignored

    @property
    def has_splits(self) -> bool:
        return bool(self.items) and self.items[0][2] is not None


def _class_dirs(directory: Path, hidden: list[Path]) -> list[Path]:
    entries = [p for p in directory.iterdir() if p.is_dir()]
    hidden += [p for p in entries if is_hidden(p)]
    return sorted(p for p in entries if not is_hidden(p))


def _files(directory: Path, hidden: list[Path]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        hidden += [Path(dirpath) / d for d in dirnames if is_hidden(Path(d))]
        hidden += [Path(dirpath) / f for f in filenames if is_hidden(Path(f))]
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(Path(d)))
        found += [Path(dirpath) / f for f in sorted(filenames) if not is_hidden(Path(f))]
    return found


def list_folder(root: str | os.PathLike) -> FolderScan:
    """List the classes and files of `root` as they are, empty classes included; hidden entries are never classes
    or images. Raises `DataError` only when `root` is not a folder of class folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist: give a folder of class subfolders or a named dataset")
    hidden: list[Path] = [p for p in root.iterdir() if not p.is_dir() and is_hidden(p)]
    top = _class_dirs(root, hidden)
    names = {p.name for p in top}
    # train/ and val/ (and test/), or train/ and test/ alone: then val is held out of train/
    has_splits = names >= {"train", "val"} or (names >= {"train", "test"} and names <= set(SPLIT_DIRS))
    split_dirs = [(root / s, s) for s in SPLIT_DIRS if (root / s).is_dir()] if has_splits else [(root, None)]
    classes = sorted({c.name for d, _ in split_dirs for c in _class_dirs(d, hidden)})
    if not classes:
        raise DataError(f"{root} has no class subfolders: put each class's images in a subfolder named after it "
                        "(e.g. data/cat/*.jpg, data/dog/*.jpg), or train/ and val/ folders of those")
    items, empty = [], []
    for directory, split in split_dirs:
        for cls in classes:
            files = _files(directory / cls, hidden) if (directory / cls).is_dir() else []
            if not files and (split in (None, "train")):
                empty.append(str((directory / cls).relative_to(root)))
            items += [(str(f.relative_to(root)), cls, split) for f in files]
    return FolderScan(root, classes, items, empty, sorted({str(h.relative_to(root)) for h in hidden}))


def scan_folder(root: str | os.PathLike, allow_empty_classes: bool = False) -> FolderScan:
    """`list_folder`, refusing what training cannot use: empty class folders (unless allowed), a single class."""
    scan = list_folder(root)
    if scan.empty:
        message = f"empty class folder(s): {', '.join(scan.empty)}"
        if not allow_empty_classes:
            raise DataError(f"{message}: add images, remove the folder, or pass --allow-empty-classes")
        log.warning("%s (kept as classes with no images)", message)
    if len(scan.classes) < 2:
        raise DataError(f"{scan.root} has only one class ({scan.classes[0]}): a classifier needs at least two class "
                        "folders")
    return scan


def detect_channels(root: Path, paths: list[str], sample: int = 200) -> int:
    """1 if the (sampled) images are all grayscale, else 3."""
    step = max(1, len(paths) // sample)
    for rel in paths[::step]:
        try:
            if image_mode(root / rel) not in GRAY_MODES:
                return 3
        except BadImage:
            continue
    return 1


def decode_all(root: Path, paths: list[str], size: int, channels: int, desc: str = "decoding",
               show_progress: bool = True, max_pixels: int | None = None
               ) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
    """Decode every file (threads: Pillow releases the GIL while decoding). Bad files come back as None + reason."""
    def one(rel: str):
        try:
            return decode(root / rel, size, channels, max_pixels), None
        except BadImage as err:
            return None, str(err)

    arrays, bad = [], []
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        for rel, (arr, reason) in zip(paths, tqdm(pool.map(one, paths, chunksize=64), total=len(paths), desc=desc,
                                                  unit="img", leave=False,
                                                  disable=True if len(paths) < 500 or not show_progress else None)):
            arrays.append(arr)
            if reason is not None:
                bad.append((rel, reason))
    return arrays, bad
