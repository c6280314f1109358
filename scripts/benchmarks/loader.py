"""``bench.py loader``: one epoch of tl's training input pipeline (``ImageFiles`` + ``train_transform`` on uint8
tensors + per-sample seeding; streamed, from the decoded cache, from ``tl prepare``'s shards) against the
tutorials' ``ImageFolder`` + PIL ``transforms`` pipeline, with the same DataLoader settings. No model."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.common import machine_info, prepared_train, quick_images, report_runs, scratch_dir, tl_datasets

HELP = "tl's training input pipeline vs ImageFolder + PIL transforms (images/s)"


def add_arguments(loader: argparse.ArgumentParser) -> None:
    loader.add_argument("--images", type=Path, help="a folder with train/<class>/ (default: 96 generated 400x300 JPEGs)")
    loader.add_argument("--prepared", type=Path, help="tl prepare's output for --images (default: written now, timed)")
    loader.add_argument("--size", type=int, default=224)
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("--batch-size", type=int, default=32)
    loader.add_argument("--epochs", type=int, default=3, help="timed passes per repeat, after one warm-up pass")
    loader.add_argument("--num-workers", type=int, default=-1)
    loader.add_argument("--json", type=Path, default=Path("runs/bench/loader.json"), help="where the results go")


def _epoch_rate(dataset, batch_size: int, workers: int, epochs: int, finish=None) -> float:
    """Images/s over ``epochs`` shuffled passes through one DataLoader over ``dataset``, after a warm-up pass
    (worker start-up and first-touch costs are paid once per run, not per epoch). ``finish`` runs on every
    batch in the main process: tl normalises uint8 batches there (on the device in a real run). No model."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    for batch in loader:
        pass
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            images = finish(batch[0]) if finish else batch[0]
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from tl.config import DataConfig
    from tl.data.datasets import EpochSeeded
    from tl.data.image_cache import auto_budget, preload
    from tl.data.transforms import BatchNormalize
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    images = args.images
    if images is None:
        images = scratch_dir() / "data"
        for name in ("a", "b"):
            (images / "train" / name).mkdir(parents=True)
            quick_images(images / "train" / name, 48)
        (images / "val").symlink_to(images / "train")
    size = args.size
    baseline = tv_datasets.ImageFolder(str(images / "train"), transform=T.Compose([
        T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    build = lambda: tl_datasets(DataConfig(dataset="imagefolder", data_dir=str(images)), size)
    normalize = BatchNormalize(IMAGENET_MEAN, IMAGENET_STD)
    streamed = EpochSeeded(build().train, 0)
    cached_data = build()
    start = time.perf_counter()
    cached_bytes = preload([cached_data.train], auto_budget())  # what tl train does by default (--cache-images auto)
    cache_seconds = time.perf_counter() - start
    cached = EpochSeeded(cached_data.train, 0)
    prepared, prepare_seconds = prepared_train(args, images, size)
    workers = args.num_workers if args.num_workers >= 0 else min(8, os.cpu_count() or 1)
    base, stream, cache = "ImageFolder + PIL transforms", "tl, streamed (--cache-images off)", "tl, decoded cache (default)"
    prep = "tl, prepared Arrow shards (tl prepare)"
    runs: dict[str, list[float]] = {base: [], stream: []} | ({cache: []} if cached_bytes else {}) | {prep: []}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        runs[base].append(_epoch_rate(baseline, args.batch_size, workers, args.epochs))
        runs[stream].append(_epoch_rate(streamed, args.batch_size, workers, args.epochs, normalize))
        if cached_bytes:
            runs[cache].append(_epoch_rate(cached, args.batch_size, workers, args.epochs, normalize))
        runs[prep].append(_epoch_rate(prepared, args.batch_size, workers, args.epochs, normalize))
    candidate = cache if cached_bytes else stream
    medians, ratio = report_runs(f"loader: {len(streamed)} images at {size} px, {workers} workers, batch {args.batch_size}, "
                                 f"{args.epochs} epochs after a warm-up", runs, baseline=base, candidate=candidate)
    streamed_ratio = medians[stream] / medians[base]
    print(f"streamed/baseline {streamed_ratio:.2f}x; decoded cache: {cached_bytes / 2**20:.0f} MiB built once in {cache_seconds:.2f} s "
          f"(= {len(streamed) / cache_seconds:.0f} img/s, paid in the first epoch only)" if cached_bytes else
          "decoded cache not used: the images exceed its budget")
    print(f"prepared/baseline {medians[prep] / medians[base]:.2f}x (tl prepare took {prepare_seconds:.1f} s, once)"
          if prepare_seconds else f"prepared/baseline {medians[prep] / medians[base]:.2f}x ({args.prepared})")
    return {"bench": "loader", "tutorial": {"images_per_s": medians[base]}, "tl_streamed": {"images_per_s": medians[stream]},
            "tl_prepared": {"images_per_s": medians[prep], "path": str(args.prepared or "(made by this run)"),
                            "prepare_seconds": prepare_seconds},
            "images": str(images), "count": len(streamed), "size": size, "batch_size": args.batch_size,
            "num_workers": workers, "repeats": args.repeats, "epochs": args.epochs, "runs": runs, "median_images_per_s": medians,
            "ratio": ratio, "streamed_ratio": streamed_ratio, "cache_mib": cached_bytes / 2**20, "cache_build_seconds": cache_seconds,
            "machine": machine_info(load_before)}
