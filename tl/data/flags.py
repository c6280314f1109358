"""The dataset flags shared by ``tl train``, ``tl check-data`` and ``tl stats``, declared once.

Names, help and defaults follow ``tl train``'s Data panel, so a data command line moves between the three
unchanged: ``tl check-data --dataset imagefolder --data-dir D`` checks exactly what ``tl train ... --data-dir D`` reads.
A ``--data-dir`` without ``--dataset`` is read as ``tl.data.infer`` says, in every command alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tl.config import DataConfig
from tl.data.infer import resolve_dataset

if TYPE_CHECKING:
    from tl.data.datasets import DatasetBundle

DATA = "Data"

DATASET_HELP = ("synthetic | imagefolder | cifar10 | caltech101 | hf:<hub id or save_to_disk folder>. Default: inferred from "
                "--data-dir (a save_to_disk folder: hf:, cifar-10-batches-py/: cifar10, 101_ObjectCategories/: caltech101, "
                "else imagefolder)")
Dataset = Annotated[Optional[str], typer.Option(help=DATASET_HELP + "; without --data-dir, synthetic.", rich_help_panel=DATA, show_default=False)]
DataDir = Annotated[Optional[Path], typer.Option(help="Folder with train/<class>/ and val/<class>/ (or one folder per class).", rich_help_panel=DATA)]
ValFraction = Annotated[Optional[float], typer.Option(help="Share held out for validation where the data has no val split (as tl train).", rich_help_panel=DATA)]
TestFraction = Annotated[Optional[float], typer.Option(help="Share held out for testing where tl makes the split (as tl train).", rich_help_panel=DATA)]
Seed = Annotated[int, typer.Option(help="Seed of the split tl makes for flat folders and caltech101 (tl train's --seed).", rich_help_panel=DATA)]
Download = Annotated[bool, typer.Option(help="cifar10/caltech101: download into --data-dir when missing (needs internet).", rich_help_panel=DATA)]
ImageColumn = Annotated[Optional[str], typer.Option(help="hf: datasets: the image column (default: image, img, ...).", rich_help_panel=DATA)]
LabelColumn = Annotated[Optional[str], typer.Option(help="hf: datasets: the label column (default: label, labels, ...).", rich_help_panel=DATA)]
CaltechBackground = Annotated[bool, typer.Option(help="caltech101: keep the BACKGROUND_Google clutter class.", rich_help_panel=DATA)]
Labels = Annotated[Optional[Path], typer.Option(help="A label file: CSV of path,label rows (several labels in a cell, or one 0/1 column per class: multi-label; optional split or is_valid column); paths relative to --data-dir (default: the CSV's folder) or absolute.", rich_help_panel=DATA)]
LabelSep = Annotated[Optional[str], typer.Option(help="--labels: separator of several labels in one cell (default: the first of ; | and space found; none: one label per cell).", rich_help_panel=DATA)]
Task = Annotated[str, typer.Option(help="auto | single | multilabel (one yes/no output per class). auto: multilabel when the labels give an image several classes.", rich_help_panel=DATA)]
BatchSize = Annotated[int, typer.Option(help="Images per loader batch.", rich_help_panel=DATA)]
NumWorkers = Annotated[int, typer.Option(help="DataLoader workers; -1: automatic.", rich_help_panel=DATA)]


def data_config(*, dataset: Optional[str], data_dir: Optional[Path], val_fraction: Optional[float], test_fraction: Optional[float],
                download: bool, image_column: Optional[str], label_column: Optional[str], caltech_background: bool,
                batch_size: int, num_workers: int, fallback: str = DataConfig.dataset, labels: Optional[Path] = None,
                label_sep: Optional[str] = None, task: str = DataConfig.task) -> DataConfig:
    """The flags as tl train would read them (validated, errors naming the flag); no ``dataset``: inferred from
    ``data_dir`` as tl train infers it, ``fallback`` without either."""
    dataset = resolve_dataset(dataset, data_dir, fallback=fallback, labels=labels)
    return DataConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, val_fraction=val_fraction,
                      labels=str(labels) if labels else None, label_sep=label_sep, task=task,
                      test_fraction=test_fraction, download=download, image_column=image_column, label_column=label_column,
                      caltech_background=caltech_background, batch_size=batch_size, num_workers=num_workers)


def keep(image):
    """Identity transform (module level, so loader workers can pickle it under spawn)."""
    return image


def build(cfg: DataConfig, *, seed: int, transform=keep) -> "DatasetBundle":
    """The splits tl train would see for ``cfg`` and ``seed``; no manifest is read or written."""
    from tl.data.datasets import build_datasets

    return build_datasets(cfg, seed=seed, train_tf=transform, eval_tf=transform)


def splits(bundle: "DatasetBundle") -> list[tuple[str, object]]:
    """(name, dataset) for the splits the bundle has, in train/val/test order."""
    return [(name, data) for name, data in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)) if data is not None]
