"""tl's built-in synthetic set: coloured shapes drawn on the fly, the same for a given seed, no files needed.

The demo, the tests and the benchmarks use it; ``tl train --dataset synthetic`` trains on it offline.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

_SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


class SyntheticShapes(Dataset):
    """Coloured shapes on a noisy background, drawn on the fly and identical for a given seed.

    Class ``k`` is a shape (``_SHAPES[k % 6]``) in its own hue, striped for every second block of six
    classes; position, size, background and pixel noise are random per image. Colour alone or shape
    alone separates most classes, so a working loop learns it in a few epochs and a broken one does not.
    """

    def __init__(self, *, num_classes: int, per_class: int, size: int, seed: int, split: str,
                 transform: Callable | None = None) -> None:
        self.num_classes = num_classes
        self.per_class = per_class
        self.size = size
        self.seed = seed
        self.split_id = {"train": 0, "val": 1, "test": 2}[split]
        self.transform = transform
        self.classes = [f"{_SHAPES[k % len(_SHAPES)]}_{k}" for k in range(num_classes)]
        self.targets = [i % num_classes for i in range(num_classes * per_class)]

    def __len__(self) -> int:
        return len(self.targets)

    def _class_colour(self, label: int) -> np.ndarray:
        hue = (label * 0.618034) % 1.0  # golden-ratio steps spread hues evenly for any class count
        rgb = np.array([math.cos(2 * math.pi * (hue - offset)) for offset in (0.0, 1 / 3, 2 / 3)])
        return 128 + 110 * rgb

    def draw(self, index: int) -> Image.Image:
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, self.split_id, index])
        s = self.size
        background = rng.uniform(20, 90, size=3)
        pixels = np.clip(background + rng.normal(0, 12, size=(s, s, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        colour = tuple(int(c) for c in np.clip(self._class_colour(label) + rng.normal(0, 12, size=3), 0, 255))
        extent = rng.uniform(0.45, 0.75) * s
        x0, y0 = rng.uniform(0, s - extent, size=2)
        box = (x0, y0, x0 + extent, y0 + extent)
        shape = _SHAPES[label % len(_SHAPES)]
        if shape == "disc":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        elif shape == "triangle":
            draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=colour)
        elif shape == "cross":
            w = extent / 3
            draw.rectangle((x0 + w, y0, x0 + 2 * w, y0 + extent), fill=colour)
            draw.rectangle((x0, y0 + w, x0 + extent, y0 + 2 * w), fill=colour)
        elif shape == "ring":
            draw.ellipse(box, outline=colour, width=max(2, int(extent / 6)))
        else:  # bar
            draw.rectangle((x0, y0 + extent / 3, x0 + extent, y0 + 2 * extent / 3), fill=colour)
        if (label // len(_SHAPES)) % 2 == 1:  # stripes: the texture cue for the second block of classes
            for y in range(int(y0), int(y0 + extent), 4):
                draw.line((x0, y, x0 + extent, y), fill=tuple(int(c * 0.4) for c in colour), width=1)
        return image

    def __getitem__(self, index: int):
        image = self.draw(index)
        return (self.transform(image) if self.transform else image), self.targets[index], True
