"""``tl check-data --labels FILE.csv``: what is wrong with a label file before any image is read.

Every bad row is listed (a file that is not there, a row repeated, an image without a label, a split value that
is neither train, val nor test), then the images in the folder that no row names (they would silently not be
trained on) and the classes with too few images to learn or to measure. The images the file names are then
checked as for every dataset (``tl.data.check``): unreadable files, duplicates, sizes and modes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tl.config import DataConfig
from tl.data.label_file import read_label_file

FEW = 5  # fewer train images of a class than this: too few to learn it; fewer val images: to measure or fit a threshold
SHOWN = 10


def findings(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(problems, notes) of the label file itself: one line each, problems first in the order they cost most."""
    from tl.data.datasets import IMAGE_EXTENSIONS, scan_images

    table = read_label_file(cfg.labels or "", cfg.data_dir, sep=cfg.label_sep, task=cfg.task)
    problems = [f"{kind:<10} {line}" for kind, lines in table.problems.items() for line in lines]
    root = Path(cfg.data_dir) if cfg.data_dir else table.source.parent
    listed = {row.path.resolve() for row in table.rows}
    unlisted = [p for p in scan_images(root, IMAGE_EXTENSIONS) if p.resolve() not in listed]
    notes = [f"{'multi-label' if table.multilabel else 'single-label'}: {len(table.rows)} rows, {len(table.classes)} classes"
             + (", split column" if table.has_split else "")]
    if unlisted:
        shown = ", ".join(str(p.relative_to(root)) for p in unlisted[:SHOWN]) + (" ..." if len(unlisted) > SHOWN else "")
        problems.append(f"unlabelled {len(unlisted)} image(s) under {root} that no row names (not trained on): {shown}")
    counts = Counter(label for row in table.rows for label in row.labels)
    for name in table.classes:
        if counts[name] < FEW:
            problems.append(f"few        class {name!r} has {counts[name]} image(s): fewer than {FEW} cannot be learnt, "
                            "split or given a threshold reliably")
    return problems, notes
