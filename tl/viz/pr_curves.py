"""Per-class precision-recall curves of a multi-label model (``tl eval`` writes them with the viz extra).

One panel, one line per class (labelled with its AP), recall on x and precision on y: where a class's line drops
is the threshold past which it starts to miss. Beyond 20 classes the legend would hide the curves, so only the
10 lowest-AP classes are drawn, the ones worth looking at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

MAX_DRAWN = 20


def curve(scores: Sequence[float], truth: Sequence[float]) -> tuple[list[float], list[float]]:
    """(recall, precision) at every distinct score, highest first, as average precision steps through them."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    positives = sum(truth) or 1
    recall, precision, tp, fp = [0.0], [1.0], 0, 0
    for rank, i in enumerate(order):
        tp, fp = tp + truth[i], fp + (1 - truth[i])
        if rank + 1 == len(order) or scores[order[rank + 1]] != scores[i]:
            recall.append(tp / positives)
            precision.append(tp / (tp + fp))
    return recall, precision


def pr_png_if_available(path: Path, probs: list[list[float]], targets: list[list[float]], class_names: Sequence[str],
                        aps: Sequence[float | None]) -> Path | None:
    """The PNG when matplotlib is installed, else None (eval's JSON does not need it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from tl.viz import new_figure, save

    fig = new_figure(7, 6)
    ax = fig.add_subplot()
    drawn = [c for c in range(len(class_names)) if aps[c] is not None]
    if len(drawn) > MAX_DRAWN:
        drawn = sorted(drawn, key=lambda c: aps[c])[:10]
    for c in drawn:
        recall, precision = curve([row[c] for row in probs], [row[c] for row in targets])
        ax.step(recall, precision, where="post", label=f"{class_names[c]} (AP {aps[c]:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("precision-recall per class" + (" (the 10 lowest AP)" if len(drawn) < len([a for a in aps if a is not None]) else ""))
    return save(fig, path)
