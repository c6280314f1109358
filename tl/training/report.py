"""What a run writes and shows: the plan table, config.json, metrics.jsonl, checkpoint metadata, the summary."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from rich.table import Table
from torch import nn

import tl
from tl.config import TrainConfig
from tl.data.datasets import DatasetBundle
from tl.models.architectures import ModelInfo
from tl.models.heads import head_param_names
from tl.progress import console, is_quiet, out_console


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def print_plan(*, model: nn.Module, info: ModelInfo, strategy: str, reason: str, data: DatasetBundle,
               accelerator: Accelerator, backbone_lr_mult: float, fast: dict[str, Any] | None = None) -> None:
    """A small table of trainable/frozen parameters per part, and the facts of the run, before it starts."""
    if not accelerator.is_main_process or is_quiet():
        return
    heads = head_param_names(model)
    table = Table(title=f"{info.arch}: {strategy}" + (f" ({reason})" if reason else ""), title_justify="left")
    for column in ("part", "trainable", "frozen", "lr x"):
        table.add_column(column, justify="right" if column != "part" else "left")
    for part, lr_mult in (("backbone", backbone_lr_mult), ("head", 1.0)):
        params = [p for n, p in model.named_parameters() if (n in heads) == (part == "head")]
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        table.add_row(part, _fmt_count(trainable), _fmt_count(frozen), f"{lr_mult:g}" if trainable else "-")
    console.print(table)
    console.print(
        f"data: {len(data.train)} train / {len(data.val)} val images, {len(data.class_names)} classes | "
        f"input {info.input_size}px | weights: {info.weights_note} | device: {accelerator.device} x{accelerator.num_processes} "
        f"({accelerator.distributed_type.value}), precision {accelerator.mixed_precision}"
    )
    if fast:
        on = [name for name in ("channels_last", "compiled", "feature_cache", "device_augment", "image_cache", "kept_memory") if fast.get(name)]
        console.print(f"fast paths: {', '.join(on) if on else 'none'} (precision {fast.get('precision')})", highlight=False)


def checkpoint_meta(cfg: TrainConfig, info: ModelInfo, class_names: list[str], strategy: str,
                    mean: tuple, std: tuple, resize: int) -> dict[str, Any]:
    """Everything prediction needs to rebuild the model and its preprocessing from the checkpoint alone."""
    return {
        "tl_version": tl.__version__,
        "arch": cfg.model.arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "head": {"kind": cfg.model.head, "hidden": cfg.model.head_hidden, "norm": cfg.model.head_norm, "dropout": cfg.model.dropout},
        "cut_at": cfg.model.cut_at,
        "input_size": info.input_size,
        "resize_size": resize,
        "mean": list(mean),
        "std": list(std),
        "strategy": strategy,
        "weights": cfg.model.weights,
    }


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(tl.__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def versions() -> dict[str, str]:
    import accelerate
    import safetensors
    import torch
    import torchvision

    return {"tl": tl.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "accelerate": accelerate.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def write_config(path: Path, cfg: TrainConfig, data: DatasetBundle, accelerator: Accelerator, **resolved: Any) -> None:
    """The run's full configuration: enough for ``tl reproduce RUN`` to run it again."""
    record = {
        "config": cfg.to_dict(),
        "resolved": {**resolved, "num_processes": accelerator.num_processes,
                     "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device)},
        "class_names": data.class_names,
        "data_fingerprint": data.fingerprint,
        "versions": versions(),
        "git_commit": _git_commit(),
        "command": sys.argv,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the lines of the first ``epochs_done`` epochs (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    def finished(line: str) -> bool:
        try:
            return json.loads(line)["epoch"] <= epochs_done
        except (ValueError, KeyError, TypeError):  # a line cut short by the crash
            return False

    lines = [line for line in path.read_text().splitlines() if line.strip() and finished(line)]
    path.write_text("".join(line + "\n" for line in lines))


DATA_WAIT_HINT = 0.3  # above this share of step time spent waiting for batches, the loader is the bottleneck


def data_wait_hint(share: float, workers: int, cpus: int | None = None) -> str | None:
    """What to do when the model waits for data a large share of the time; None when it does not."""
    if share < DATA_WAIT_HINT:
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < cpus:
        return (f"the model waited for data {share:.0%} of the time: raise --num-workers (now {workers}) "
                f"up to the {cpus} CPUs this job has")
    return (f"the model waited for data {share:.0%} of the time with {workers} workers on {cpus} CPUs: "
            "ask for more CPUs, or lower --image-size")


def record_epoch(out: Path, metrics: dict[str, Any], improved: bool, *, workers: int = 0) -> None:
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(metrics) + "\n")
    if is_quiet():
        return
    mark = " *" if improved else ""
    console.print(
        f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.4f} top-1 {metrics['train_top1']:.3f} | "
        f"{val_text(metrics)} | "
        f"{metrics['train_images_per_s']:.1f} img/s, {metrics['train_seconds']:.1f}s, "
        f"data wait {metrics.get('data_wait_share', 0.0):.0%}{mark}",
        highlight=False,
    )
    hint = data_wait_hint(metrics.get("data_wait_share", 0.0), workers)
    if hint:
        console.print(f"hint: {hint}", highlight=False)


def val_text(metrics: dict[str, Any]) -> str:
    """The val part of an epoch line: top-1/top-5, or a multi-label run's mAP, F1 (micro/macro) and exact match."""
    if "val_map" in metrics:
        return (f"val loss {metrics['val_loss']:.4f} mAP {metrics['val_map']:.3f} F1 {metrics['val_f1_micro']:.3f}/"
                f"{metrics['val_f1_macro']:.3f} exact {metrics['val_exact_match']:.3f}")
    return f"val loss {metrics['val_loss']:.4f} top-1 {metrics['val_top1']:.3f} top-5 {metrics['val_top5']:.3f}"


def print_summary(best: dict[str, Any], *, seconds: float, out: Path, accelerator: Accelerator) -> None:
    """The run's answer, on stdout; the plan and the epoch lines before it are progress, on stderr."""
    if not accelerator.is_main_process or not best or is_quiet():
        return
    table = Table(title="tl train: done", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "best epoch": str(best["epoch"]),
        **({"best val mAP": f"{best['val_map']:.4f}", "best val F1 (micro)": f"{best['val_f1_micro']:.4f}",
            "best val exact match": f"{best['val_exact_match']:.4f}"} if "val_map" in best else
           {"best val top-1": f"{best['val_top1']:.4f}", "best val top-5": f"{best['val_top5']:.4f}"}),
        "total time": f"{seconds:.1f}s",
        "train images/s": f"{best['train_images_per_s']:.1f}",
        "unreadable images": f"{best.get('train_unreadable', 0)} train, {best.get('val_unreadable', 0)} val (left out)",
        "best checkpoint": str(out / "best"),
        "metrics": str(out / "metrics.jsonl"),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    out_console().print(table)

