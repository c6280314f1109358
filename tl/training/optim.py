"""Optimizers by name, and the learning-rate schedule as a pure function of the step.

The schedule is computed (nanoGPT's ``get_lr``) rather than kept in a torch scheduler object: it is then
trivially resumable and survives the optimizer being rebuilt when ``gradual`` unfreezes the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from tl.config import OptimConfig

_OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
}


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return _OPTIMIZERS[cfg.optimizer](groups, cfg)


def lr_factor(step: int, *, kind: str, total_steps: int, warmup_steps: int, steps_per_epoch: int,
              step_size: int, gamma: float) -> float:
    """Multiplier on each group's initial lr at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if kind == "step":
        return gamma ** ((step // max(1, steps_per_epoch)) // step_size)
    return 1.0  # plateau and none: only warmup and plateau reductions change the rate


@dataclass
class Plateau:
    """Reduce the rate when the watched validation metric (``--select-by``) stops improving; after ``max_reductions`` cuts, stop.

    The Caltech-101 write-up's recipe (ReduceLROnPlateau on accuracy, stop after a few reductions).
    """

    factor: float
    patience: int
    max_reductions: int = 0
    best: float = -math.inf
    bad_epochs: int = 0
    reductions: int = 0
    multiplier: float = 1.0
    watching: str = "val_top1"  # the --select-by metric ``best`` is of; states saved before it was recorded: val top-1

    def watch(self, metric_name: str, best_so_far: float) -> None:
        """Watch ``metric_name`` from now on; a state recorded under another metric starts over from ``best_so_far``
        (the best epoch's value of the new metric), keeping its reductions."""
        if metric_name != self.watching:
            self.watching, self.best, self.bad_epochs = metric_name, best_so_far, 0

    def update(self, metric: float) -> bool:
        """Record an epoch's metric; True when the rate was just reduced."""
        if metric > self.best + 1e-9:
            self.best, self.bad_epochs = metric, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience:
            return False
        self.bad_epochs = 0
        self.reductions += 1
        self.multiplier *= self.factor
        return True

    @property
    def exhausted(self) -> bool:
        return self.max_reductions > 0 and self.reductions >= self.max_reductions


def backbone_warmup_factor(step: int, warmup_steps: int) -> float:
    """The backbone's rate ramps up from 0 while the new head learns at its full rate.

    A random head sends noisy gradients into the pretrained features in the first steps (the feature
    distortion that LP-FT, Kumar et al. 2022, avoids by training the head first); ramping the backbone
    in gives the same effect without a separate phase.
    """
    return 1.0 if step >= warmup_steps else step / warmup_steps


def set_lr(optimizer: torch.optim.Optimizer, factor: float, backbone_factor: float = 1.0) -> float:
    """Apply ``factor`` (and ``backbone_factor`` on backbone groups) to every group's initial lr; returns the head's."""
    for group in optimizer.param_groups:
        extra = backbone_factor if group.get("name", "").startswith("backbone") else 1.0
        group["lr"] = group["initial_lr"] * factor * extra
    head = [g for g in optimizer.param_groups if g.get("name", "").startswith("head")]
    return (head or optimizer.param_groups)[0]["lr"]
