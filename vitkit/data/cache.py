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
    """(images memory-mapped (K, C, H, W), indices of the decoded files, bad files) or None when not cached."""
    folder = cache_root() / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: writable, the file never changes
    except (OSError, ValueError):
        return None
    return images, meta["keep"], [tuple(b) for b in meta["bad"]]


def save_entry(key: str, images: np.ndarray, keep: list[int], bad: list[tuple[str, str]]) -> None:
    """Write an entry atomically (temporary folder, then rename); a full disk only costs the cache."""
    root, tmp = cache_root(), None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key[:16]}."))
        np.save(tmp / "images.npy", images)
        (tmp / "meta.json").write_text(json.dumps({"keep": keep, "bad": bad, "shape": list(images.shape)}))
        os.replace(tmp, root / key)
    except OSError as err:
        log.warning("could not write the decode cache in %s (%s); decoding will happen again next run", root, err)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
