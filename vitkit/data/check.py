"""`vitkit data check`: what in a dataset would hurt training, reported file by file before a run.

Every file is opened by content, never judged by its extension: empty, truncated, unreadable and non-image files,
decompression bombs, tiny images, extreme aspect ratios, EXIF rotation, unusual modes, and exact and near-duplicate
images, flagged when they land in different splits (a validation image that is also a training image). The splits
are the ones `vitkit train` would use: the folder's own train/val/test, or the same seeded split. A label file's
images are checked too, with its missing and unlisted files, groups across splits, per-label counts and
co-occurrence, and copies of one image labelled two ways.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .dataset import convert_channels, is_named, label_splits, label_text
from .folder import list_folder
from .images import MAX_ASPECT_RATIO, BadImage, exif_orientation, open_image, to_mode
from .labels import LabelSpec, labeled_by_file, read_labels
from .named import load_named
from .splits import assign_splits, stratified_split

HASH_SHAPE = (16, 17)  # difference hash: 16 rows of 16 left-right comparisons, 256 bits
NEAR_DUPLICATE_BITS = 8  # near-duplicate candidates: at most this many of the 256 hash bits differ
MAX_THUMB_DIFF = 2.0  # and their 16x17 gray thumbnails differ by at most this many levels (of 255) on average
MAX_NEAR_SEARCH = 100_000  # above this many images the all-pairs near-duplicate search is skipped
MIN_SIDE = 16  # images smaller than this on a side are reported as tiny
MAX_ASPECT = 4.0  # wider or taller than this: centre cropping keeps little of the image
ODD_MODES = {"CMYK": "converted from CMYK", "I;16": "16-bit, scaled to 8 bits", "I;16B": "16-bit, scaled to 8 bits",
             "I;16L": "16-bit, scaled to 8 bits", "I": "32-bit integer, scaled to 8 bits",
             "F": "floating point, scaled to 8 bits", "RGBA": "transparency composited on black",
             "LA": "transparency composited on black", "PA": "transparency composited on black",
             "P": "palette image, converted", "1": "1-bit image, converted"}


@dataclass
class Finding:
    severity: str  # 'error' (training cannot proceed), 'warning' (hurts training) or 'info'
    kind: str
    path: str
    detail: str


@dataclass
class FileFacts:
    path: str
    cls: str
    split: str
    problem: tuple[str, str] | None = None  # (kind, reason) when the file cannot be used
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] = (0, 0)
    orientation: int = 1
    pixel_hash: str = ""
    thumb: np.ndarray | None = None  # gray HASH_SHAPE thumbnail for the difference hash


@dataclass
class CheckReport:
    source: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> usable images
    files: int = 0
    unusable: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    imbalance_ratio: float | None = None
    findings: list[Finding] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)  # why training cannot proceed; empty when it can
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


# ----------------------------------------------------------------------------------------------- one file
def inspect_file(root: Path, rel: str, cls: str, split: str, max_pixels: int | None = None) -> FileFacts:
    facts = FileFacts(rel, cls, split)
    path = root / rel
    try:
        data = path.read_bytes()
    except OSError as err:
        facts.problem = ("unreadable", f"cannot read the file ({err.strerror or err})")
        return facts
    if not data:
        facts.problem = ("empty-file", "zero bytes")
        return facts
    try:
        with open_image(io.BytesIO(data), max_pixels) as img:
            facts.format, facts.mode, facts.size = img.format, img.mode, img.size
            w, h = img.size
            if max(w, h) > MAX_ASPECT_RATIO * max(min(w, h), 1):
                raise BadImage(f"{w}x{h}: an aspect ratio beyond {MAX_ASPECT_RATIO}:1", "aspect-ratio")
            img.load()
            facts.orientation = exif_orientation(img)
            facts.pixel_hash = hashlib.sha256(img.mode.encode() + str(img.size).encode() + img.tobytes()).hexdigest()
            gray = to_mode(img, 1).resize(HASH_SHAPE[::-1], Image.Resampling.BILINEAR)
            facts.thumb = np.asarray(gray, dtype=np.float32)
    except BadImage as err:
        facts.problem = ("decompression-bomb" if err.reason == "too-large" else err.reason, str(err))
    except Image.UnidentifiedImageError:
        facts.problem = ("not-an-image", "the content is not an image format Pillow can read")
    except (OSError, ValueError, SyntaxError) as err:
        text = str(err) or type(err).__name__
        facts.problem = ("truncated" if "truncated" in text else "unreadable", text)
    return facts


def _file_findings(f: FileFacts) -> list[Finding]:
    if f.problem:
        return [Finding("warning", f.problem[0], f.path, f"{f.problem[1]}; training skips it")]
    out = []
    w, h = f.size
    if min(w, h) < MIN_SIDE:
        out.append(Finding("warning", "tiny", f.path, f"{w}x{h} pixels"))
    if max(w, h) / max(min(w, h), 1) > MAX_ASPECT:
        out.append(Finding("warning", "aspect-ratio", f.path, f"{w}x{h}: the centre crop keeps "
                                                            f"{min(w, h) / max(w, h):.0%} of it"))
    if f.orientation != 1:
        out.append(Finding("info", "exif-rotated", f.path, f"EXIF orientation {f.orientation}, applied when loading"))
    if f.mode in ODD_MODES:
        out.append(Finding("info", "mode", f.path, f"mode {f.mode}: {ODD_MODES[f.mode]}"))
    suffix = Path(f.path).suffix.lower().lstrip(".")
    expected = {"JPEG": {"jpg", "jpeg", "jpe", "jfif"}, "TIFF": {"tif", "tiff"}, "PPM": {"ppm", "pgm", "pbm", "pnm"}}
    if f.format and suffix not in expected.get(f.format, {f.format.lower()}):
        out.append(Finding("info", "extension", f.path, f"the content is {f.format} but the name ends in "
                                                        f"'{suffix or '(nothing)'}'"))
    return out


# ------------------------------------------------------------------------------------------- duplicates
def difference_hash(thumbs: torch.Tensor) -> torch.Tensor:
    """Gray thumbnails (N, 16, 17) to 256-bit difference hashes (N, 256) bool: is each pixel darker than the next."""
    return (thumbs[:, :, 1:] > thumbs[:, :, :-1]).flatten(1)


def near_pairs(bits: torch.Tensor, thumbs: torch.Tensor, max_bits: int, max_diff: float = MAX_THUMB_DIFF,
               chunk: int = 1024, limit: int = 100_000) -> list[tuple[int, int, float]]:
    """(i, j, mean gray difference) of every pair i < j that looks the same: hashes differing in at most `max_bits`
    bits, then thumbnails within `max_diff` gray levels on average (the hash alone pairs many merely similar images).

    Hamming distances come from one matrix product of +-1 codes, d = (bits - <a, b>) / 2, exact in bfloat16 because
    every partial sum is an integer of magnitude at most 256.
    """
    n, nbits = bits.shape
    codes = bits.to(torch.bfloat16) * 2 - 1
    found: list[tuple[int, int, float]] = []
    for start in range(0, n, chunk):
        dots = codes[start:start + chunk] @ codes[start:].T  # (c, n - start)
        i, j = torch.nonzero(dots >= nbits - 2 * max_bits, as_tuple=True)
        keep = j > i  # pairs above the diagonal, each once
        i, j = i[keep] + start, j[keep] + start
        diff = (thumbs[i] - thumbs[j]).abs().mean(dim=(1, 2))
        close = diff <= max_diff
        found += zip(i[close].tolist(), j[close].tolist(), diff[close].tolist())
        if len(found) >= limit:
            return found[:limit]
    return found


def duplicate_findings(paths: list[str], splits: list[str], pixel_hashes: list[str], thumbs: torch.Tensor,
                       max_bits: int = NEAR_DUPLICATE_BITS, labels: list[str] | None = None
                       ) -> tuple[list[Finding], list[str]]:
    """Exact (same pixels) and near (similar difference hash) duplicates; across splits they are warnings, and so
    are exact copies with different `labels` (the same image labelled two ways)."""
    findings, notes = [], []
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(pixel_hashes):
        groups.setdefault(h, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        first = members[0]
        for other in members[1:]:
            if labels is not None and labels[other] != labels[first]:
                findings.append(Finding("warning", "duplicate-with-other-labels", paths[other],
                                        f"the same pixels as {paths[first]}, labelled {labels[other] or 'none'!r} "
                                        f"there {labels[first] or 'none'!r}"))
                continue
            leak = splits[other] != splits[first]
            findings.append(Finding("warning" if leak else "info", "duplicate-across-splits" if leak else "duplicate",
                                    paths[other], f"{splits[other]} image with the same pixels as {paths[first]} "
                                                  f"({splits[first]})"))
    if len(paths) > MAX_NEAR_SEARCH:
        notes.append(f"near-duplicate search skipped: more than {MAX_NEAR_SEARCH:,} images")
        return findings, notes
    pairs = near_pairs(difference_hash(thumbs), thumbs, max_bits)
    if len(pairs) >= 100_000:
        notes.append("more than 100,000 near-duplicate pairs: only the first ones are listed")
    for i, j, d in pairs:
        if pixel_hashes[i] == pixel_hashes[j]:
            continue
        leak = splits[i] != splits[j]
        findings.append(Finding("warning" if leak else "info",
                                "near-duplicate-across-splits" if leak else "near-duplicate", paths[j],
                                f"{splits[j]} image that looks like {paths[i]} ({splits[i]}; mean difference "
                                f"{d:.1f} of 255)"))
    return findings, notes


# ------------------------------------------------------------------------------------------ the datasets
def check_data(source: str, *, data_root: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0,
               seed: int = 0, allow_empty_classes: bool = False, max_bad_fraction: float = 0.1,
               near_duplicate_bits: int = NEAR_DUPLICATE_BITS, show_progress: bool = True,
               max_image_pixels: int | None = None, labels: LabelSpec | None = None) -> CheckReport:
    """Check an image folder or a named dataset; `report.blocking` says why training could not proceed.
    `max_image_pixels`: refuse larger images as possible decompression bombs (default: as training does). With a
    label file in `labels` (or a folder with Hugging Face's metadata file), the images it lists."""
    if labeled_by_file(source, labels):
        return _check_labeled(Path(source), labels, val_fraction, test_fraction, seed, max_bad_fraction,
                              near_duplicate_bits, show_progress, max_image_pixels)
    if is_named(source):
        return _check_named(source.lower(), data_root, val_fraction, seed, near_duplicate_bits)
    return _check_folder(Path(source), val_fraction, test_fraction, seed, allow_empty_classes, max_bad_fraction,
                         near_duplicate_bits, show_progress, max_image_pixels)


def _check_folder(root: Path, val_fraction, test_fraction, seed, allow_empty, max_bad, max_bits, show_progress,
                  max_pixels=None) -> CheckReport:
    try:
        scan = list_folder(root)
    except DataError as err:
        if not root.is_dir():
            raise
        return CheckReport(str(root), "unusable", [], {}, blocking=[str(err)])
    present = [s for s in ("train", "val", "test") if any(item[2] == s for item in scan.items)]
    layout = "/".join(present) + " folders" if scan.has_splits else (
        f"class folders, split as 'vitkit train' would (val {val_fraction}, test {test_fraction}, seed {seed})")
    assigned = assign_splits(scan, val_fraction, test_fraction, seed)
    facts = _inspect_all(root, assigned, max_pixels, show_progress)
    report = CheckReport(str(root), layout, scan.classes, {}, files=len(facts))
    for f in facts:
        report.findings += _file_findings(f)
    good = [f for f in facts if f.problem is None]
    report.unusable = len(facts) - len(good)
    report.modes = dict(Counter(f.mode for f in good).most_common())
    report.formats = dict(Counter(f.format for f in good).most_common())
    report.counts = _counts([(f.split, f.cls) for f in good], scan.classes)
    for folder in scan.empty:
        severity = "warning" if allow_empty else "error"
        report.findings.append(Finding(severity, "empty-class", folder, "no files in this class folder"))
        if not allow_empty:
            report.blocking.append(f"empty class folder {folder}: add images, remove it, or pass "
                                   "--allow-empty-classes")
    if scan.hidden:
        report.notes.append(f"ignored {len(scan.hidden)} hidden file(s)/folder(s): "
                            + ", ".join(scan.hidden[:5]) + (" ..." if len(scan.hidden) > 5 else ""))
    if good:
        thumbs = torch.from_numpy(np.stack([f.thumb for f in good]))
        found, notes = duplicate_findings([f.path for f in good], [f.split for f in good],
                                          [f.pixel_hash for f in good], thumbs, max_bits, [f.cls for f in good])
        report.findings += found
        report.notes += notes
    _summarize(report, max_bad)
    return report


def _inspect_all(root: Path, items: list[tuple[str, str, str]], max_pixels, show_progress) -> list[FileFacts]:
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        return list(tqdm(pool.map(lambda item: inspect_file(root, *item, max_pixels), items, chunksize=32),
                         total=len(items), desc="checking", unit="file", leave=False,
                         disable=None if show_progress and len(items) >= 200 else True))


def _check_labeled(root: Path, spec: LabelSpec, val_fraction, test_fraction, seed, max_bad, max_bits, show_progress,
                   max_pixels=None) -> CheckReport:
    """A label file's images: missing and unlisted files, per-label counts (and how often labels co-occur), groups
    or duplicates across splits and copies of one image with different labels, on the split training would make."""
    table = read_labels(root, spec)
    split_of = label_splits(table, val_fraction, test_fraction, seed, None)
    kind = "multi-label" if table.multi_label else "single-label"
    layout = (f"{kind} label file {table.source.name}, split as 'vitkit train' would (val {val_fraction}, test "
              f"{test_fraction}, seed {seed}{', whole groups' if table.groups else ''})")
    texts = [label_text(table, i) for i in range(len(table.files))]
    facts = _inspect_all(root, list(zip(table.files, texts, split_of)), max_pixels, show_progress)
    report = CheckReport(str(root), layout, table.classes, {}, files=len(facts) + len(table.missing))
    for f in facts:
        report.findings += _file_findings(f)
    report.findings += [Finding("warning", "missing-file", path, reason) for path, reason in table.missing]
    if table.unlisted:
        report.notes.append(f"{table.unlisted} image file(s) under {root} are not listed in {table.source.name}: "
                            "they are left out")
    good = [i for i, f in enumerate(facts) if f.problem is None]
    report.unusable = len(facts) - len(good) + len(table.missing)
    report.modes = dict(Counter(facts[i].mode for i in good).most_common())
    report.formats = dict(Counter(facts[i].format for i in good).most_common())
    report.counts = _label_counts(table, split_of, good)
    report.findings += _group_findings(table, split_of)
    if table.multi_label:
        report.notes += _co_occurrence(table, good)
    if good:
        thumbs = torch.from_numpy(np.stack([facts[i].thumb for i in good]))
        found, notes = duplicate_findings([facts[i].path for i in good], [split_of[i] for i in good],
                                          [facts[i].pixel_hash for i in good], thumbs, max_bits,
                                          [texts[i] for i in good])
        report.findings += found
        report.notes += notes
    _summarize(report, max_bad)
    return report


def _label_counts(table, split_of: list[str], good: list[int]) -> dict[str, dict[str, int]]:
    """split -> label -> usable images with that label."""
    if not table.multi_label:
        return _counts([(split_of[i], table.classes[int(table.targets[i])]) for i in good], table.classes)
    out = {}
    for split in ("train", "val", "test"):
        rows = [i for i in good if split_of[i] == split]
        if rows:
            positives = np.nan_to_num(table.targets[rows]).sum(0)
            out[split] = {c: int(n) for c, n in zip(table.classes, positives)}
    return out


def _group_findings(table, split_of: list[str]) -> list[Finding]:
    """A group (patient) whose images are in more than one split: its images leak between them."""
    if table.groups is None:
        return []
    where: dict[str, set] = {}
    for group, split in zip(table.groups, split_of):
        where.setdefault(group, set()).add(split)
    return [Finding("warning", "group-across-splits", group, f"images of this group are in {', '.join(sorted(s))}")
            for group, s in where.items() if len(s) > 1]


def _co_occurrence(table, good: list[int]) -> list[str]:
    """The images with no label, and the label pairs that most often come together."""
    y = np.nan_to_num(table.targets[good]) > 0
    pairs = (y.T.astype(np.int64) @ y.astype(np.int64))
    top = sorted(((int(pairs[a, b]), table.classes[a], table.classes[b]) for a in range(len(table.classes))
                  for b in range(a + 1, len(table.classes)) if pairs[a, b]), reverse=True)[:5]
    notes = [f"{int((~y.any(1)).sum())} image(s) have no label; {float(y.sum(1).mean()):.2f} labels per image"]
    if top:
        notes.append("labels most often together: " + ", ".join(f"{a} + {b} ({n})" for n, a, b in top))
    return notes


def _check_named(name: str, data_root, val_fraction, seed, max_bits) -> CheckReport:
    arrays, classes = load_named(name, data_root)
    train_x, train_y = arrays["train"]
    parts = stratified_split(train_y, {"val": val_fraction}, seed)
    ids, splits, labels, images = [], [], [], []
    for split, (x, y, idx, origin) in {"train": (train_x, train_y, parts["train"], "train"),
                                       "val": (train_x, train_y, parts["val"], "train"),
                                       "test": (*arrays["test"], np.arange(len(arrays["test"][1])), "test")}.items():
        ids += [f"{origin}:{i}" for i in idx]
        splits += [split] * len(idx)
        labels += y[idx].tolist()
        images.append(torch.from_numpy(x[idx]))
    x = torch.cat(images)
    report = CheckReport(name, f"named dataset (val {val_fraction} of train, seed {seed})", list(classes), {},
                         files=len(x))
    report.counts = _counts([(s, classes[c]) for s, c in zip(splits, labels)], list(classes))
    report.modes = {"L" if x.shape[1] == 1 else "RGB": len(x)}
    pixel_hashes = [hashlib.sha256(a.tobytes()).hexdigest() for a in x.numpy()]
    gray = convert_channels(x, 1).float()
    thumbs = torch.cat([F.interpolate(gray[i:i + 8192], size=HASH_SHAPE, mode="bilinear", antialias=True,
                                      align_corners=False)[:, 0] for i in range(0, len(gray), 8192)])
    found, notes = duplicate_findings(ids, splits, pixel_hashes, thumbs, max_bits)
    report.findings += found
    report.notes += notes
    _summarize(report, 1.0)
    return report


def _counts(pairs: list[tuple[str, str]], classes: list[str]) -> dict[str, dict[str, int]]:
    counter = Counter(pairs)
    splits = [s for s in ("train", "val", "test") if any(k[0] == s for k in counter)]
    return {s: {c: counter[(s, c)] for c in classes} for s in splits}


def _summarize(report: CheckReport, max_bad: float) -> None:
    """Imbalance, the share of unusable files and whether training can proceed."""
    train = report.counts.get("train", {})
    nonzero = [n for n in train.values() if n > 0]
    if nonzero:
        report.imbalance_ratio = round(max(nonzero) / min(nonzero), 2)
        if report.imbalance_ratio >= 10:
            big = max(train, key=train.get)
            small = min((c for c in train if train[c] > 0), key=train.get)
            report.findings.append(Finding("warning", "imbalance", "", f"training split imbalanced "
                                           f"{report.imbalance_ratio:g}:1 ({big} {train[big]}, {small} {train[small]})"))
    if report.files and report.unusable / report.files > max_bad:
        report.blocking.append(f"{report.unusable} of {report.files} files cannot be used, more than "
                               f"data.max_bad_fraction={max_bad}")
    if not nonzero and not report.blocking:
        report.blocking.append("no usable training images")
    if len(report.classes) < 2 and not report.blocking:
        report.blocking.append(f"only one class ({', '.join(report.classes)}): a classifier needs at least two")
    order = {"error": 0, "warning": 1, "info": 2}
    report.findings.sort(key=lambda f: (order[f.severity], f.kind, f.path))
