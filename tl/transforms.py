"""Train and eval preprocessing presets, built as twins from the model's input size and mean/std.

Model: torchvision's ``references/classification/presets.py``. Images are decoded by PIL (converted to RGB
by the dataset), cropped and flipped as uint8 tensors, and only then converted to float, which is the cheap
order (see ENVIRONMENT.md's decode measurements).
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2


def _to_normalized_float(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Callable]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_transform(*, size: int, resize: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Resize the short side to ``resize``, centre-crop ``size``: the evaluation protocol of ImageNet weights."""
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size), *_to_normalized_float(mean, std)])


def train_transform(
    *,
    size: int,
    resize: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: str = "basic",
    crop_scale_min: float = 0.25,
) -> v2.Compose:
    """``basic``: random resized crop + horizontal flip (the tutorials' recipe); ``none``: as evaluation."""
    if augment == "none":
        return eval_transform(size=size, resize=resize, mean=mean, std=std)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            *_to_normalized_float(mean, std),
        ]
    )
