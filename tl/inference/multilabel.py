"""Multi-label scores: average precision, F1-best per-class thresholds, and the labels a set of probabilities means.

One small tested implementation serves training's per-epoch metrics, ``tl eval`` and the README's comparison with
other tools, so every figure is computed the same way. Average precision is the step-wise area under the
precision-recall curve over distinct scores (scikit-learn's ``average_precision_score``; tied scores count as
one threshold), written in torch because scikit-learn and torchmetrics are not dependencies of tl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MIN_POSITIVES = 5  # fewer positive val images than this: a fitted threshold would be noise, keep 0.5
DEFAULT_THRESHOLD = 0.5


def _ranked(scores: "torch.Tensor", truth: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(distinct scores, descending; true positives and false positives among the images scored at least each)."""
    import torch

    order = torch.argsort(scores, descending=True, stable=True)
    s, t = scores[order].double(), truth[order].double()
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last image of each run of tied scores
    tp = torch.cumsum(t, 0)[last]
    fp = torch.cumsum(1 - t, 0)[last]
    return s[last], tp, fp


def average_precision(scores: "torch.Tensor", truth: "torch.Tensor") -> float | None:
    """AP of one class (``scores`` [N], ``truth`` [N] of 0/1); None where the class has no positive image."""
    import torch

    positives = float(truth.sum())
    if positives == 0:
        return None
    _, tp, fp = _ranked(scores, truth)
    precision, recall = tp / (tp + fp), tp / positives
    previous = torch.cat([torch.zeros(1, dtype=recall.dtype), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def per_class_ap(probs: "torch.Tensor", targets: "torch.Tensor") -> list[float | None]:
    return [average_precision(probs[:, c], targets[:, c]) for c in range(probs.shape[1])]


def mean_ap(probs: "torch.Tensor", targets: "torch.Tensor") -> float:
    """Mean AP over the classes that have a positive image (0.0 if none has)."""
    known = [ap for ap in per_class_ap(probs, targets) if ap is not None]
    return sum(known) / len(known) if known else 0.0


def fit_thresholds(probs: "torch.Tensor", targets: "torch.Tensor", min_positives: int = MIN_POSITIVES) -> list[float]:
    """The F1-best threshold of each class: halfway between the lowest score called positive and the next score
    below it. A class with fewer than ``min_positives`` positive images keeps 0.5."""
    thresholds = []
    for c in range(probs.shape[1]):
        truth, scores = targets[:, c], probs[:, c].float()
        positives = float(truth.sum())
        if positives < min_positives:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        distinct, tp, fp = _ranked(scores, truth)
        f1 = 2 * tp / (tp + fp + positives)
        best = int(f1.argmax())  # the first (highest) threshold among equals: fewest false positives
        below = float(distinct[best + 1]) if best + 1 < len(distinct) else 0.0
        thresholds.append((float(distinct[best]) + below) / 2)
    return thresholds


def decide(probs: "torch.Tensor", thresholds: list[float] | "torch.Tensor") -> "torch.Tensor":
    """0/1 predictions: each class's probability at or over its threshold."""
    import torch

    # In float64, as labels_of compares Python floats: a threshold fit midway between two float32 scores can round
    # onto the lower one in float32, and eval and predict would then disagree on that image.
    return probs.double() >= torch.as_tensor(thresholds, dtype=torch.float64, device=probs.device)


def f1_scores(predicted: "torch.Tensor", targets: "torch.Tensor") -> dict[str, float]:
    """Micro F1 (over every image-class pair), macro F1 (mean over the classes with a positive image) and the
    exact-match ratio (images whose whole label set is right)."""
    predicted, targets = predicted.bool(), targets.bool()
    tp = (predicted & targets).sum(0).double()
    fp = (predicted & ~targets).sum(0).double()
    fn = (~predicted & targets).sum(0).double()
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1))
    present = (tp + fn) > 0
    per_class = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    macro = float(per_class[present].mean()) if present.any() else 0.0
    exact = float((predicted == targets).all(1).double().mean()) if len(targets) else 0.0
    return {"f1_micro": micro, "f1_macro": macro, "exact_match": exact}


def per_class_report(probs: "torch.Tensor", targets: "torch.Tensor", thresholds: list[float],
                     class_names: list[str]) -> list[dict]:
    """One row per class: AP, precision, recall and F1 at its threshold, support (positive images), threshold."""
    predicted, truth = decide(probs, thresholds), targets.bool()
    rows = []
    for c, (name, ap) in enumerate(zip(class_names, per_class_ap(probs, targets))):
        tp = int((predicted[:, c] & truth[:, c]).sum())
        called, support = int(predicted[:, c].sum()), int(truth[:, c].sum())
        precision, recall = tp / called if called else 0.0, tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "ap": ap, "precision": precision, "recall": recall, "f1": f1, "support": support,
                     "threshold": float(thresholds[c])})
    return rows


def labels_of(probs: list[float], class_names: list[str], thresholds: list[float]) -> list[str]:
    """The classes whose probability is at or over their threshold, in class order (possibly none)."""
    return [name for name, p, t in zip(class_names, probs, thresholds) if p >= t]


def thresholds_for(meta: dict, override: float | None = None) -> list[float] | None:
    """A checkpoint's per-class thresholds (``--threshold`` overrides them all); None for a single-label model.
    Every command that takes --threshold comes here, so each refuses a wrong one alike."""
    from tl.errors import TLError

    if override is not None and not 0.0 <= override <= 1.0:  # nan too
        raise TLError(f"--threshold: must be in [0, 1], got {override}", "a probability, e.g. --threshold 0.5")
    if meta.get("task") != "multilabel":
        if override is not None:
            raise TLError("--threshold: this model gives one class per image", "--threshold is for multi-label checkpoints; see --min-confidence")
        return None
    count = len(meta["class_names"])
    if override is not None:
        return [float(override)] * count
    return [float(t) for t in meta.get("thresholds") or [DEFAULT_THRESHOLD] * count]


def answer(path: str, probs: list[float], class_names: list[str], thresholds: list[float]) -> dict:
    """``tl predict --json``'s object for one image of a multi-label model."""
    labels = labels_of(probs, class_names, thresholds)
    return {"path": path, "label": ";".join(labels), "labels": labels, "probs": dict(zip(class_names, probs)), "error": None}


def table_of(found: dict, thresholds: list[float]):
    """A rich table of every class: probability, threshold, and whether it is called present."""
    from rich.table import Table

    table = Table()
    for column, justify in (("class", "left"), ("probability", "right"), ("threshold", "right"), ("present", "center")):
        table.add_column(column, justify=justify)
    for (name, p), t in zip(found["probs"].items(), thresholds):
        table.add_row(name, f"{p:.4f}", f"{t:.3f}", "yes" if p >= t else "")
    return table
