"""Named datasets read from their standard files: IDX (Fashion-MNIST, MNIST) and CIFAR's Python pickles.

Files are looked for in `--data-root`, then in the per-user data directory, then (Fashion-MNIST) in Debian's
`dataset-fashion-mnist` location. Missing files are downloaded from the official source with a progress bar and
checked against their published MD5; offline, one message says where to put which files.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedDataset:
    name: str
    classes: tuple[str, ...]
    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # whether mirrored images still belong to their class
    base_url: str
    files: dict[str, str]  # file name -> MD5 of the official download
    system_dirs: tuple[str, ...] = field(default_factory=tuple)


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, NamedDataset] = {
    "fashion-mnist": NamedDataset(
        "fashion-mnist", FASHION_CLASSES, 28, 1, (0.2860,), (0.3530,), True,
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        ("/usr/share/datasets/fashion-mnist",)),
    "mnist": NamedDataset(
        "mnist", tuple(str(i) for i in range(10)), 28, 1, (0.1307,), (0.3081,), False,
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        ("/usr/share/datasets/mnist",)),
    "cifar10": NamedDataset(
        "cifar10", CIFAR10_CLASSES, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
        "https://www.cs.toronto.edu/~kriz/", {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
    "cifar100": NamedDataset(
        "cifar100", (), 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
        "https://www.cs.toronto.edu/~kriz/", {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}),
}

# What each dataset's reader needs on disk, after any archive is unpacked.
_NEEDED = {
    "fashion-mnist": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                      "t10k-labels-idx1-ubyte"],
    "cifar10": ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
}
_NEEDED["mnist"] = _NEEDED["fashion-mnist"]


def user_data_dir() -> Path:
    """Where downloads go: $VITKIT_DATA, else $XDG_DATA_HOME/vitkit/datasets, else ~/.local/share/vitkit/datasets."""
    if os.environ.get("VITKIT_DATA"):
        return Path(os.environ["VITKIT_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "vitkit" / "datasets"


def _present(directory: Path, name: str) -> bool:
    for rel in _NEEDED[name]:
        if not ((directory / rel).exists() or (directory / (rel + ".gz")).exists()):
            return False
    return True


def candidate_dirs(name: str, data_root: str | os.PathLike | None) -> list[Path]:
    spec = DATASETS[name]
    dirs = []
    if data_root:
        dirs += [Path(data_root) / name, Path(data_root)]
    dirs.append(user_data_dir() / name)
    dirs += [Path(d) for d in spec.system_dirs]
    return dirs


def locate(name: str, data_root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The directory holding `name`'s files, downloading them into the first candidate directory if needed."""
    dirs = candidate_dirs(name, data_root)
    for directory in dirs:
        if _present(directory, name):
            return directory
    target = dirs[0]
    files = ", ".join(DATASETS[name].files)
    where = f"{target} (also searched: {', '.join(str(d) for d in dirs[1:])})"
    if not download:
        raise DataError(f"{name} files not found: put {files} in {where}")
    try:
        fetch(name, target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataError(
            f"{name} files not found and the download failed ({getattr(err, 'reason', err)}): "
            f"download {files} from {DATASETS[name].base_url} and put them in {where}"
            + (" (or on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else "")
        ) from None
    return target


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


MAX_DOWNLOAD = 1 << 30  # bytes: the largest file a dataset download may be (CIFAR-100's archive is 161 MB)


def download_file(url: str, dest: Path, md5: str, timeout: float = 30.0, max_bytes: int = MAX_DOWNLOAD) -> None:
    """Download `url` to `dest` with a progress bar; the file appears under its name only once its MD5 matches. The
    partial file is this process's own (`NAME.PID.part`), and a download larger than `max_bytes` stops there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    too_large = DataError(f"{url} is larger than {max_bytes:,} bytes, far more than the dataset's file: refusing it")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total is not None and total > max_bytes:
                raise too_large
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    if out.tell() + len(chunk) > max_bytes:
                        raise too_large
                    out.write(chunk)
                    bar.update(len(chunk))
        got = md5sum(tmp)
        if got != md5:
            raise DataError(f"checksum mismatch for {url} (MD5 {got}, expected {md5}): the download was corrupted "
                            "or the source changed; try again or put the official file in place by hand")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, target: Path) -> None:
    """Download `name`'s files into `target`. Processes that fetch at once (the ranks of a torchrun job) take turns
    on a lock in `target`, so the first downloads and the others find the files. An archive already there is
    extracted only when its MD5 is the expected one, else downloaded again."""
    import fcntl

    spec = DATASETS[name]
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".download.lock", "a") as lock:
        with contextlib.suppress(OSError):  # a file system without locks: each process downloads its own copy
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _present(target, name):
            return
        log.info("downloading %s into %s", name, target)
        for filename, md5 in spec.files.items():
            dest = target / filename
            if dest.exists() and filename.endswith(".tar.gz") and md5sum(dest) != md5:
                log.warning("%s is not the expected file (MD5 differs): downloading it again", dest)
                dest.unlink()
            if not dest.exists():
                download_file(spec.base_url + filename, dest, md5)
            if filename.endswith(".tar.gz"):
                with tarfile.open(dest) as tar:
                    tar.extractall(target, filter="data")


# -------------------------------------------------------------------------------------------------- readers
def _open(path: Path):
    gz = path.with_name(path.name + ".gz")
    return open(path, "rb") if path.exists() else gzip.open(gz, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz beside it): magic, dimension sizes (big-endian), then uint8 data."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes: replace it with the official file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({body.size} of {int(np.prod(shape))} values): replace it")
    return body.reshape(shape)


class _SafeUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickles (dicts of lists, bytes and numpy arrays) and refuses any other global, so no code runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # bytes in protocol-2 pickles

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_pickle(path: Path) -> dict:
    with _open(path) as f:
        try:
            raw = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise DataError(f"{path} is not a CIFAR batch file ({err}): replace it with the official file") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar_arrays(batches: list[dict], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return images, labels


def read_named(name: str, directory: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """{'train': (images (N, C, H, W) uint8, labels (N,) int64), 'test': ...} and the class names."""
    if name in ("fashion-mnist", "mnist"):
        out = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(directory / f"{prefix}-images-idx3-ubyte")[:, None]  # (N, 1, 28, 28)
            labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
            if len(images) != len(labels):
                raise DataError(f"{name} {split}: {len(images)} images but {len(labels)} labels: replace the files")
            out[split] = (images, labels)
        return out, DATASETS[name].classes
    if name == "cifar10":
        base = directory / "cifar-10-batches-py"
        train = [read_cifar_pickle(base / f"data_batch_{i}") for i in range(1, 6)]
        meta = read_cifar_pickle(base / "batches.meta")
        classes = tuple(c.decode() if isinstance(c, bytes) else c for c in meta["label_names"])
        return {"train": _cifar_arrays(train, "labels"),
                "test": _cifar_arrays([read_cifar_pickle(base / "test_batch")], "labels")}, classes
    base = directory / "cifar-100-python"
    meta = read_cifar_pickle(base / "meta")
    classes = tuple(c.decode() if isinstance(c, bytes) else c for c in meta["fine_label_names"])
    return {"train": _cifar_arrays([read_cifar_pickle(base / "train")], "fine_labels"),
            "test": _cifar_arrays([read_cifar_pickle(base / "test")], "fine_labels")}, classes


def load_named(name: str, data_root: str | os.PathLike | None = None, download: bool = True):
    directory = locate(name, data_root, download)
    log.info("reading %s from %s", name, directory)
    return read_named(name, directory)


__all__ = ["DATASETS", "download_file", "load_named", "locate", "read_cifar_pickle", "read_idx", "user_data_dir"]
