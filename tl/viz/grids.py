"""``tl show-batch`` and ``tl show-predictions``: grids of images exactly as the model receives them.

Both show the network's input tensor with the normalisation undone, not the file on disk: crops, flips and
colour jitter are what the model learns from, and a crop that cuts the object off is visible only here.
Undoing the normalisation gives back the pixels whatever mean/std were used, so the pictures do not depend on
``--mean/--std``. Images are drawn in a random order fixed by ``--seed``, as a training batch would be.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Sequence

import typer

from tl.data import flags
from tl.errors import TLError
from tl.inference.evaluate import Split
from tl.training.command import Augment
from tl.viz.inputs import Arch, ImageSize

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

CELL = (2.0, 2.3)  # inches per image (width, height): the image plus a two-line title
HEADING = 0.4  # inches for the figure's own title
OUTPUT = "Output"


class Part(str, Enum):
    train = "train"
    val = "val"
    test = "test"


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) of a near-square grid for ``n`` images."""
    columns = math.ceil(math.sqrt(n))
    return columns, math.ceil(n / columns)


def draw_grid(images: Sequence["np.ndarray"], titles: Sequence[str], path: Path, *, heading: str = "",
              wrong: Sequence[bool] | None = None) -> Path:
    """``grid_figure`` written to ``path`` as a PNG."""
    from tl.viz import save

    return save(grid_figure(images, titles, heading=heading, wrong=wrong), path)


def grid_figure(images: Sequence["np.ndarray"], titles: Sequence[str], *, heading: str = "",
                wrong: Sequence[bool] | None = None) -> "Figure":
    """Images (H, W, 3 in [0, 1]) in a grid with a title each; ``wrong`` ones get a red title and frame."""
    from tl.viz import new_figure

    columns, rows = grid_shape(len(images))
    fig = new_figure(columns * CELL[0], rows * CELL[1] + HEADING)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for index, ax in enumerate(axes):
        if index >= len(images):
            ax.set_axis_off()
            continue
        image, bad = images[index], bool(wrong and wrong[index])
        small = max(image.shape[:2]) < 96  # tiny inputs: show the pixels, not a blur of them
        ax.imshow(image, interpolation="nearest" if small else "antialiased")
        ax.set_title(titles[index], fontsize=8, color="tab:red" if bad else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("tab:red" if bad else "lightgrey")
            spine.set_linewidth(3 if bad else 1)
    if heading:
        fig.suptitle(heading, fontsize=10)
    return fig


def _order(length: int, seed: int) -> list[int]:
    import torch

    return torch.randperm(length, generator=torch.Generator().manual_seed(seed)).tolist()


# ------------------------------------------------------------------------------------------------------
# tl show-batch
# ------------------------------------------------------------------------------------------------------


def show_batch(dataset, class_names: list[str], *, n: int, seed: int, mean: Sequence[float], std: Sequence[float],
               path: Path, heading: str) -> tuple[Path, int]:
    """Draw ``n`` readable samples of ``dataset`` (items: normalised tensor, label, readable); returns (path, count)."""
    import torch

    from tl.viz import to_image

    torch.manual_seed(seed)  # the augmentation drawn is part of the picture: the same seed shows the same crops
    images, titles = [], []
    for index in _order(len(dataset), seed):
        tensor, label, readable = dataset[index]
        if readable:
            images.append(to_image(tensor, mean, std))
            multi = getattr(label, "ndim", 0) == 1  # a multi-label 0/1 vector: every class present
            titles.append(";".join(class_names[c] for c in label.nonzero().flatten().tolist()) or "(none)" if multi else class_names[label])
        if len(images) == n:
            break
    if not images:
        raise TLError("no readable image in this split", "run `tl check-data` with the same flags to see why")
    return draw_grid(images, titles, path, heading=heading), len(images)


def show_batch_command(
    dataset: flags.Dataset = None,
    data_dir: flags.DataDir = None,
    split: Annotated[Part, typer.Option(help="train: with training augmentation; val/test: evaluation preprocessing.", rich_help_panel=flags.DATA)] = Part.train,
    val_fraction: flags.ValFraction = None,
    test_fraction: flags.TestFraction = None,
    seed: flags.Seed = 0,
    download: flags.Download = False,
    image_column: flags.ImageColumn = None,
    label_column: flags.LabelColumn = None,
    caltech_background: flags.CaltechBackground = False,
    labels: flags.Labels = None,
    label_sep: flags.LabelSep = None,
    arch: Arch = "resnet18",
    image_size: ImageSize = None,
    augment: Annotated[Augment, typer.Option(help="Training augmentation preset (as tl train --augment).", rich_help_panel=flags.DATA)] = Augment("basic"),
    crop_scale_min: Annotated[float, typer.Option(help="Smallest area share of the random resized crop (as tl train).", rich_help_panel=flags.DATA)] = 0.25,
    n: Annotated[int, typer.Option(help="Number of images.", rich_help_panel=OUTPUT)] = 16,
    out: Annotated[Path, typer.Option(help="PNG to write.", rich_help_panel=OUTPUT)] = Path("batch.png"),
) -> None:
    """Draw a grid of images as the model sees them after augmentation, titled with their classes.

    Example:

      tl show-batch --dataset imagefolder --data-dir data/hymenoptera --arch resnet18 --n 16 --out batch.png
    """
    from tl.data.datasets import build_datasets
    from tl.data.transforms import eval_transform, train_transform
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD
    from tl.viz import require_matplotlib
    from tl.viz.inputs import input_sizes

    require_matplotlib()
    if n < 1:
        raise TLError("--n: must be at least 1", "e.g. --n 16")
    cfg = flags.data_config(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                            download=download, image_column=image_column, label_column=label_column,
                            caltech_background=caltech_background, batch_size=n, num_workers=0, labels=labels, label_sep=label_sep)
    cfg = dataclasses.replace(cfg, image_size=image_size, augment=augment.value, crop_scale_min=crop_scale_min)
    size, resize = input_sizes(cfg, arch)
    tf = dict(size=size, resize=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    data = build_datasets(cfg, seed=seed, eval_tf=eval_transform(**tf),
                          train_tf=train_transform(**tf, augment=cfg.augment, crop_scale_min=cfg.crop_scale_min))
    chosen = {"train": data.train, "val": data.val, "test": data.test}[split.value]
    if chosen is None:
        raise TLError(f"--split test: {cfg.dataset} has no test split here", "use --split val, or add DIR/test/<class>/ folders")
    preprocessing = f"augment {cfg.augment}" if split == Part.train else "evaluation preprocessing"
    path, count = show_batch(chosen, data.class_names, n=n, seed=seed, mean=IMAGENET_MEAN, std=IMAGENET_STD, path=out,
                             heading=f"{cfg.dataset} {split.value}: {size} px, {preprocessing}")
    print(f"{path}: {count} {split.value} images")


# ------------------------------------------------------------------------------------------------------
# tl show-predictions
# ------------------------------------------------------------------------------------------------------


@dataclass
class Pick:
    image: "np.ndarray"
    predicted: str
    probability: float
    true: str

    @property
    def wrong(self) -> bool:
        return self.predicted != self.true


def prediction_title(predicted: str, probability: float, true: str) -> str:
    return f"pred: {predicted} (p={probability:.2f}) | true: {true}"


def pick_predictions(predictor, dataset, *, n: int, errors_only: bool, seed: int, batch_size: int,
                     num_workers: int) -> tuple[list[Pick], int]:
    """(up to ``n`` predictions in a seeded random order, images looked at); stops as soon as it has ``n``."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from tl.inference.predictor import probabilities
    from tl.runtime import num_workers as resolve_workers
    from tl.viz import to_image

    loader = DataLoader(Subset(dataset, _order(len(dataset), seed)), batch_size=batch_size,
                        num_workers=resolve_workers(num_workers, 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    predictor.model.to(device)
    picks: list[Pick] = []
    seen = 0
    with torch.inference_mode():
        for images, labels, readable in loader:
            confidence, predicted = probabilities(predictor, images.to(device)).cpu().max(1)
            for i in range(len(labels)):
                if not readable[i]:
                    continue
                seen += 1
                pick = Pick(to_image(images[i], predictor.mean, predictor.std), predictor.class_names[int(predicted[i])],
                            float(confidence[i]), predictor.class_names[int(labels[i])])
                if pick.wrong or not errors_only:
                    picks.append(pick)
                if len(picks) == n:
                    return picks, seen
    return picks, seen


def default_out(checkpoint: Path, name: str) -> Path:
    """RUN/name for a checkpoint of a run (not inside RUN/best, which the next save replaces); else ./name."""
    from tl.inference.evaluate import run_dir_of

    try:
        return run_dir_of(checkpoint) / name
    except TLError:  # an exported bundle has no run around it
        return Path(name)


CheckpointArg = Annotated[Path, typer.Option(help="Checkpoint of a tl train run (RUN/best).", rich_help_panel="Model")]
RunDataset = Annotated[Optional[str], typer.Option(help="Default: the run's own split, rebuilt from RUN/config.json. Or: synthetic | imagefolder | cifar10 | caltech101 | hf:<id>.", rich_help_panel=flags.DATA)]


def show_predictions_command(
    checkpoint: CheckpointArg,
    dataset: RunDataset = None,
    data_dir: flags.DataDir = None,
    split: Annotated[Split, typer.Option(help="Which split to draw from.", rich_help_panel=flags.DATA)] = Split.val,
    val_fraction: flags.ValFraction = None,
    test_fraction: flags.TestFraction = None,
    seed: flags.Seed = 0,
    download: flags.Download = False,
    image_column: flags.ImageColumn = None,
    label_column: flags.LabelColumn = None,
    caltech_background: flags.CaltechBackground = False,
    batch_size: flags.BatchSize = 32,
    num_workers: flags.NumWorkers = -1,
    n: Annotated[int, typer.Option(help="Number of images.", rich_help_panel=OUTPUT)] = 16,
    errors_only: Annotated[bool, typer.Option(help="Only misclassified images.", rich_help_panel=OUTPUT)] = False,
    out: Annotated[Optional[Path], typer.Option(help="PNG to write; default RUN/predictions.png.", rich_help_panel=OUTPUT)] = None,
) -> None:
    """Draw a grid of predictions titled `pred: X (p=0.93) | true: Y`, the wrong ones in red.

    Examples:

      tl show-predictions --checkpoint runs/r18/best --errors-only

      tl show-predictions --checkpoint runs/r18/best --dataset imagefolder --data-dir new_photos --split test
    """
    from tl.inference.evaluate import load_split
    from tl.inference.predictor import check_checkpoint_path, load_predictor
    from tl.viz import require_matplotlib

    require_matplotlib()
    if n < 1:
        raise TLError("--n: must be at least 1", "e.g. --n 16")
    check_checkpoint_path(checkpoint)
    predictor = load_predictor(checkpoint)
    if predictor.thresholds is not None:  # titled "pred X | true Y": one class each
        raise TLError("tl show-predictions titles one predicted and one true class: this is a multi-label checkpoint",
                      "tl predict-dir writes each image's labels; tl show-batch --labels shows every given label")
    if dataset is None:
        data, _ = load_split(checkpoint, split, data_dir=data_dir)
        source = f"the run's {split.value} split"
    else:
        cfg = flags.data_config(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                                download=download, image_column=image_column, label_column=label_column,
                                caltech_background=caltech_background, batch_size=batch_size, num_workers=num_workers)
        bundle = flags.build(cfg, seed=seed, transform=predictor.transform())
        if list(bundle.class_names) != predictor.class_names:
            raise TLError(f"the data's classes {bundle.class_names[:4]} differ from the checkpoint's {predictor.class_names[:4]}",
                          "pass the dataset the model was trained for (same class folders)")
        data = bundle.test if split == Split.test else bundle.val
        if data is None:
            raise TLError(f"--split test: {dataset} has no test split here", "use --split val, or add DIR/test/<class>/ folders")
        source = f"{dataset} {split.value}"
    picks, seen = pick_predictions(predictor, data, n=n, errors_only=errors_only, seed=seed, batch_size=batch_size,
                                   num_workers=num_workers)
    if not picks:
        print(f"no misclassified image among the {seen} of {source}: nothing to draw")
        return
    wrong = sum(p.wrong for p in picks)
    titles = [prediction_title(p.predicted, p.probability, p.true) for p in picks]
    titles = [t.replace(" | ", "\n") if len(t) > 30 else t for t in titles]  # two lines rather than over the neighbours
    path = out or default_out(checkpoint, "predictions.png")
    heading = f"{source}: {wrong} of {len(picks)} shown are wrong" + (" (errors only)" if errors_only else "")
    draw_grid([p.image for p in picks], titles, path, heading=heading, wrong=[p.wrong for p in picks])
    print(f"{path}: {len(picks)} images, {wrong} wrong ({seen} looked at)")
