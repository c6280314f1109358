"""Hugging Face ``datasets`` image classification sets: a hub id or a local ``save_to_disk`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from tl.errors import TLError

IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
VAL_SPLITS = ("validation", "val", "valid")


def load(name_or_path: str) -> Any:
    """A DatasetDict (or Dataset) from disk when the path exists, else from the hub (offline: a clear error)."""
    import datasets

    if Path(name_or_path).exists():
        try:
            return datasets.load_from_disk(name_or_path)
        except (FileNotFoundError, ValueError) as exc:
            raise TLError(f"--dataset hf:{name_or_path}: not a save_to_disk folder ({exc})",
                          "save it with Dataset.save_to_disk / DatasetDict.save_to_disk, or give a hub id")
    try:
        return datasets.load_dataset(name_or_path)
    except Exception as exc:  # hub and network errors come in many types
        reason = str(exc).splitlines()[0][:160]
        raise TLError(f"--dataset hf:{name_or_path}: cannot load it ({type(exc).__name__}: {reason})",
                      "offline? save it with save_to_disk on a machine that has it and pass that folder")


def pick_column(columns: list[str], requested: str | None, candidates: tuple[str, ...], flag: str) -> str:
    if requested:
        if requested not in columns:
            raise TLError(f"{flag}: no column {requested!r}", f"columns are {', '.join(columns)}")
        return requested
    for name in candidates:
        if name in columns:
            return name
    raise TLError(f"{flag}: none of {', '.join(candidates)} is a column", f"columns are {', '.join(columns)}: pass {flag}")


def is_multilabel(split: Any, label_column: str) -> bool:
    """A label column of lists (``Sequence(ClassLabel)``): each image has any number of the classes."""
    return hasattr(split.features[label_column], "feature")


def class_names(split: Any, label_column: str) -> list[str]:
    """From the ClassLabel feature; a plain column must hold integers 0..K-1 (strings or gaps cannot be indexed)."""
    feature = split.features[label_column]
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) / List(ClassLabel): a multi-label column
    if hasattr(feature, "names"):
        return list(feature.names)
    column = split[label_column]
    values = sorted({v for row in column for v in row} if is_multilabel(split, label_column) else set(column))
    if not all(isinstance(v, int) for v in values) or values != list(range(len(values))):
        raise TLError(f"--label-column {label_column}: values {values[:5]} are not class indices 0..K-1",
                      "cast it to a ClassLabel (dataset.class_encode_column) and save the dataset again")
    return [str(v) for v in values]


class HFImages(Dataset):
    """Rows of a Hugging Face split as (RGB image, label, readable)."""

    def __init__(self, split: Any, image_column: str, label_column: str, classes: list[str],
                 transform: Callable | None = None, indices: list[int] | None = None) -> None:
        self.split = split
        self.image_column = image_column
        self.label_column = label_column
        self.classes = classes
        self.transform = transform
        self.indices = indices if indices is not None else list(range(len(split)))
        labels = split[label_column]
        self.multilabel = is_multilabel(split, label_column)
        self.targets = [tuple(sorted(int(v) for v in labels[i])) if self.multilabel else int(labels[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            image = self.split[self.indices[index]][self.image_column].convert("RGB")
            readable = True
        except Exception:  # a broken encoded image: masked like an unreadable file
            image, readable = Image.new("RGB", (8, 8)), False
        target = self.targets[index]
        if self.multilabel:  # a 0/1 vector, one entry per class, as tl.data.labelled hands them out
            import torch

            target = torch.zeros(len(self.classes)).index_fill_(0, torch.tensor(target, dtype=torch.long), 1.0)
        return (self.transform(image) if self.transform else image), target, readable
