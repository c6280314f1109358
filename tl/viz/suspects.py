"""The picture ``tl suspects`` writes: the most doubted images, each titled with its given label and the model's.

Drawing only (no data, no model), so that inference can call it; ``tl.viz.grids`` draws the prediction grids of
the viz commands the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

CELL = (2.4, 2.5)  # inches per image: wider than grids.py's, for "given X, model says Y (p)"


def plot_suspects(images: Sequence["np.ndarray"], titles: Sequence[str], path: Path, *, heading: str = "",
                  disputed: Sequence[bool] = ()) -> Path:
    """Images (H, W, 3 in [0, 1]) in a near-square grid; the titles of ``disputed`` ones (the model names
    another class) in red."""
    import math

    from tl.viz import new_figure, save

    columns = math.ceil(math.sqrt(len(images))) or 1
    rows = math.ceil(len(images) / columns) or 1
    fig = new_figure(columns * CELL[0], rows * CELL[1] + 0.4)
    for index, ax in enumerate(fig.subplots(rows, columns, squeeze=False).ravel()):
        ax.set_axis_off()
        if index < len(images):
            small = max(images[index].shape[:2]) < 96  # tiny inputs: show the pixels, not a blur of them
            ax.imshow(images[index], interpolation="nearest" if small else "antialiased")
            red = index < len(disputed) and disputed[index]
            ax.set_title(titles[index], fontsize=8, color="tab:red" if red else "black")
    if heading:
        fig.suptitle(heading, fontsize=10)
    return save(fig, path)
