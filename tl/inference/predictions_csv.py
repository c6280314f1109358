"""The predictions CSV: header, rows, spreadsheet-safe cells, and reading back what a killed run already wrote."""

from __future__ import annotations

import csv
from pathlib import Path

from tl.errors import TLError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # "'" too, so that the escape can always be undone


def csv_safe(text: str) -> str:
    """Keep spreadsheets from running a cell as a formula (OWASP's CSV injection advice): prefix a quote."""
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_unsafe(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def csv_header(class_names: list[str], top_k: int) -> list[str]:
    pairs = [c for i in range(1, top_k + 1) for c in (f"label_{i}", f"prob_{i}")]
    return ["path", "label", "confidence", *(pairs if top_k else [f"p_{name}" for name in class_names]), "error"]


def csv_row(path: str, probs: list[float], names: list[str], top_k: int, error: str, *,
            min_confidence: float = 0.0, unknown_label: str = "unknown") -> list[str]:
    """One row; below ``min_confidence`` the label is ``unknown_label``, the probabilities are written all the same."""
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


def read_done(out: Path, header: list[str]) -> tuple[set[str], int, int]:
    """(paths already in ``out``, failed rows among them, byte length of its complete rows).

    Every row ends with a newline outside quotes, so a row whose last line lacks one, or an unterminated
    quote at the end, is the half row a killed run left: it is not counted, and the caller cuts it off.
    """
    done: set[str] = set()
    failed = end = consumed = 0
    last_line_complete = True
    with open(out, "rb") as handle:

        def lines():
            nonlocal consumed, last_line_complete
            for raw in handle:
                consumed += len(raw)
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
                end = consumed
        except csv.Error:
            pass  # an unterminated quote at the end
    return done, failed, end
