"""Multi-label training: one sigmoid per class, binary cross-entropy, MixUp/CutMix on label vectors, and the
per-epoch evaluation (mAP, F1 at fitted thresholds, exact match) whose thresholds go into the checkpoint.

``tl.training.run`` calls in here at a handful of points and is otherwise the same recipe for both tasks: every
strategy, the feature cache, EMA and exact resume work unchanged, because the labels are only ever tensors that
the loss and the metrics read.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from accelerate import Accelerator
from torch import nn

from tl.errors import TLError
from tl.inference import multilabel as scores
from tl.models.heads import split_outputs

SINGLE_LABEL_SELECT = ("val_top1", "val_balanced_accuracy")  # metrics a multi-label run has not: it selects by val_map


def is_multilabel(task: str, data) -> bool:
    """Whether this run is multi-label; says so on stderr when the labels chose it (``--task auto``)."""
    if data.multilabel and task == "auto":
        from tl.progress import log

        log.info("task: multilabel (the labels give some images several classes, or none; pass --task to choose)")
    return bool(data.multilabel)


def check_options(cfg, multi: bool) -> None:
    """Options that mean nothing for this task, refused in one line before any work."""
    if multi and cfg.optim.balance == "sampler":
        raise TLError("--balance sampler draws images by their class: a multi-label image has several",
                      "use --balance loss (a per-class weight on the positives) for multi-label data")
    if not multi and cfg.run.select_by == "val_map":
        raise TLError("--select-by val_map: mAP is a multi-label metric and these labels give each image one class",
                      "use val_top1, val_loss or val_balanced_accuracy (or --task multilabel)")


def select_by(chosen: str) -> str:
    return "val_map" if chosen in SINGLE_LABEL_SELECT else chosen


def positive_weights(targets: list[tuple[int, ...]], num_classes: int, power: float = 0.5) -> list[float]:
    """``--balance loss``: each class's positive term weighs (negatives / positives) ** power, tl's n^-1/2 rule
    (tl.training.setup.BALANCE_POWER) applied to the yes/no question of each class; a class without positives: 1."""
    positives = [0] * num_classes
    for labels in targets:
        for c in labels:
            positives[c] += 1
    return [((len(targets) - n) / n) ** power if n else 1.0 for n in positives]


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy with logits, averaged over the classes: one value per image, as the loop expects.
    ``label_smoothing`` e moves each 0/1 target e/2 towards the other side (--label-smoothing)."""

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.pos_weight, self.label_smoothing = pos_weight, label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float() * (1 - self.label_smoothing) + self.label_smoothing / 2
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none",
                                                              pos_weight=self.pos_weight)
        return loss.mean(1)


def exact_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image: 1 when every class is right at probability 0.5 (the train exact-match ratio)."""
    return ((logits > 0) == (targets > 0.5)).all(1)


def batch_mix(*, mixup: float, cutmix: float) -> Callable | None:
    """MixUp/CutMix for label vectors (torchvision's v2 versions take class indices only): images and their 0/1
    vectors are mixed with the batch rolled by one, with the pasted area's share for CutMix; one of the two per
    batch when both are on. Draws from torch's global generator, which resume restores."""
    if mixup <= 0 and cutmix <= 0:
        return None

    def mix(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
        alpha = cutmix if use_cutmix else mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other, other_targets = images.roll(1, 0), targets.roll(1, 0)
        if not use_cutmix:
            return images * lam + other * (1 - lam), targets * lam + other_targets * (1 - lam)
        h, w = images.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half_h, half_w = int(h * (1 - lam) ** 0.5 / 2), int(w * (1 - lam) ** 0.5 / 2)
        y0, y1, x0, x1 = max(cy - half_h, 0), min(cy + half_h, h), max(cx - half_w, 0), min(cx + half_w, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return images, targets * kept + other_targets * (1 - kept)

    return mix


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, *, prefix: str = "val",
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Loss, mAP, micro/macro F1 and exact match over the whole split, plus ``thresholds``: each class's F1-best
    threshold on this split (fit on the same images, so the F1 figures are optimistic; mAP needs no threshold).
    ``gather_for_metrics`` per batch, so each image counts once whatever the world size."""
    model.eval()
    start, forward = time.perf_counter(), forward or model
    probs, targets, readable_all, losses = [], [], [], []
    for images, labels, readable in loader:
        logits = split_outputs(forward(images))[0]
        logits, labels, readable = accelerator.gather_for_metrics((logits, labels, readable))
        logits, labels = logits.float(), labels.float()
        losses.append(nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).double())
        probs.append(logits.sigmoid().cpu())
        targets.append(labels.cpu())
        readable_all.append(readable.bool().cpu())
    keep = torch.cat(readable_all) if readable_all else torch.zeros(0, dtype=torch.bool)
    probs_t, targets_t = (torch.cat(probs)[keep], torch.cat(targets)[keep]) if probs else (torch.zeros(0, 0), torch.zeros(0, 0))
    loss = (torch.cat(losses).cpu()[keep].mean().item() if keep.any() else 0.0) if losses else 0.0
    thresholds = scores.fit_thresholds(probs_t, targets_t) if len(probs_t) else []
    f1 = scores.f1_scores(scores.decide(probs_t, thresholds), targets_t) if len(probs_t) else {}
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_map": scores.mean_ap(probs_t, targets_t) if len(probs_t) else 0.0,
        f"{prefix}_f1_micro": f1.get("f1_micro", 0.0),
        f"{prefix}_f1_macro": f1.get("f1_macro", 0.0),
        f"{prefix}_exact_match": f1.get("exact_match", 0.0),
        f"{prefix}_top1": f1.get("exact_match", 0.0),  # what single-label readers of metrics.jsonl look for: exact match here
        f"{prefix}_count": int(keep.sum()),
        f"{prefix}_unreadable": int((~keep).sum()),
        f"{prefix}_seconds": time.perf_counter() - start,
        "thresholds": thresholds,
    }

