"""Label files: images listed with their labels in a CSV, TSV or JSON Lines file instead of class folders.

Three layouts, one reader:

- Hugging Face's imagefolder metadata: `metadata.csv` or `metadata.jsonl` beside the images, `file_name` and a
  label column (so the same folder loads in `datasets`);
- one label column, split by `label_sep` when an image may carry several (`Effusion|Infiltration`), with a value
  such as `No Finding` meaning no label (`no_label`);
- one 0/1 column per label (`label_columns`), where -1 or a blank cell is "uncertain".

The task is single-label when every row names exactly one label, multi-label when a row names several or none, or
when the labels are 0/1 columns (`task` sets it). Single-label targets are class indices (N,); multi-label ones
multi-hot (N, L) float32 with NaN where a label is uncertain and to be ignored.

Every problem names the file and the row (rows counted as a spreadsheet shows them: the header is row 1).
"""
from __future__ import annotations

import csv
import difflib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import IMAGE_SUFFIXES, is_hidden

log = logging.getLogger(__name__)

METADATA_FILES = ("metadata.csv", "metadata.jsonl")  # Hugging Face imagefolder's names
UNCERTAIN = ("ignore", "zeros", "ones")


@dataclass(frozen=True)
class LabelSpec:
    """Where the labels are and how to read them (the `data.*` label options)."""

    file: str | None = None  # None: the image folder's metadata.csv / metadata.jsonl
    file_column: str | None = None
    label_column: str | None = None
    label_sep: str | None = None
    label_columns: tuple[str, ...] = ()
    group_column: str | None = None
    no_label: str | None = None
    delimiter: str | None = None  # None: by the file's suffix (',' or tab)
    task: str = "auto"  # 'auto', 'single' or 'multi'
    uncertain: str = "ignore"  # multi-label: what an uncertain label counts as


# the `data` options that say where the labels are; a checkpoint's saved config keeps them for evaluate and report
LABEL_OPTIONS = ("labels", "file_column", "label_column", "label_sep", "label_columns", "group_column", "no_label",
                 "label_delimiter", "task", "uncertain")


def label_spec(options: dict) -> LabelSpec:
    """The label-file options of a run's `data` section (as a dict: the config's, or a checkpoint's saved one)."""
    get = options.get
    columns = tuple(c.strip() for c in get("label_columns").split(",") if c.strip()) if get("label_columns") else ()
    return LabelSpec(file=get("labels"), file_column=get("file_column"), label_column=get("label_column"),
                     label_sep=get("label_sep"), label_columns=columns, group_column=get("group_column"),
                     no_label=get("no_label"), delimiter="\t" if get("label_delimiter") == "tab" else
                     get("label_delimiter"), task=get("task") or "auto", uncertain=get("uncertain") or "ignore")


@dataclass
class LabelTable:
    """The images a label file lists (paths relative to `root`) with their targets and groups."""

    root: Path
    source: Path
    classes: list[str]
    files: list[str]
    targets: np.ndarray  # (N,) int64 class indices, or (N, L) float32 multi-hot with NaN for "ignore"
    groups: list[str] | None
    missing: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): listed, not on disk
    unlisted: int = 0  # image files under root that no row lists

    @property
    def multi_label(self) -> bool:
        return self.targets.ndim == 2


def find_metadata(folder: Path) -> Path | None:
    """The Hugging Face imagefolder metadata file of `folder`, if it has one."""
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{folder} has both metadata.csv and metadata.jsonl: keep one")
    return found[0] if found else None


def labeled_by_file(source, spec: LabelSpec | None) -> bool:
    """Whether DATA's labels come from a label file: one was given, or `source` is a folder with metadata."""
    return spec is not None and bool(spec.file or (Path(source).is_dir() and find_metadata(Path(source))))


# ------------------------------------------------------------------------------------------------- reading
def read_rows(path: Path, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, dict]]]:
    """The columns and the (row number, row) of a CSV/TSV or JSON Lines file."""
    if not path.is_file():
        raise DataError(f"label file {path} does not exist: give --labels a CSV, TSV or JSON Lines file")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        raise DataError(f"label file {path} is empty: it needs a header row and one row per image")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    delimiter = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    if len(header) == 1:
        other = next((d for d in (",", ";", "\t", "|") if d != delimiter and d in header[0]), None)
        if other is not None:
            shown = "tab" if other == "\t" else repr(other)
            raise DataError(f"{path}: the header has one column but contains {shown}: the file is delimited by "
                            f"{shown}, not {'tab' if delimiter == chr(9) else repr(delimiter)}; pass "
                            f"--label-delimiter {shown if other != chr(9) else 'tab'}")
    rows = []
    for number, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(f"{path} row {number} has {len(values)} fields, the header {len(header)}: fix the row "
                            "(quote values that contain the delimiter)")
        rows.append((number, {h: v.strip() for h, v in zip(header, values)}))
    return header, rows


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    columns: dict[str, None] = {}
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not JSON ({err.msg}): one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number} is not a JSON object: one object per line, e.g. "
                            '{"file_name": "a.png", "label": "cat"}')
        columns.update(dict.fromkeys(row))
        rows.append((number, {k: v if isinstance(v, list) else ("" if v is None else str(v)).strip()
                              for k, v in row.items()}))
    return list(columns), rows


def _column(path: Path, columns: list[str], name: str, what: str) -> str:
    if name in columns:
        return name
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"{path} has no {what} column {name!r}{hint}; its columns: {', '.join(columns)}")


def _pick_columns(path: Path, columns: list[str], spec: LabelSpec) -> tuple[str, str | None]:
    """The file column and the label column (None with 0/1 label columns), given or by the usual names."""
    file_col = (_column(path, columns, spec.file_column, "file") if spec.file_column else
                "file_name" if "file_name" in columns else columns[0])
    if spec.label_columns:
        if spec.label_column:
            raise DataError("give either --label-column (labels named in one column) or --label-columns (one 0/1 "
                            "column per label), not both")
        for name in spec.label_columns:
            _column(path, columns, name, "label")
        return file_col, None
    if spec.label_column:
        return file_col, _column(path, columns, spec.label_column, "label")
    rest = [c for c in columns if c not in (file_col, spec.group_column)]
    named = [c for c in rest if c.lower() in ("label", "labels")]
    if named or len(rest) == 1:
        return file_col, (named or rest)[0]
    raise DataError(f"{path}: which column holds the labels? pass --label-column NAME, or --label-columns A,B,... for "
                    f"0/1 columns (columns: {', '.join(columns)})")


def _named_labels(path: Path, rows: list[tuple[int, dict]], column: str, spec: LabelSpec) -> list[list[str]]:
    """Each row's label names: the column's value, split by `label_sep`; `no_label` and blanks name none."""
    out = []
    for number, row in rows:
        value = row.get(column, "")
        if isinstance(value, list):  # JSON Lines may hold a list
            names = [str(v).strip() for v in value]
        else:
            names = [v.strip() for v in value.split(spec.label_sep)] if spec.label_sep else [value]
        names = [n for n in names if n and n != spec.no_label]
        if not names and not (spec.label_sep or spec.no_label or isinstance(value, list) or spec.task == "multi"):
            raise DataError(f"{path} row {number} has no label in column {column!r}: give one, or pass --no-label "
                            "VALUE (and --label-sep) for images without any")
        if len(set(names)) != len(names):
            raise DataError(f"{path} row {number} names a label twice ({value!r}): list each label once")
        out.append(names)
    return out


_BINARY = {"1": 1.0, "1.0": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0, "-1": None, "-1.0": None, "": None}


def _column_targets(path: Path, rows: list[tuple[int, dict]], columns: tuple[str, ...], uncertain: str
                    ) -> np.ndarray:
    """(N, L) float32 from one 0/1 column per label; -1 and blanks are uncertain: NaN (ignored), 0 or 1."""
    fill = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    targets = np.empty((len(rows), len(columns)), np.float32)
    for i, (number, row) in enumerate(rows):
        for j, column in enumerate(columns):
            value = str(row.get(column, "")).strip().lower()
            if value not in _BINARY:
                raise DataError(f"{path} row {number}, column {column!r}: {row[column]!r} is not 0, 1, -1 or blank "
                                "(one 0/1 column per label; -1 or blank: uncertain)")
            targets[i, j] = fill if _BINARY[value] is None else _BINARY[value]
    return targets


def _targets(path: Path, rows: list[tuple[int, dict]], column: str | None, spec: LabelSpec
             ) -> tuple[list[str], np.ndarray]:
    """The classes and the targets: class indices (single-label) or multi-hot rows (multi-label)."""
    if column is None:
        if spec.task == "single":
            raise DataError("data.task 'single' needs one label column (--label-column): 0/1 columns are multi-label")
        return list(spec.label_columns), _column_targets(path, rows, spec.label_columns, spec.uncertain)
    names = _named_labels(path, rows, column, spec)
    classes = sorted({n for row in names for n in row})
    index = {c: i for i, c in enumerate(classes)}
    odd = next(((number, row) for (number, _), row in zip(rows, names) if len(row) != 1), None)
    multi = spec.task == "multi" or (spec.task == "auto" and odd is not None)
    if spec.task == "single" and odd is not None:
        raise DataError(f"{path} row {odd[0]} has {len(odd[1])} labels but data.task is 'single': give every image "
                        "one label, or set data.task to 'multi'")
    if not multi:
        return classes, np.array([index[row[0]] for row in names], dtype=np.int64)
    targets = np.zeros((len(names), len(classes)), np.float32)
    for i, row in enumerate(names):
        targets[i, [index[n] for n in row]] = 1.0
    return classes, targets


# ------------------------------------------------------------------------------------------------ the files
def _image_index(root: Path) -> dict[str, list[str]]:
    """Every image file under `root` (relative path), by base name: label files often list names alone."""
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(Path(d)))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not is_hidden(Path(name)):
                index.setdefault(name, []).append(str((Path(dirpath) / name).relative_to(root)))
    return index


def _resolve(path: Path, root: Path, rows: list[tuple[int, dict]], column: str, index: dict[str, list[str]]
             ) -> tuple[list[str | None], list[tuple[str, str]]]:
    """Each row's image path relative to `root` (or None when it is not there), and the missing ones' reasons."""
    every = {p for paths in index.values() for p in paths}
    resolved, missing, seen = [], [], {}
    for number, row in rows:
        name = str(row.get(column, "")).strip()
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{path} row {number}: {name!r} is not a path inside the image folder {root}: list "
                            "image paths relative to it")
        found = str(rel) if str(rel) in every else (index.get(rel.name, [None])[0]
                                                     if len(index.get(rel.name, [])) == 1 else None)
        key = found or str(rel)
        if key in seen:
            raise DataError(f"{path} rows {seen[key]} and {number} both list {key}: keep one row per image")
        seen[key] = number
        if found is None:
            many = len(index.get(rel.name, [])) > 1
            missing.append((name, f"listed in {path.name} row {number}, " +
                            ("several files have this name: give its path" if many else "not found")))
        resolved.append(found)
    return resolved, missing


def read_labels(root: str | os.PathLike, spec: LabelSpec) -> LabelTable:
    """Read the label file of `spec` (or `root`'s metadata file) for the images under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: give the folder the label file's paths are relative to")
    path = Path(spec.file) if spec.file else find_metadata(root)
    if path is None:
        raise DataError(f"{root} has no metadata.csv or metadata.jsonl: give the label file with --labels")
    columns, rows = read_rows(path, spec.delimiter)
    if not rows:
        raise DataError(f"label file {path} has a header but no rows: list one image per row")
    file_col, label_col = _pick_columns(path, columns, spec)
    if spec.group_column:
        _column(path, columns, spec.group_column, "group")
    classes, targets = _targets(path, rows, label_col, spec)
    if len(classes) < 2 and targets.ndim == 1:
        raise DataError(f"{path} names only one label ({classes[0]}): a classifier needs at least two")
    index = _image_index(root)
    resolved, missing = _resolve(path, root, rows, file_col, index)
    keep = [i for i, r in enumerate(resolved) if r is not None]
    groups = [str(rows[i][1].get(spec.group_column, "")) or resolved[i] for i in keep] if spec.group_column else None
    listed = {resolved[i] for i in keep}
    unlisted = sum(1 for paths in index.values() for p in paths if p not in listed)
    if unlisted:
        log.warning("%d image file(s) under %s are not listed in %s and are left out", unlisted, root, path.name)
    return LabelTable(root, path, classes, [resolved[i] for i in keep], targets[keep], groups, missing, unlisted)
