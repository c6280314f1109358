"""The predictions CSV: header, rows, spreadsheet-safe cells, and reading back what a killed run already wrote."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from tl.errors import TLError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # "'" too, so that the escape can always be undone


def csv_safe(text: str) -> str:
    """Keep spreadsheets from running a cell as a formula (OWASP's CSV injection advice): prefix a quote."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_unsafe(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def csv_header(class_names: list[str], top_k: int, thresholds: list[float] | None = None) -> list[str]:
    if thresholds is not None:  # multi-label: the classes over their thresholds, then every probability
        return ["path", "labels", *[f"p_{name}" for name in class_names], "error"]
    pairs = [c for i in range(1, top_k + 1) for c in (f"label_{i}", f"prob_{i}")]
    return ["path", "label", "confidence", *(pairs if top_k else [f"p_{name}" for name in class_names]), "error"]


def csv_row(path: str, probs: list[float], names: list[str], top_k: int, error: str, *,
            min_confidence: float = 0.0, unknown_label: str = "unknown", thresholds: list[float] | None = None) -> list[str]:
    """One row; below ``min_confidence`` the label is ``unknown_label``, the probabilities are written all the same.
    Multi-label (``thresholds``): the classes at or over their thresholds joined by ``;`` (possibly none)."""
    if thresholds is not None:
        from tl.inference.multilabel import labels_of

        if error:
            return [csv_safe(path), "", *([""] * len(names)), csv_safe(error)]
        return [csv_safe(path), csv_safe(";".join(labels_of(probs, names, thresholds))), *[f"{p:.6f}" for p in probs], ""]
    width = 2 * top_k if top_k else len(names)
    if error:
        return [csv_safe(path), "", "", *([""] * width), csv_safe(error)]
    best = max(range(len(probs)), key=probs.__getitem__)
    label = names[best] if probs[best] >= min_confidence else unknown_label
    cells = [csv_safe(path), csv_safe(label), f"{probs[best]:.6f}"]
    if top_k:
        for k in sorted(range(len(probs)), key=lambda i: -probs[i])[:top_k]:
            cells += [csv_safe(names[k]), f"{probs[k]:.6f}"]
    else:
        cells += [f"{p:.6f}" for p in probs]
    return cells + [""]


def check_unknown_label(min_confidence: float, unknown_label: str, class_names: list[str]) -> None:
    """--min-confidence must be a probability, and the unknown label must not be one of the classes."""
    if not 0.0 <= min_confidence <= 1.0:
        raise TLError(f"--min-confidence: must be in [0, 1], got {min_confidence}", "e.g. the threshold `tl eval --target-accuracy` prints")
    if min_confidence > 0 and unknown_label in class_names:
        raise TLError(f"--unknown-label: {unknown_label!r} is one of the model's classes", "pick another name, e.g. --unknown-label none-of-these")


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that cannot be the predictions CSV, before the model loads and the folder is scanned: a
    folder, a device, an existing file without --resume/--overwrite, a place that cannot be written. Its folder is
    created; an existing file is opened for appending only, so nothing in it changes."""
    if out.is_dir():
        raise TLError(f"--out {out} is a folder", f"give a file path, e.g. --out {out / 'predictions.csv'} (or .parquet)")
    if out.exists() and not out.is_file():
        raise TLError(f"--out {out} is not a regular file", "give a file path (.csv, or .parquet)")
    if out.exists() and not (resume or overwrite):
        raise TLError(f"--out: {out} already exists", "pass --resume to continue it, or --overwrite to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (out.parent, *out.parent.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker is not None else exc.strerror or str(exc)
        raise TLError(f"--out {out}: cannot create its folder ({reason})", "choose another --out") from exc
    try:
        if out.exists():
            open(out, "ab").close()
        else:  # a file of its own, so that processes checking at once do not see each other's
            tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.").close()
    except OSError as exc:
        raise TLError(f"cannot write {out} ({exc.strerror or exc})", "choose another --out") from exc


class CsvWriteError(TLError):
    """Writing the CSV failed part-way (a full disk): the file was cut back to its last complete batch."""


class RowWriter:
    """The predictions CSV open for rows, flushed a batch at a time. A write that fails (a full disk, a quota) cuts
    the file back to the end of its last complete batch and raises one line: the CSV stays valid, and
    ``--resume`` carries on from it once the cause is fixed."""

    def __init__(self, out: Path, end: int, header: list[str]) -> None:
        self.out, self.good, self.handle = out, end, None
        try:
            # surrogateescape: a file name that is not UTF-8 goes into the CSV byte for byte instead of stopping the run
            self.handle = open(out, "r+" if end else "w", newline="", encoding="utf-8", errors="surrogateescape")
            self.handle.truncate(end)  # drops a half row left by a killed run
            self.handle.seek(end)
            self.writer = csv.writer(self.handle, lineterminator="\n")
        except OSError as exc:
            self._fail(exc)
        self.write([] if end else [header])

    def write(self, rows: list[list[str]]) -> None:
        try:
            for row in rows:
                self.writer.writerow(row)
            self.handle.flush()
            self.good = self.handle.tell()
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self.handle is not None and not self.handle.closed:
            try:
                self.handle.close()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if self.handle is not None:  # else it could not be opened: nothing was written
            try:
                self.handle.close()
            except OSError:
                pass  # the same failure, flushing what did not fit; the file is closed all the same
            try:
                os.truncate(self.out, self.good)
            except OSError:
                pass  # then --resume cuts the half row
        raise CsvWriteError(f"cannot write {self.out} ({exc.strerror or exc}); the rows written before are kept",
                            "fix that (e.g. free some space), then run the same command with --resume") from exc


def read_done(out: Path, header: list[str], paths: Iterable[str] = (), done=None) -> tuple[Any, int, int]:
    """(paths already in ``out``, failed rows among them, byte length of its complete rows). The paths are added to
    ``done`` (anything with ``add``, e.g. a ``file_list.NameSet``, which holds 16 bytes a name), by default a set.

    Every row ends with a newline outside quotes. A killed run can leave half a row, at the end: the last line,
    without its newline (or, where a file name of ``paths`` holds a line break, a quoted name cut inside). That row
    is not counted, and the caller cuts it off. Any other damage is refused with the row it is in, and nothing is
    cut: the file may be the user's, edited by hand.
    """
    done = set() if done is None else done
    failed = end = consumed = lines_read = lines_done = records = 0
    last_line_complete, problem = True, "it is cut off"
    with open(out, "rb") as handle:

        def lines():
            nonlocal consumed, last_line_complete, lines_read
            for raw in handle:
                consumed += len(raw)
                lines_read += 1
                last_line_complete = raw.endswith(b"\n")
                yield raw.decode("utf-8", errors="surrogateescape")

        try:
            for number, row in enumerate(csv.reader(lines(), strict=True)):
                if not last_line_complete:
                    break
                if number == 0 and row != header:
                    raise TLError(f"--resume: {out} has other columns than this prediction would write",
                                  "resume with the same checkpoint, --top-k and --label-names, or choose a new --out")
                if number and len(row) != len(header):
                    raise TLError(f"--resume: row {number} of {out} has {len(row)} cells, not {len(header)}",
                                  "is it a tl predictions file? choose a new --out")
                if number:
                    done.add(csv_unsafe(row[0]))
                    failed += bool(row[-1])
                end, lines_done, records = consumed, lines_read, number + 1
        except csv.Error as exc:
            problem = str(exc)
        handle.seek(end)
        tail = handle.read().decode("utf-8", errors="surrogateescape")
    if tail and not is_half_row(tail, paths):
        raise TLError(f"--resume: row {records} of {out} (line {lines_done + 1}) is not valid CSV ({problem})",
                      "fix or remove that row, or pass --overwrite to start the file again")
    return done, failed, end


def is_half_row(tail: str, paths: Iterable[str] = ()) -> bool:
    """Whether ``tail``, the text after a CSV's last complete row, is what a kill leaves: the start of one row.
    Its line breaks can only be inside its first cell, a quoted file name that begins one of ``paths``."""
    if "\n" not in tail:
        return True
    if not tail.startswith('"'):
        return False
    cell, rest, at = [], "", 1
    while at < len(tail):
        if tail[at] == '"':
            if tail[at + 1:at + 2] != '"':
                rest = tail[at + 1:]
                break
            at += 1  # a doubled quote: one quote in the name
        cell.append(tail[at])
        at += 1
    name = "".join(cell)
    return "\n" not in rest and any(csv_safe(path).startswith(name) for path in paths if "\n" in path)
