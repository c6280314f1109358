"""Label files: a CSV of image paths and their labels beside a folder of images (``tl train --labels FILE.csv``).

This is how most labelled data is kept (competition downloads, annotation-tool exports), and the only layout that
can say an image has several classes. Accepted shapes, detected from the header:

- ``path,label``: one class per cell, or several separated by ``;``, ``|`` or a space (``--label-sep``; auto tries
  them in that order over the whole file; ``none``: one label per cell), which makes the set multi-label;
- ``path,<class a>,<class b>,...``: one 0/1 column per class (multi-label);
- either with a ``split`` column (train / val / valid / validation / test) or a boolean ``is_valid`` column.

Paths are relative to ``--data-dir`` (default: the CSV's folder) or absolute. Reading never raises for a bad row:
``LabelTable.problems`` names each (a missing file, a duplicate row, an image without a label, a bad split value)
so ``tl check-data`` can list them all; ``LabelTable.raise_problems`` is what training calls. Only the standard
library is used: pandas is not a dependency of tl.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from tl.errors import TLError

PATH_COLUMNS = ("path", "filepath", "file", "filename", "fname", "image", "image_path", "image_id", "img", "id", "name")
LABEL_COLUMNS = ("label", "labels", "tags", "tag", "class", "classes", "category", "categories", "target")
SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
TRUE, FALSE = ("1", "true", "yes", "y", "t"), ("0", "false", "no", "n", "f", "")
AUTO_SEPARATORS = (";", "|", " ")
# A space separates labels only under a plural header (Kaggle's "tags"): "golden retriever" under "label" is one class.
PLURAL_LABEL_HEADERS = ("labels", "tags", "classes", "categories", "attributes")
ONEHOT = {"1": True, "1.0": True, "true": True, "0": False, "0.0": False, "false": False, "": False}


@dataclass
class LabelRow:
    key: str  # the path as written in the file (relative keys are what split.json records)
    path: Path
    labels: tuple[str, ...]
    split: str | None  # train | val | test, or None where the file has no split column
    line: int


@dataclass
class LabelTable:
    """A label file as read: its rows (in file order), class names (sorted) and what is wrong with it."""

    source: Path
    rows: list[LabelRow]
    classes: list[str]
    multilabel: bool
    has_split: bool
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> one line per instance

    def note(self, kind: str, message: str) -> None:
        self.problems.setdefault(kind, []).append(message)

    def raise_problems(self) -> None:
        """The first kind of problem as one TLError (with a count), for commands that cannot go on with them."""
        for kind, hint in PROBLEM_HINTS.items():
            found = self.problems.get(kind)
            if found:
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                raise TLError(f"--labels {self.source}: {found[0]}{more}", hint)


PROBLEM_HINTS = {
    "format": "give a CSV with a header: a path column and a label column (or one 0/1 column per class)",
    "missing": "fix the paths (relative to --data-dir, or absolute) or remove those rows; `tl check-data --labels ...` lists them all",
    "duplicate": "keep one row per image; for an image with several labels put them in one cell (e.g. 'cat;dog')",
    "unlabelled": "give every image a label, or pass --task multilabel, where an image may have none",
    "split": "split values are train, val (valid, validation) or test; is_valid is true/false",
    "unknown": "the run's classes are fixed when it starts: start a new run (another --out) to add classes",
}


def split_cell(cell: str, sep: str | None) -> tuple[str, ...]:
    """Labels in one cell, split at ``sep`` (None: the cell is one label)."""
    cell = cell.strip()
    if not cell:
        return ()
    parts = [cell] if sep is None else cell.split(sep)
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))  # in order, each once


def _pick(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def read_label_file(source: str | Path, root: str | Path | None = None, *, sep: str | None = None,
                    task: str = "auto", check_files: bool = True) -> LabelTable:
    """Read ``source`` (see the module docstring); paths resolve against ``root`` (default: the CSV's folder).
    ``task`` multilabel accepts rows without a label (an image of none of the classes)."""
    source = Path(source)
    if not source.is_file():
        raise TLError(f"--labels: no such file {source}", "pass the CSV of path,label rows")
    root = Path(root) if root else source.parent
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:
            records = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TLError(f"--labels: cannot read {source} as CSV ({exc})", PROBLEM_HINTS["format"])
    if len(records) < 2:
        raise TLError(f"--labels: {source} has no rows under its header", PROBLEM_HINTS["format"])
    header = records[0]
    path_col = _pick(header, PATH_COLUMNS)
    path_col = 0 if path_col is None else path_col
    split_col = _pick(header, ("split", "fold_split", "subset"))
    valid_col = _pick(header, ("is_valid", "is_val", "valid"))
    label_col = _pick(header, LABEL_COLUMNS)
    used = {path_col, split_col, valid_col} - {None}
    onehot_cols: list[int] = []
    if label_col is None:
        rest = [i for i in range(len(header)) if i not in used]
        if len(rest) == 1:
            label_col = rest[0]
        elif rest and all(r[i].strip().lower() in ONEHOT for r in records[1:] for i in rest if i < len(r)):
            onehot_cols = rest
        else:
            raise TLError(f"--labels: {source} has no label column (header: {','.join(header)})", PROBLEM_HINTS["format"])
    if len(records[0]) > path_col and (root / records[0][path_col].strip()).is_file():
        raise TLError(f"--labels: the first line of {source} names a file ({records[0][path_col].strip()}): it has no header",
                      "add a header line, e.g. path,label")
    table = LabelTable(source, [], [], multilabel=bool(onehot_cols) or task == "multilabel",
                       has_split=split_col is not None or valid_col is not None)
    if sep is None and label_col is not None:  # one separator for the whole file, the first found in any cell
        cells = [r[label_col] for r in records[1:] if label_col < len(r)]
        plural = header[label_col].strip().lower() in PLURAL_LABEL_HEADERS
        sep = next((s for s in AUTO_SEPARATORS if (s != " " or plural) and any(s in c.strip() for c in cells)), None)
    if sep == "":
        raise TLError("--label-sep: must not be empty", "give the character between labels, e.g. --label-sep ';', or none")
    sep = None if sep == "none" else sep
    seen: dict[str, LabelRow] = {}
    for line, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        cell = lambda i: record[i].strip() if i is not None and i < len(record) else ""
        key = cell(path_col)
        if onehot_cols:
            labels = tuple(header[i].strip() for i in onehot_cols if ONEHOT.get(cell(i).lower()))
        else:
            labels = split_cell(cell(label_col), sep)
        split = _split_of(cell(split_col) if split_col is not None else None, cell(valid_col) if valid_col is not None else None)
        if split == "?":
            table.note("split", f"line {line}: split {cell(split_col if split_col is not None else valid_col)!r} is not train/val/test")
            split = None
        elif split is None and table.has_split:  # else the row would be in no split: silently not trained on
            table.note("split", f"line {line}: no split value (the file has a split column)")
        if not key:
            table.note("format", f"line {line}: no path")
            continue
        path = Path(key) if os.path.isabs(key) else root / key
        row = LabelRow(key, path, labels, split, line)
        same_file = os.path.normpath(os.path.abspath(path))  # img.png, ./img.png and its absolute path: one image
        if same_file in seen:
            first = seen[same_file]
            same = set(first.labels) == set(labels)
            table.note("duplicate", f"line {line}: {key} is listed again (first on line {first.line} as {first.key})"
                       + ("" if same else f" with other labels ({';'.join(labels) or 'none'} vs {';'.join(first.labels) or 'none'})"))
            continue
        seen[same_file] = row
        if len(labels) > 1:
            table.multilabel = True
        table.rows.append(row)
    if not table.multilabel:
        for row in table.rows:
            if not row.labels:
                table.note("unlabelled", f"line {row.line}: {row.key} has no label")
    if check_files:
        for row in table.rows:
            if not row.path.is_file():
                table.note("missing", f"line {row.line}: {row.path} does not exist")
    table.classes = sorted({label for row in table.rows for label in row.labels} | ({header[i].strip() for i in onehot_cols}))
    return table


def _split_of(split: str | None, is_valid: str | None) -> str | None:
    """train/val/test from a split cell or an is_valid cell; "?" for a value that is neither; None without either."""
    if split is not None:
        return SPLIT_VALUES.get(split.lower(), "?" if split else None)
    if is_valid is not None:
        value = is_valid.lower()
        return "val" if value in TRUE else "train" if value in FALSE else "?"
    return None


def check_known(table: LabelTable, classes: list[str]) -> None:
    """Note every label that ``classes`` (a run's, fixed when it started) does not have."""
    known = set(classes)
    for row in table.rows:
        unknown = [label for label in row.labels if label not in known]
        if unknown:
            table.note("unknown", f"line {row.line}: {row.key} has label {unknown[0]!r}, which is not one of the run's "
                                  f"{len(classes)} classes")
