"""The confusion matrix as a picture (``tl eval`` writes it beside its CSV): rows normalised, class names on both axes.

Rows are divided by the class's image count, so a cell reads "share of class i predicted as j" and a rare class
is as visible as a common one. The figure grows with the class count (about 0.17 inch per class) and the
tick labels shrink, so 101 classes stay legible; cell values are written only where they fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

PER_CLASS = 0.17  # inches per row/column beyond the minimum size
MARGIN = 2.5  # inches for tick labels, axis titles and the colour bar
ANNOTATE_UP_TO = 20  # classes; beyond that the numbers would not fit in their cells


def figure_inches(classes: int) -> float:
    """Side of the (square) figure in inches."""
    return max(5.0, MARGIN + PER_CLASS * classes)


def normalise_rows(confusion: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each row as shares of its total; an empty row (a class absent from the split) stays zero."""
    return [[value / sum(row) if sum(row) else 0.0 for value in row] for row in confusion]


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, *, title: str = "") -> Path:
    from tl.viz import new_figure, save

    n = len(class_names)
    shares = normalise_rows(confusion)
    side = figure_inches(n)
    fig = new_figure(side, side)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class")
    fontsize = 9 if n <= 30 else 7 if n <= 60 else 6
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= ANNOTATE_UP_TO:
        for i, row in enumerate(shares):
            for j, value in enumerate(row):
                if value > 0:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if value > 0.5 else "black")
    ax.set_title(title or f"confusion matrix, rows normalised ({n} classes)")
    return save(fig, path)


def confusion_png_if_available(path: Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> Path | None:
    """For ``tl eval``: the PNG when the viz extra is installed, else None (eval's JSON and CSV do not need it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return plot_confusion(confusion, class_names, path)
