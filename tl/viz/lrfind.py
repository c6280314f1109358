"""``tl lr-find``: the learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's lr_find).

A short run raises the rate exponentially from ``--start-lr`` to ``--end-lr``, one step per batch, and records
the loss; the sweep stops once the loss has blown up. The suggestion is the rate where the smoothed loss falls
fastest, taken before its minimum: there training makes the most progress per step while still stable. The
model, strategy, parameter groups and optimizer are tl train's, so the suggested rate is a ``--lr`` for it
(the head's rate; the backbone's follows ``--backbone-lr-mult`` as in training).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated

import typer

from tl.data import flags
from tl.errors import TLError
from tl.training.command import Optimizer, Strategy
from tl.viz.inputs import Arch, ImageSize

SWEEP, OUTPUT = "Sweep", "Output"
SIZE = (7.0, 4.5)  # inches
SMOOTHING = 0.9  # exponential moving average of the loss: single batches are too noisy to compare
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best


def smoothed(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (the first values are not pulled towards zero)."""
    average, out = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**step))
    return out


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The rate of the steepest fall of the smoothed loss (per log-rate), before the loss's minimum."""
    curve = smoothed(losses)
    lowest = min(range(len(curve)), key=curve.__getitem__)
    if lowest < 2:
        return lrs[lowest]
    slopes = [(curve[i + 1] - curve[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in range(1, lowest)]
    return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]


def sweep(model, loader, optimizer, *, start_lr: float, end_lr: float, steps: int, device,
          multilabel: bool = False) -> tuple[list[float], list[float]]:
    """(rates, losses) of up to ``steps`` optimizer steps on ever higher rates; the loader is cycled if it is short.
    The loss is training's: cross-entropy, or per-class binary cross-entropy for multi-label data."""
    import torch

    from tl.models.heads import split_outputs
    from tl.training.loop import masked_mean
    from tl.training.multilabel import MultiLabelLoss
    from tl.training.optim import set_lr

    loss_fn = MultiLabelLoss(None, 0.0) if multilabel else torch.nn.CrossEntropyLoss(reduction="none")
    lrs, losses, best = [], [], math.inf
    batches = iter(loader)
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
        try:
            images, labels, readable = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels, readable = next(batches)
        set_lr(optimizer, lr)  # every group's initial_lr (1 for the head, the multiplier for the backbone) x lr
        logits = split_outputs(model(images.to(device)))[0]
        loss = masked_mean(loss_fn(logits, labels.to(device)), readable.to(device, torch.float32))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()  # a sync per step: the sweep is a few hundred steps, and it must see divergence at once
        if not math.isfinite(value):
            break
        lrs.append(lr)
        losses.append(value)
        best = min(best, smoothed(losses)[-1])
        if step > 5 and smoothed(losses)[-1] > DIVERGED * best:
            break
    return lrs, losses


def plot_sweep(lrs: list[float], losses: list[float], suggested: float, path: Path, *, title: str = "") -> Path:
    from tl.viz import new_figure, save

    fig = new_figure(*SIZE)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="lightgrey", linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed(losses), color="tab:blue", label="smoothed")
    ax.axvline(suggested, color="tab:red", linestyle="--", label=f"suggested --lr {suggested:.1e}")
    ax.set_xscale("log")
    curve = smoothed(losses)
    ax.set_ylim(min(losses) - 0.05 * abs(min(losses)), min(max(curve), DIVERGED * min(curve)) * 1.05)
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def command(
    dataset: flags.Dataset = None,
    data_dir: flags.DataDir = None,
    val_fraction: flags.ValFraction = None,
    test_fraction: flags.TestFraction = None,
    seed: flags.Seed = 0,
    download: flags.Download = False,
    image_column: flags.ImageColumn = None,
    label_column: flags.LabelColumn = None,
    caltech_background: flags.CaltechBackground = False,
    batch_size: flags.BatchSize = 32,
    num_workers: flags.NumWorkers = -1,
    arch: Arch = "resnet18",
    weights: Annotated[str, typer.Option(help="As tl train --weights: none | DEFAULT | a torchvision weights name | PATH.", rich_help_panel="Model")] = "none",
    image_size: ImageSize = None,
    strategy: Annotated[Strategy, typer.Option(help="As tl train --strategy.", rich_help_panel="Model")] = Strategy("full"),
    optimizer: Annotated[Optimizer, typer.Option(help="As tl train --optimizer.", rich_help_panel=SWEEP)] = Optimizer("adamw"),
    backbone_lr_mult: Annotated[float, typer.Option(help="As tl train: backbone lr = lr x this (with pretrained weights).", rich_help_panel=SWEEP)] = 0.01,
    weight_decay: Annotated[float, typer.Option(help="As tl train --weight-decay.", rich_help_panel=SWEEP)] = 0.01,
    start_lr: Annotated[float, typer.Option(help="First rate of the sweep.", rich_help_panel=SWEEP)] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="Last rate of the sweep.", rich_help_panel=SWEEP)] = 10.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps (one batch each).", rich_help_panel=SWEEP)] = 100,
    out: Annotated[Path, typer.Option(help="PNG to write.", rich_help_panel=OUTPUT)] = Path("lr.png"),
) -> None:
    """Sweep the learning rate over a short run, plot the loss against it (lr.png) and suggest a --lr.

    Example:

      tl lr-find --dataset imagefolder --data-dir data/hymenoptera --arch resnet18 --weights DEFAULT
    """
    import torch
    from torch.utils.data import DataLoader

    from tl.config import OptimConfig
    from tl.data.datasets import build_datasets
    from tl.data.transforms import eval_transform, train_transform
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD, build_model
    from tl.progress import console
    from tl.runtime import num_workers as resolve_workers
    from tl.training.optim import build_optimizer
    from tl.training.strategies import apply_phase, parameter_groups, phase_for_epoch, resolve_auto, set_train_mode
    from tl.viz import require_matplotlib
    from tl.viz.inputs import input_sizes

    require_matplotlib()
    if not 0 < start_lr < end_lr:
        raise TLError("--start-lr/--end-lr: need 0 < start < end", "e.g. --start-lr 1e-7 --end-lr 10")
    if steps < 10:
        raise TLError("--steps: must be at least 10", "a sweep needs enough points to see the loss fall")
    cfg = flags.data_config(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                            download=download, image_column=image_column, label_column=label_column,
                            caltech_background=caltech_background, batch_size=batch_size, num_workers=num_workers)
    cfg = dataclasses.replace(cfg, image_size=image_size)
    optim_cfg = OptimConfig(optimizer=optimizer.value, weight_decay=weight_decay)  # validated as tl train validates it
    size, resize = input_sizes(cfg, arch)
    tf = dict(size=size, resize=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.manual_seed(seed)
    data = build_datasets(cfg, seed=seed, train_tf=train_transform(**tf), eval_tf=eval_transform(**tf))
    model, _ = build_model(arch, len(data.class_names), weights=weights, image_size=size)
    pretrained = weights.lower() != "none"
    chosen = strategy.value
    if chosen == "auto":
        chosen, _ = resolve_auto(len(data.train) / len(data.class_names), pretrained)
    if chosen == "partial":
        raise TLError("--strategy partial: not supported by lr-find", "sweep with full or linear; partial trains in between")
    phase = phase_for_epoch(chosen, 0, freeze_depth=0, unfreeze_epoch=1)  # gradual starts as linear
    apply_phase(model, phase)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    set_train_mode(model, phase, freeze_bn=False)
    groups = parameter_groups(model, lr=1.0, weight_decay=weight_decay, backbone_lr_mult=backbone_lr_mult if pretrained else 1.0)
    opt = build_optimizer(groups, optim_cfg)
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=len(data.train) >= batch_size,
                        num_workers=resolve_workers(num_workers, 1), generator=torch.Generator().manual_seed(seed))
    lrs, losses = sweep(model, loader, opt, start_lr=start_lr, end_lr=end_lr, steps=steps, device=device, multilabel=data.multilabel)
    if len(lrs) < 3:
        raise TLError(f"the loss diverged at once (after {len(lrs)} steps)", "lower --start-lr")
    suggested = suggest(lrs, losses)
    path = plot_sweep(lrs, losses, suggested, out, title=f"lr-find: {arch}, {chosen}, {cfg.dataset}, batch {batch_size}")
    console.print(f"{len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e} ({chosen}, {arch}); plot: {path}", highlight=False)
    print(f"suggested --lr {suggested:.1e}")
