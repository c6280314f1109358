"""``tl eval`` of a multi-label checkpoint: mAP, per-class AP / precision / recall / F1 / support at the checkpoint's
thresholds, micro and macro F1, the exact-match ratio, and a per-class precision-recall PNG with the viz extra.

The confusion matrix, temperature calibration and risk-coverage of single-label ``tl eval`` mean nothing when an
image may have several classes or none; the report says so in one line instead of producing them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tl.inference import multilabel as scores

NOT_FOR_MULTILABEL = ("no confusion matrix, calibration or risk-coverage for a multi-label model "
                      "(each class is its own yes/no question): per-class AP, precision, recall and F1 instead")


def metrics(logits, targets, meta: dict, threshold: float | None = None) -> dict[str, Any]:
    """The figures of one split from its logits and 0/1 targets (as ``collect_logits`` returns them)."""
    probs, targets = logits.float().sigmoid(), targets.float()
    thresholds = scores.thresholds_for(meta, threshold)
    predicted = scores.decide(probs, thresholds)
    return {"task": "multilabel", "count": len(targets), "map": scores.mean_ap(probs, targets),
            **scores.f1_scores(predicted, targets),
            "per_class": scores.per_class_report(probs, targets, thresholds, meta["class_names"]),
            "thresholds": thresholds, "note": NOT_FOR_MULTILABEL}


def write_outputs(result: dict[str, Any], out: Path, probs, targets) -> None:
    """eval.json, and the precision-recall PNG beside it when matplotlib is installed."""
    from tl.viz.pr_curves import pr_png_if_available

    png = pr_png_if_available(out.with_name(out.stem + "_pr.png"), probs.tolist(), targets.tolist(),
                              [row["class"] for row in result["per_class"]], [row["ap"] for row in result["per_class"]])
    if png is not None:
        result["pr_png"] = str(png)
    out.write_text(json.dumps(result, indent=2) + "\n")


def print_report(result: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from tl.progress import console, out_console

    summary = Table(title=f"tl eval: {result['split']} ({result['count']} images, multi-label)", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    for key, value in {"mAP": f"{result['map']:.4f}", "F1 micro / macro": f"{result['f1_micro']:.4f} / {result['f1_macro']:.4f}",
                       "exact match": f"{result['exact_match']:.4f}", "unreadable": str(result["unreadable"]),
                       "written": str(out)}.items():
        summary.add_row(key, value)
    out_console().print(summary)
    per_class = Table(title="per class (at its threshold)", title_justify="left")
    for column in ("class", "AP", "precision", "recall", "F1", "support", "threshold"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in result["per_class"]:
        ap = "-" if row["ap"] is None else f"{row['ap']:.3f}"
        per_class.add_row(row["class"], ap, *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1")), str(row["support"]),
                          f"{row['threshold']:.3f}")
    out_console().print(per_class)
    console.print(result["note"], highlight=False)
