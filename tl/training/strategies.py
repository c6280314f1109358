"""Fine-tuning strategies as data: which parameters train, which modules stay in inference mode.

- ``full``: everything trains.
- ``linear``: the backbone is a frozen feature extractor (its BatchNorm/Dropout in eval mode); the head trains.
- ``partial``: the first ``--freeze-depth`` stages (``models.backbone_stages``) are frozen.
- ``gradual``: ``linear`` until ``--unfreeze-epoch``, then ``full``.
- ``auto``: ``linear`` for little data per class, ``full`` otherwise (CS231n's transfer-learning guidance).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tl.models.architectures import backbone_stages
from tl.models.heads import get_head, head_param_names

AUTO_LINEAR_BELOW = 50  # images per class under which a frozen backbone generalises better than fine-tuning


@dataclass(frozen=True)
class Phase:
    """What trains during a stretch of epochs."""

    strategy: str  # full | linear | partial
    freeze_depth: int = 0


def resolve_auto(images_per_class: float, pretrained: bool) -> tuple[str, str]:
    """(strategy, reason) for ``--strategy auto``."""
    if not pretrained:
        return "full", "no pretrained weights, so there are no features worth freezing"
    if images_per_class < AUTO_LINEAR_BELOW:
        return "linear", f"{images_per_class:.0f} training images per class (< {AUTO_LINEAR_BELOW}): a frozen backbone overfits less"
    return "full", f"{images_per_class:.0f} training images per class (>= {AUTO_LINEAR_BELOW}): enough data to fine-tune everything"


def phase_for_epoch(strategy: str, epoch: int, *, freeze_depth: int, unfreeze_epoch: int) -> Phase:
    if strategy == "gradual":
        return Phase("linear") if epoch < unfreeze_epoch else Phase("full")
    return Phase(strategy, freeze_depth)


def frozen_roots(model: nn.Module, phase: Phase) -> list[str]:
    """The largest module subtrees that do not train in ``phase`` (each is put in eval mode as a whole)."""
    if phase.strategy == "full":
        return []
    if phase.strategy == "partial":
        return [name for name, _ in backbone_stages(model)[: phase.freeze_depth]]
    head_paths = get_head(model).all
    roots: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path in head_paths:
                continue
            if any(h.startswith(path + ".") for h in head_paths):
                walk(child, path + ".")  # a head sits inside (vgg's classifier[6]): open it up
            else:
                roots.append(path)

    walk(model, "")
    return roots


def apply_phase(model: nn.Module, phase: Phase) -> None:
    """Set ``requires_grad``: frozen roots off, everything else (heads always) on."""
    frozen = tuple(r + "." for r in frozen_roots(model, phase))
    heads = head_param_names(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name in heads or not name.startswith(frozen))


def set_train_mode(model: nn.Module, phase: Phase, *, freeze_bn: bool) -> None:
    """``model.train()``, except frozen subtrees (and, with ``freeze_bn``, every backbone BatchNorm) stay in eval.

    Keeping frozen BatchNorm layers in eval mode is what keeps their running statistics from drifting.
    """
    model.train()
    for root in frozen_roots(model, phase):
        model.get_submodule(root).eval()
    if freeze_bn:
        head_prefixes = tuple(get_head(model).all)
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(head_prefixes):
                module.eval()


def parameter_groups(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """Optimizer groups over trainable parameters only: head vs backbone (own lr), decay vs no decay.

    Norm weights and biases (1-D tensors) get no weight decay, as in timm and the torchvision references.
    """
    heads = head_param_names(model)
    buckets: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if name in heads else "backbone"
        buckets.setdefault((part, param.ndim > 1), []).append(param)
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        group_lr = lr * (1.0 if part == "head" else backbone_lr_mult)
        groups.append({"params": params, "name": f"{part}{'' if decay else '_no_decay'}", "lr": group_lr,
                       "initial_lr": group_lr, "weight_decay": weight_decay if decay else 0.0})
    return groups
