"""``ImageFiles``: a dataset of (path, label) pairs read with tl's safe decoder, shared by the folder datasets and
label files (``tl.data.labelled``); kept apart from ``datasets`` so both can use it without importing each other."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from PIL import Image
from torch.utils.data import Dataset

from tl.data.decode import read_image
from tl.errors import TLError

log = logging.getLogger("tl")


class ImageFiles(Dataset):
    """(path, label) pairs read with ``read_image``; class indices come from the caller, not from the folder."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform: Callable | None = None) -> None:
        self.samples = samples
        self.classes = classes
        self.targets = [label for _, label in samples]
        self.transform = transform
        self.decoded: list | None = None  # decoded images, one per sample, when tl.data.image_cache preloaded them
        self.full_sizes: list | None = None  # and each file's full (width, height): crops are drawn on it
        self._crop_for, self._crop = object(), None  # the transform _crop_before_decode was built for, and it

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def min_short_side(self) -> int | None:
        """The short side ``transform`` needs: large JPEGs are decoded at a reduced size down to it (decode.py)."""
        from tl.data.transforms import decode_short_side  # torchvision's transforms: not at import time

        return decode_short_side(self.transform)

    def __getitem__(self, index: int):
        """(image, label, readable). An unreadable file becomes a black stand-in marked unreadable, so batches
        keep their shape on every process (a rank skipping a step would hang the others) and the loss and
        metrics leave it out."""
        path, label = self.samples[index]
        cached = self.decoded[index] if self.decoded is not None else None
        try:
            if (crop_first := self._crop_before_decode()) is not None:
                if cached is None:
                    return crop_first(path), label, True
                if self.full_sizes is not None:
                    return crop_first.from_decoded(cached, self.full_sizes[index]), label, True
            image, readable = (cached if cached is not None else read_image(path, self.min_short_side)), True
        except TLError as error:
            log.warning(f"skipping unreadable image: {error.message}")
            image, readable = Image.new("RGB", (8, 8)), False
        return (self.transform(image) if self.transform else image), label, readable

    def _crop_before_decode(self):
        """``tl.data.transforms.CropBeforeDecode`` for a training transform, None for any other; built once per
        transform (rebuilt if the dataset's transform is replaced)."""
        if self._crop_for is not self.transform:
            from tl.data.transforms import CropBeforeDecode

            self._crop_for, self._crop = self.transform, CropBeforeDecode.of(self.transform)
        return self._crop


def photo_long_sides(dataset, count: int = 256) -> list[int]:
    """The long sides of up to ``count`` photos of ``dataset`` (evenly spaced over its ``samples``), read from their
    headers only: what the default recipe needs to tell small photos, such as thumbnails of 128 px
    (``tl.training.recipe.photo_input_size``). Datasets without files (a hub dataset, CIFAR-10) and unreadable files
    give nothing."""
    samples = getattr(dataset, "samples", None)
    if not samples:
        return []
    picked = sorted({index * len(samples) // count for index in range(min(count, len(samples)))})  # spread over classes
    sides = []
    for path, _ in (samples[index] for index in picked):
        try:
            with Image.open(path) as image:  # reads the header only
                sides.append(max(image.size))
        except Exception:  # a bad file is reported when it is loaded
            continue
    return sides
