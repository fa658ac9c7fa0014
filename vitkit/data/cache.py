"""Image folders decoded once: each split's uint8 array cached on disk, memory-mapped, reused across runs.

The key is a hash of every file's bytes and relative path, in order, and of the preprocessing (size, channels,
resize method, pixel limit, cache version): a changed, added or removed file, or another image size, is a new entry,
never a stale one. Hashing reads the files but decodes nothing, which is what costs (a PNG decodes 10-100x slower
than it reads). Entries live in `$VITKIT_CACHE` (default `~/.cache/vitkit/decoded`), one folder each with
`images.npy` and `meta.json`, written to a temporary folder and renamed, so an interrupted write leaves no entry.
Delete the folder to reclaim the space.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write, fsync_dir

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("VITKIT_CACHE") or Path.home() / ".cache" / "vitkit" / "decoded")


def content_key(root: Path, paths: list[str], size: int, channels: int, max_pixels: int | None = None) -> str:
    """SHA-256 over the preprocessing and every file's path and bytes (read in threads)."""
    def digest(rel: str) -> bytes:
        try:
            return hashlib.sha256((root / rel).read_bytes()).digest()
        except OSError as err:
            return f"unreadable {err}".encode()

    h = hashlib.sha256(f"vitkit-decoded/{CACHE_VERSION} {size} {channels} bicubic-center-crop "
                       f"{max_pixels or Image.MAX_IMAGE_PIXELS}".encode())
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        for rel, d in zip(paths, pool.map(digest, paths, chunksize=256)):
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + d)
    return h.hexdigest()


def load_entry(key: str) -> tuple[np.ndarray, list[int], list[tuple[str, str]]] | None:
    """(images memory-mapped (K, C, H, W), indices of the decoded files, bad files) or None when not cached. An entry
    that does not hold together (a truncated array, a damaged meta.json, a shape that is not the recorded one) is
    removed, so the next run writes it anew."""
    folder = cache_root() / key
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: writable, the file never changes
        keep, bad = meta["keep"], [tuple(b) for b in meta["bad"]]
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8 or len(keep) != images.shape[0]:
            raise ValueError(f"shape {images.shape} {images.dtype}, recorded {meta['shape']} for {len(keep)} files")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("the decode cache entry %s is damaged (%s): removing it; the images will be decoded again",
                    folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return images, keep, bad


def save_entry(key: str, images: np.ndarray, keep: list[int], bad: list[tuple[str, str]]) -> None:
    """Write an entry atomically and durably (files synced in a temporary folder, then renamed); a full disk only
    costs the cache, and an entry another process wrote meanwhile is kept."""
    root, tmp = cache_root(), None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key[:16]}."))
        with open(tmp / "images.npy", "wb") as f:
            np.save(f, images)
            f.flush()
            os.fsync(f.fileno())
        atomic_write(tmp / "meta.json", json.dumps({"keep": keep, "bad": bad, "shape": list(images.shape)}))
        try:
            os.replace(tmp, root / key)
        except OSError:
            if not (root / key).is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the same entry, written by another run at the same time
        fsync_dir(root)
    except OSError as err:
        log.warning("could not write the decode cache in %s (%s); decoding will happen again next run", root, err)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
