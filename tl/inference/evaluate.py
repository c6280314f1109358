"""``tl eval``: top-1/top-5, balanced accuracy, per-class precision/recall/F1, confusions, calibration and
risk-coverage (top-1 on the images a confidence threshold keeps) of a run.

The split is rebuilt from the run's ``config.json`` exactly as training built it, with the checkpoint's
evaluation preprocessing, so the numbers are those of the data the run was validated (or tested) on.
"""

from __future__ import annotations

import csv
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from tl.data.splits import MANIFEST
from tl.errors import TLError
from tl.inference.predictor import Precision

if TYPE_CHECKING:
    import torch


class Split(str, Enum):
    val = "val"
    test = "test"


def classification_metrics(logits: "torch.Tensor", labels: "torch.Tensor", class_names: list[str], *,
                           top_confusions: int = 10) -> dict[str, Any]:
    """Everything here is computed from the confusion matrix (rows: true class, columns: predicted)."""
    import torch

    n = len(class_names)
    predicted = logits.argmax(1)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    true_count, predicted_count, hits = confusion.sum(1), confusion.sum(0), confusion.diag()
    recall = hits / true_count.clamp(min=1)
    precision = hits / predicted_count.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    top5 = (logits.topk(min(5, n), dim=1).indices == labels[:, None]).any(1).float().mean() if len(labels) else torch.tensor(0.0)
    present = true_count > 0  # a class absent from the split has no recall to average
    off_diagonal = [(int(confusion[i, j]), class_names[i], class_names[j]) for i in range(n) for j in range(n)
                    if i != j and confusion[i, j] > 0]
    return {
        "count": len(labels),
        "top1": float((predicted == labels).float().mean()) if len(labels) else 0.0,
        "top5": float(top5),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": [{"class": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(true_count[i])} for i, name in enumerate(class_names)],
        "most_confused": [{"true": t, "predicted": p, "count": c}
                          for c, t, p in sorted(off_diagonal, key=lambda x: -x[0])[:top_confusions]],
        "confusion_matrix": confusion.tolist(),
    }


RISK_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def risk_coverage(confidence: "torch.Tensor", correct: "torch.Tensor", thresholds=RISK_THRESHOLDS) -> list[dict[str, Any]]:
    """Per threshold: the images whose top probability reaches it (what `--min-confidence` keeps) and top-1 on them."""
    rows = []
    for threshold in thresholds:
        kept = confidence.double() >= threshold  # as predict-dir compares: in double, so float32's 0.7 (0.69999998) is below 0.7
        count = int(kept.sum())
        rows.append({"threshold": threshold, "kept": count, "coverage": count / max(len(confidence), 1),
                     "accuracy": float(correct[kept].float().mean()) if count else None})
    return rows


def threshold_for(confidence: "torch.Tensor", correct: "torch.Tensor", target: float) -> dict[str, Any]:
    """The lowest --min-confidence (0, or a 4-decimal value) whose kept images reach ``target`` top-1 on this split;
    threshold None when none does."""
    import torch

    order = confidence.argsort()
    ascending, hits = confidence[order], correct[order].double()
    kept_hits = hits.flip(0).cumsum(0).flip(0)  # correct among the images from position i up
    candidates = torch.cat([torch.zeros(1, dtype=torch.float64), (ascending.double() * 10_000).floor().unique() / 10_000])
    for threshold in candidates.tolist():
        first = int(torch.searchsorted(ascending.double(), torch.tensor(threshold, dtype=torch.float64)))
        kept = len(ascending) - first
        if kept and float(kept_hits[first]) / kept >= target:
            return {"target": target, "threshold": threshold, "kept": kept, "coverage": kept / len(ascending),
                    "accuracy": float(kept_hits[first]) / kept}
    return {"target": target, "threshold": None}


def run_dir_of(checkpoint: Path) -> Path:
    """RUN for RUN, RUN/best or RUN/best/model.safetensors."""
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    for candidate in (folder, folder.parent):
        if (candidate / "config.json").is_file():
            return candidate
    raise TLError(f"no config.json beside {checkpoint}",
                  "tl eval rebuilds the data from the run: pass RUN/best of a tl train run")


def write_confusion_csv(path: Path, confusion: list[list[int]], class_names: list[str]) -> None:
    from tl.inference.predictions_csv import csv_safe

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true \\ predicted", *map(csv_safe, class_names)])
        for name, row in zip(class_names, confusion):
            writer.writerow([csv_safe(name), *row])


def load_split(checkpoint: Path, split: Split = Split.val, *, data_dir: Path | None = None):
    """(dataset, checkpoint meta): the run's split rebuilt from its config.json with the checkpoint's eval preprocessing."""
    data, meta = load_data(checkpoint, data_dir=data_dir)
    dataset = data.test if split == Split.test else data.val
    if dataset is None:
        raise TLError("this run's data have no test split", "add DIR/test/<class>/ folders, or use --split val")
    return dataset, meta


def load_data(checkpoint: Path, *, data_dir: Path | None = None):
    """(DatasetBundle, checkpoint meta): every split of the run's data, train included, with eval preprocessing."""
    from tl.config import TrainConfig
    from tl.data.datasets import build_datasets
    from tl.data.transforms import eval_transform
    from tl.inference.predictor import check_checkpoint_path
    from tl.models.checkpoint import read_meta

    check_checkpoint_path(checkpoint)
    meta = read_meta(checkpoint)
    record = json.loads((run_dir_of(checkpoint) / "config.json").read_text())
    cfg = TrainConfig.from_dict(record["config"])
    if data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    tf = eval_transform(size=meta["input_size"], resize=meta["resize_size"], mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    manifest = run_dir_of(checkpoint) / MANIFEST  # the run's own split: its test images are ones training never saw
    data = build_datasets(cfg.data, seed=cfg.run.seed, train_tf=tf, eval_tf=tf, manifest=manifest if manifest.is_file() else None)
    if list(data.class_names) != list(meta["class_names"]):
        raise TLError(f"the data's classes {data.class_names[:4]} differ from the checkpoint's {meta['class_names'][:4]}",
                      "pass --data-dir with the folder the run was trained on")
    return data, meta


def evaluate_checkpoint(checkpoint: Path, split: Split = Split.val, *, data_dir: Path | None = None,
                        batch_size: int = 64, num_workers: int = -1, precision: str = "auto",
                        target_accuracy: float | None = None, threshold: float | None = None) -> dict[str, Any]:
    """The metrics of ``checkpoint`` on its run's ``split``; see the module docstring. ``precision`` is chosen as
    ``tl predict-dir`` chooses it, so the two give the same labels."""
    import torch
    from torch.utils.data import DataLoader

    from tl.inference.calibration import collect_logits, expected_calibration_error, nll
    from tl.inference.predictor import autocast_dtype
    from tl.models.checkpoint import load_checkpoint
    from tl.runtime import keep_freed_memory
    from tl.runtime import num_workers as resolve_workers

    dataset, meta = load_split(checkpoint, split, data_dir=data_dir)
    from tl.inference.multilabel import thresholds_for

    thresholds_for(meta, threshold)  # a wrong --threshold, or one for a single-label model, is refused before the model runs
    model, _ = load_checkpoint(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        keep_freed_memory()  # each batch's activations come back from the heap, not as page faults
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=resolve_workers(num_workers, 1))
    dtype = autocast_dtype(Precision(precision), torch.device(device))
    logits, labels, unreadable = collect_logits(model.to(device), loader, device, dtype=dtype)
    result = {"checkpoint": str(checkpoint), "split": split.value, "unreadable": unreadable,
              "precision": str(dtype).replace("torch.", "") if dtype else "float32"}
    if meta.get("task") == "multilabel":  # tl.inference.multilabel_eval: mAP and per-class figures instead
        from tl.inference import multilabel_eval

        return {**result, **multilabel_eval.metrics(logits, labels, meta, threshold), "_scores": (logits.sigmoid(), labels)}
    result = {**result,
              **classification_metrics(logits, labels, meta["class_names"])}
    temperature = meta.get("temperature")
    result["calibration"] = {
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(logits.softmax(1), labels),
        "ece_calibrated": expected_calibration_error((logits / temperature).softmax(1), labels) if temperature else None,
        "nll_uncalibrated": nll(logits, labels),
        "nll_calibrated": nll(logits, labels, temperature) if temperature else None,
    }
    # On the probabilities predict-dir writes (calibrated where the checkpoint has a temperature), so a
    # threshold found here means the same with --min-confidence.
    confidence = (logits / (temperature or 1.0)).softmax(1).max(1).values if len(labels) else torch.zeros(0)
    correct = logits.argmax(1) == labels if len(labels) else torch.zeros(0, dtype=torch.bool)
    result["risk_coverage"] = risk_coverage(confidence, correct)
    if target_accuracy is not None:
        result["target_accuracy"] = threshold_for(confidence, correct, target_accuracy)
    return result


def print_report(result: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from tl.progress import out_console

    console = out_console()

    cal = result["calibration"]
    summary = Table(title=f"tl eval: {result['split']} ({result['count']} images)", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    ece = f"{cal['ece_uncalibrated']:.4f}" + (f" -> {cal['ece_calibrated']:.4f} (T = {cal['temperature']:.3f})"
                                              if cal["temperature"] else " (no temperature in the checkpoint)")
    for key, value in {"top-1": f"{result['top1']:.4f}", "top-5": f"{result['top5']:.4f}",
                       "balanced accuracy": f"{result['balanced_accuracy']:.4f}", "ECE": ece,
                       "unreadable": str(result["unreadable"]), "written": str(out)}.items():
        summary.add_row(key, value)
    console.print(summary)
    per_class = Table(title="per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in result["per_class"]:
        per_class.add_row(row["class"], *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1")), str(row["support"]))
    console.print(per_class)
    if result["most_confused"]:
        pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in result["most_confused"][:5])
        console.print(f"most confused: {pairs}")
    coverage = Table(title="risk-coverage: images whose top probability reaches the threshold", title_justify="left")
    for column in ("threshold", "kept", "coverage", "top-1 on kept"):
        coverage.add_column(column, justify="right")
    for row in result["risk_coverage"]:
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        coverage.add_row(f"{row['threshold']:g}", str(row["kept"]), f"{row['coverage']:.3f}", accuracy)
    console.print(coverage)
    target = result.get("target_accuracy")
    if target and target["threshold"] is not None:
        console.print(f"--min-confidence {target['threshold']:g} reaches top-1 {target['accuracy']:.4f} >= {target['target']:g} "
                      f"on this split, keeping {target['kept']} of {result['count']} images ({target['coverage']:.1%})", highlight=False)
    elif target:
        console.print(f"no --min-confidence reaches top-1 {target['target']:g} on this split", highlight=False)


def command(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint of a tl train run (RUN/best); its config.json rebuilds the data.")],
    split: Annotated[Split, typer.Option(help="Which split of the run's data to evaluate.")] = Split.val,
    out: Annotated[Optional[Path], typer.Option(help="JSON file to write; default RUN/eval.json (confusion matrix CSV beside it).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the run's image folder is now, if it moved.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers; -1: automatic.")] = -1,
    precision: Annotated[Precision, typer.Option(help="auto: as tl predict-dir (bf16 on GPUs that have it, fp16 on older ones, bf16 on CPUs with native bf16, else fp32), so the two agree; fp32 for exact float32 metrics.")] = Precision.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics written to --out as JSON instead of the tables.")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Multi-label checkpoints: one threshold for every class instead of each class's own (fit on val).")] = None,
    target_accuracy: Annotated[Optional[float], typer.Option(help="Also find the lowest --min-confidence for tl predict/predict-dir at which top-1 on the images kept reaches this (e.g. 0.98) on the split.")] = None,
) -> None:
    """Evaluate a checkpoint on its run's validation or test split.

    Examples:

      tl eval --checkpoint runs/r18/best --split test

      tl eval --checkpoint runs/r18/best --json | jq .top1

      tl eval --checkpoint runs/r18/best --target-accuracy 0.98   # the --min-confidence for tl predict-dir
    """
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise TLError(f"--target-accuracy: must be in (0, 1], got {target_accuracy}", "e.g. --target-accuracy 0.98")
    result = evaluate_checkpoint(checkpoint, split, data_dir=data_dir, batch_size=batch_size, num_workers=num_workers,
                                 precision=precision.value, target_accuracy=target_accuracy, threshold=threshold)
    out = out or run_dir_of(checkpoint) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if result.get("task") == "multilabel":
        from tl.inference import multilabel_eval

        multilabel_eval.write_outputs(result, out, *result.pop("_scores"))
        print(json.dumps(result, indent=2)) if as_json else multilabel_eval.print_report(result, out)
        if result["unreadable"]:
            raise typer.Exit(1)
        return
    confusion_csv = out.with_name(out.stem + "_confusion.csv")
    write_confusion_csv(confusion_csv, result["confusion_matrix"], [c["class"] for c in result["per_class"]])
    result["confusion_csv"] = str(confusion_csv)
    from tl.viz.confusion import confusion_png_if_available

    png = confusion_png_if_available(out.with_name(out.stem + "_confusion.png"), result["confusion_matrix"],
                                     [c["class"] for c in result["per_class"]])
    if png is not None:  # without the viz extra (pip install 'tl[viz]') the CSV alone is written
        result["confusion_png"] = str(png)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, out)
    if result["unreadable"]:  # partial: the figures leave those images out (each was named in a warning)
        raise typer.Exit(1)
