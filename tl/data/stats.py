"""``tl stats``: per-channel mean and std of the training split, printed as flags ``tl train`` takes.

Images go through the evaluation preset (resize, centre crop) without normalisation, so the numbers describe
the pixels the network is fed; sums and sums of squares accumulate in float64 in one streaming pass, which
stays exact enough over millions of images where float32 would drift.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from tl.data import flags
from tl.errors import TLError


def channel_stats(dataset, *, batch_size: int, num_workers: int) -> tuple[list[float], list[float], int]:
    """(mean, std, images) over every pixel of the readable images of ``dataset`` (items: tensor, label, readable)."""
    import torch
    from torch.utils.data import DataLoader

    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = images = 0
    for batch, _, readable in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        x = batch[torch.as_tensor(readable, dtype=torch.bool)].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        pixels += x.shape[0] * x.shape[2] * x.shape[3]
        images += x.shape[0]
    if not images:
        raise TLError("no readable training images", "run `tl check-data` with the same flags to see why")
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(0).sqrt()  # population std, as torchvision's presets use
    return mean.tolist(), std.tolist(), images


def as_flags(mean: list[float], std: list[float]) -> str:
    """``--mean R,G,B --std R,G,B``, the form tl train parses."""
    return f"--mean {','.join(f'{v:.4f}' for v in mean)} --std {','.join(f'{v:.4f}' for v in std)}"


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
    labels: flags.Labels = None,
    label_sep: flags.LabelSep = None,
    batch_size: flags.BatchSize = 64,
    num_workers: flags.NumWorkers = -1,
    size: Annotated[int, typer.Option(help="Centre-crop size the statistics are taken at (resize to size/0.875 first, as tl train).")] = 224,
) -> None:
    """Per-channel mean/std of the training split, printed as `--mean R,G,B --std R,G,B` for tl train.

    Example:

      tl train ... $(tl stats --dataset imagefolder --data-dir data/xray)
    """
    from tl.data.transforms import eval_transform
    from tl.progress import console
    from tl.runtime import num_workers as resolve_workers

    if size < 8:
        raise TLError("--size: must be at least 8", "e.g. --size 224")
    cfg = flags.data_config(dataset=dataset, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                            download=download, image_column=image_column, label_column=label_column,
                            caltech_background=caltech_background, batch_size=batch_size, num_workers=num_workers,
                            labels=labels, label_sep=label_sep)
    start = time.perf_counter()
    unnormalised = eval_transform(size=size, resize=round(size / 0.875), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    train = flags.build(cfg, seed=seed, transform=unnormalised).train
    mean, std, images = channel_stats(train, batch_size=batch_size, num_workers=resolve_workers(num_workers, 1))
    skipped = len(train) - images
    console.print(f"{images} training images of {cfg.dataset} at {size} px in {time.perf_counter() - start:.1f} s"
                  + (f" ({skipped} unreadable, left out)" if skipped else ""), highlight=False)
    print(as_flags(mean, std))  # stdout alone, so that $(tl stats ...) expands to the flags
    if skipped:
        raise typer.Exit(1)  # partial: figures from the readable images only (`tl check-data` names the others)
