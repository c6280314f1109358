"""Benchmarks of tl's hot paths against the plain PyTorch code they replace, one subcommand each.

    .venv/bin/python scripts/bench.py predict                       # quick: own images + random squeezenet1_0
    .venv/bin/python scripts/bench.py predict --images DIR --checkpoint RUN/best

    .venv/bin/python scripts/bench.py loader --images hymenoptera_data    # a train/<class>/ tree

``loader`` times one epoch of tl's training input pipeline (``ImageFiles`` + ``train_transform`` on uint8
tensors + per-sample seeding) against the tutorials' ``ImageFolder`` + PIL ``transforms`` pipeline, with the
same DataLoader settings. ``predict`` times ``tl predict-dir``'s code path (``tl.predict.predict_dir``: DataLoader workers, batches,
inference mode, streaming CSV) against the plain per-image loop (open, transform, unsqueeze, forward, one file
at a time) on the same files and checkpoint, alternating the two and repeating, and reports medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def quick_images(folder: Path, count: int = 64) -> Path:
    """Photo-sized noisy JPEGs (400x300, as the bees/ants set): decoding cost must be real."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.uniform(0, 255, size=(1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 40, size=(300, 400, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.jpg", quality=90)
    return folder


def quick_checkpoint(folder: Path, arch: str = "squeezenet1_0", size: int = 224) -> Path:
    """A real architecture with random weights, saved as a tl checkpoint (what ``tl train`` writes)."""
    from tl.checkpoint import save_checkpoint
    from tl.heads import HeadSpec
    from tl.models import IMAGENET_MEAN, IMAGENET_STD, build_model

    head = HeadSpec()
    model, info = build_model(arch, 2, head=head, image_size=size)
    meta = {"arch": arch, "num_classes": 2, "class_names": ["a", "b"], "cut_at": None, "input_size": size,
            "resize_size": info.resize_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "head": {"kind": head.kind, "hidden": head.hidden, "norm": head.norm, "dropout": head.dropout}}
    return save_checkpoint(folder / "best", model.eval(), meta)


def per_image_loop(checkpoint: Path, files: list[Path]) -> float:
    """The baseline: what a first script does. Returns images/s."""
    import torch
    from PIL import Image

    from tl.checkpoint import load_checkpoint
    from tl.transforms import eval_transform

    model, meta = load_checkpoint(checkpoint)
    model.eval()
    transform = eval_transform(size=meta["input_size"], resize=meta["resize_size"],
                               mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            image = Image.open(path).convert("RGB")
            model(transform(image).unsqueeze(0)).softmax(1)
    return len(files) / (time.perf_counter() - start)


def batched(checkpoint: Path, images: Path, out: Path, args: argparse.Namespace) -> float:
    """``tl predict-dir`` as the command runs it, model loading excepted (the loop loads it once too)."""
    from tl.predict import Precision, load_predictor, predict_dir

    predictor = load_predictor(checkpoint)
    start = time.perf_counter()
    summary = predict_dir(predictor, images, out, batch_size=args.batch_size, num_workers=args.num_workers,
                          precision=Precision(args.precision), overwrite=True)
    return summary.predicted / (time.perf_counter() - start)


def bench_predict(args: argparse.Namespace) -> dict:
    import torch

    from tl.predict import find_images

    logging.getLogger("tl").disabled = True  # progress lines would be timed too
    scratch = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    if args.images is None:
        (scratch / "images").mkdir()
    images = args.images or quick_images(scratch / "images")
    checkpoint = args.checkpoint or quick_checkpoint(scratch)
    files = find_images(images)[: args.limit or None]
    if args.limit:  # predict_dir takes a folder: give it exactly the same files
        subset = scratch / "subset"
        for path in files:
            (subset / path.relative_to(images)).parent.mkdir(parents=True, exist_ok=True)
            (subset / path.relative_to(images)).symlink_to(path.resolve())
        images = subset
    load_before = os.getloadavg()  # other work on the machine slows the per-image loop most (see the report)
    runs: dict[str, list[float]] = {"per-image loop": [], "tl predict-dir": []}
    per_image_loop(checkpoint, files[:4])  # warm-up: first-call costs (allocator, oneDNN primitives) are not throughput
    for repeat in range(args.repeats):
        order = ["per-image loop", "tl predict-dir"][:: 1 if repeat % 2 == 0 else -1]
        for name in order:
            if name == "per-image loop":
                rate = per_image_loop(checkpoint, files)
            else:
                rate = batched(checkpoint, images, scratch / "preds.csv", args)
            runs[name].append(rate)
            print(f"repeat {repeat + 1}/{args.repeats}: {name} {rate:.1f} img/s", file=sys.stderr)
    medians, ratio = report_runs(f"predict: {len(files)} images, {checkpoint}", runs, baseline="per-image loop",
                                 candidate="tl predict-dir")
    from tl.checkpoint import read_meta

    meta = read_meta(checkpoint)
    return {"bench": "predict", "images": str(images), "count": len(files), "checkpoint": str(checkpoint), "arch": meta["arch"],
            "input_size": meta["input_size"], "batch_size": args.batch_size, "num_workers": args.num_workers,
            "precision": args.precision, "repeats": args.repeats, "runs": runs, "median_images_per_s": medians, "ratio": ratio,
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "cuda": torch.cuda.is_available(),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()}}


def report_runs(title: str, runs: dict[str, list[float]], *, baseline: str, candidate: str) -> tuple[dict[str, float], float]:
    """Print the table of medians and the candidate/baseline ratio; return (medians, ratio)."""
    from rich.console import Console
    from rich.table import Table

    medians = {name: statistics.median(rates) for name, rates in runs.items()}
    ratio = medians[candidate] / medians[baseline]
    table = Table(title=title, title_justify="left")
    for column in ("method", "median img/s", "runs"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, rates in runs.items():
        table.add_row(name, f"{medians[name]:.1f}", " ".join(f"{r:.1f}" for r in rates))
    table.add_row("ratio", f"{ratio:.2f}x", "")
    Console().print(table)
    return medians, ratio


def _epoch_rate(dataset, batch_size: int, workers: int) -> float:
    """Images/s of one shuffled pass through a DataLoader over ``dataset`` (the model is left out on purpose)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += batch[0].shape[0]
    return count / (time.perf_counter() - start)


def bench_loader(args: argparse.Namespace) -> dict:
    import torch
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from tl.config import DataConfig
    from tl.datasets import EpochSeeded, build_datasets
    from tl.models import IMAGENET_MEAN, IMAGENET_STD
    from tl.transforms import eval_transform, train_transform

    images = args.images
    if images is None:
        images = Path(tempfile.mkdtemp(prefix="tl-bench-")) / "data"
        for name in ("a", "b"):
            (images / "train" / name).mkdir(parents=True)
            quick_images(images / "train" / name, 48)
        (images / "val").symlink_to(images / "train")
    size = args.size
    baseline = tv_datasets.ImageFolder(str(images / "train"), transform=T.Compose([
        T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    tf = dict(size=size, resize=round(size / 0.875), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    data = build_datasets(DataConfig(dataset="imagefolder", data_dir=str(images)), seed=0,
                          train_tf=train_transform(**tf), eval_tf=eval_transform(**tf))
    ours = EpochSeeded(data.train, 0)
    workers = args.num_workers if args.num_workers >= 0 else min(8, os.cpu_count() or 1)
    runs: dict[str, list[float]] = {"ImageFolder + PIL transforms": [], "tl train pipeline": []}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        runs["ImageFolder + PIL transforms"].append(_epoch_rate(baseline, args.batch_size, workers))
        runs["tl train pipeline"].append(_epoch_rate(ours, args.batch_size, workers))
    medians, ratio = report_runs(f"loader: {len(ours)} images at {size} px, {workers} workers, batch {args.batch_size}", runs,
                                 baseline="ImageFolder + PIL transforms", candidate="tl train pipeline")
    return {"bench": "loader", "images": str(images), "count": len(ours), "size": size, "batch_size": args.batch_size,
            "num_workers": workers, "repeats": args.repeats, "runs": runs, "median_images_per_s": medians, "ratio": ratio,
            "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    predict = sub.add_parser("predict", help="tl predict-dir vs a per-image loop (images/s)")
    predict.add_argument("--images", type=Path, help="folder of images (default: 64 generated 400x300 JPEGs)")
    predict.add_argument("--checkpoint", type=Path, help="tl checkpoint (default: squeezenet1_0, random weights, 224 px)")
    predict.add_argument("--repeats", type=int, default=3)
    predict.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--num-workers", type=int, default=-1)
    predict.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    predict.add_argument("--json", type=Path, default=Path("runs/bench/predict.json"), help="where the results go")
    loader = sub.add_parser("loader", help="tl's training input pipeline vs ImageFolder + PIL transforms (images/s)")
    loader.add_argument("--images", type=Path, help="a folder with train/<class>/ (default: 96 generated 400x300 JPEGs)")
    loader.add_argument("--size", type=int, default=224)
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("--batch-size", type=int, default=32)
    loader.add_argument("--num-workers", type=int, default=-1)
    loader.add_argument("--json", type=Path, default=Path("runs/bench/loader.json"), help="where the results go")
    args = parser.parse_args()
    result = {"predict": bench_predict, "loader": bench_loader}[args.bench](args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
