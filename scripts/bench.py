"""Benchmarks of tl's hot paths against the plain PyTorch code they replace, one subcommand each.

    .venv/bin/python scripts/bench.py predict                       # quick: own images + random squeezenet1_0
    .venv/bin/python scripts/bench.py predict --images DIR --checkpoint RUN/best

    .venv/bin/python scripts/bench.py loader --images hymenoptera_data    # a train/<class>/ tree

    .venv/bin/python scripts/bench.py train                         # quick: own images + random squeezenet1_0
    .venv/bin/python scripts/bench.py train --images hymenoptera_data --weights squeezenet1_0.safetensors
    .venv/bin/python scripts/bench.py train --strategy linear --epochs 3 ...   # the feature cache
    .venv/bin/python scripts/bench.py all                           # each of them with its defaults

``train`` times ``tl train``'s code path (``tl.train.run``: its default fast paths, timed by its own
``train_seconds``) against the tutorials' loop (``ImageFolder`` + PIL transforms + ``DataLoader`` + a plain
fp32 loop that reads ``loss.item()`` every step) on the same images, model, batch size, image size, epochs
and workers, alternating them; ``full`` trains everything with augmentation, ``linear`` trains the head
on a frozen backbone without augmentation (the tutorials' "fixed feature extractor").

``loader`` times one epoch of tl's training input pipeline (``ImageFiles`` + ``train_transform`` on uint8
tensors + per-sample seeding) against the tutorials' ``ImageFolder`` + PIL ``transforms`` pipeline, with the
same DataLoader settings. ``predict`` times ``tl predict-dir``'s code path (``tl.inference.folder.predict_dir``: DataLoader workers, batches,
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
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD, build_model
    from tl.models.checkpoint import save_checkpoint
    from tl.models.heads import HeadSpec

    head = HeadSpec()
    model, info = build_model(arch, 2, head=head, image_size=size)
    meta = {"arch": arch, "num_classes": 2, "class_names": ["a", "b"], "cut_at": None, "input_size": size,
            "resize_size": info.resize_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "head": {"kind": head.kind, "hidden": head.hidden, "norm": head.norm, "dropout": head.dropout}}
    return save_checkpoint(folder / "best", model.eval(), meta)


def per_image_loop(checkpoint: Path, files: list[Path]) -> float:
    """The baseline: what a first script does (PIL transforms as the tutorials write them, fp32). Returns images/s."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from tl.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    model.eval()
    transform = T.Compose([T.Resize(meta["resize_size"]), T.CenterCrop(meta["input_size"]), T.ToTensor(),
                           T.Normalize(meta["mean"], meta["std"])])
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            image = Image.open(path).convert("RGB")
            model(transform(image).unsqueeze(0)).softmax(1)
    return len(files) / (time.perf_counter() - start)


def batched(checkpoint: Path, images: Path, out: Path, args: argparse.Namespace) -> float:
    """``tl predict-dir`` as the command runs it, model loading excepted (the loop loads it once too)."""
    from tl.inference.folder import predict_dir
    from tl.inference.predictor import Precision, load_predictor

    predictor = load_predictor(checkpoint)
    start = time.perf_counter()
    summary = predict_dir(predictor, images, out, batch_size=args.batch_size, num_workers=args.num_workers,
                          precision=Precision(args.precision), overwrite=True)
    return summary.predicted / (time.perf_counter() - start)


def bench_predict(args: argparse.Namespace) -> dict:
    import torch

    from tl.inference.folder import find_images

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
    from tl.models.checkpoint import read_meta

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


def _prepared_train(args: argparse.Namespace, images: Path, size: int):
    """(tl's training dataset over ``--prepared``, or over shards ``tl prepare`` writes from ``images`` now; the
    seconds that took, 0 when given). Short side: the eval resize of ``size`` (256 for 224), as the README says."""
    from tl.config import DataConfig
    from tl.data.datasets import EpochSeeded, build_datasets
    from tl.data.prepare import prepare
    from tl.data.transforms import eval_transform, train_pixels
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    prepared, seconds = args.prepared, 0.0
    if prepared is None:
        prepared = Path(tempfile.mkdtemp(prefix="tl-bench-")) / "prepared"
        start = time.perf_counter()
        prepare(DataConfig(dataset="imagefolder", data_dir=str(images)), prepared, short_side=round(size / 0.875))
        seconds = time.perf_counter() - start
    tf = dict(size=size, resize=round(size / 0.875), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    data = build_datasets(DataConfig(dataset=f"hf:{prepared}"), seed=0, train_tf=train_pixels(size=size), eval_tf=eval_transform(**tf))
    return EpochSeeded(data.train, 0), seconds


def bench_loader(args: argparse.Namespace) -> dict:
    import torch
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from tl.config import DataConfig
    from tl.data.datasets import EpochSeeded, build_datasets
    from tl.data.image_cache import auto_budget, preload
    from tl.data.transforms import BatchNormalize, eval_transform, train_pixels
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD

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
    build = lambda: build_datasets(DataConfig(dataset="imagefolder", data_dir=str(images)), seed=0,
                                   train_tf=train_pixels(size=size), eval_tf=eval_transform(**tf))
    normalize = BatchNormalize(IMAGENET_MEAN, IMAGENET_STD)
    streamed = EpochSeeded(build().train, 0)
    cached_data = build()
    start = time.perf_counter()
    cached_bytes = preload([cached_data.train], auto_budget())  # what tl train does by default (--cache-images auto)
    cache_seconds = time.perf_counter() - start
    cached = EpochSeeded(cached_data.train, 0)
    prepared, prepare_seconds = _prepared_train(args, images, size)
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
            "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()}}


class PeakMemory:
    """Peak memory while the block runs: GPU memory allocated by torch on CUDA, else the resident set size
    of this process, sampled every 20 ms (DataLoader workers are processes of their own and not counted)."""

    def __enter__(self) -> "PeakMemory":
        import threading

        import torch

        self.cuda = torch.cuda.is_available()
        self.peak_mb = 0.0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as handle:
                self.peak_mb = max(self.peak_mb, int(handle.read().split()[1]) * page / 2**20)
            if self._stop.wait(0.02):
                return

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def report_table(title: str, runs: dict[str, list[dict]], *, baseline: str, candidate: str) -> dict:
    """Print medians of images/s, seconds and peak memory per method, and the candidate/baseline ratio of images/s."""
    from rich.console import Console
    from rich.table import Table

    med = {name: {key: statistics.median(r[key] for r in results) for key in ("images_per_s", "seconds", "peak_mb")}
           for name, results in runs.items()}
    ratio = med[candidate]["images_per_s"] / med[baseline]["images_per_s"]
    table = Table(title=title, title_justify="left")
    for column in ("method", "median img/s", "median s", "peak MB", "img/s per run"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, results in runs.items():
        m = med[name]
        table.add_row(name, f"{m['images_per_s']:.1f}", f"{m['seconds']:.1f}", f"{m['peak_mb']:.0f}",
                      " ".join(f"{r['images_per_s']:.1f}" for r in results))
    table.add_row(f"ratio ({candidate} / {baseline})", f"{ratio:.2f}x", "", "", "")
    Console().print(table)
    return {"medians": med, "ratio": ratio}


def _train_images(args: argparse.Namespace) -> Path:
    """``--images``, or 2 classes x 48 generated photo-sized JPEGs (val is train: only speed is measured)."""
    if args.images is not None:
        return args.images
    images = Path(tempfile.mkdtemp(prefix="tl-bench-")) / "data"
    for name in ("a", "b"):
        (images / "train" / name).mkdir(parents=True)
        quick_images(images / "train" / name, args.per_class)
    (images / "val").symlink_to(images / "train")
    return images


def tutorial_train(images: Path, args: argparse.Namespace, workers: int) -> dict:
    """The baseline: the PyTorch transfer-learning tutorial's loop, fp32, NCHW, ``.item()`` every step."""
    import torch
    from torch import nn
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD, build_model
    from tl.models.heads import HeadSpec, head_param_names

    torch.manual_seed(0)
    if args.strategy == "full":
        tf = [T.RandomResizedCrop(args.size), T.RandomHorizontalFlip()]
    else:
        tf = [T.Resize(round(args.size / 0.875)), T.CenterCrop(args.size)]
    dataset = tv_datasets.ImageFolder(str(images / "train"), transform=T.Compose([*tf, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers, drop_last=True)
    model, _ = build_model(args.arch, len(dataset.classes), weights=args.weights, head=HeadSpec(), image_size=args.size)
    if args.strategy == "linear":  # the tutorial's "ConvNet as fixed feature extractor"
        heads = head_param_names(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name in heads)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    count, start = 0, time.perf_counter()
    with PeakMemory() as memory:
        for _ in range(args.epochs):
            model.train()
            running_loss, corrects = 0.0, 0
            for inputs, labels in loader:
                optimizer.zero_grad()
                outputs = model(inputs)
                loss = criterion(outputs, labels)
                loss.backward()
                optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                corrects += int((outputs.argmax(1) == labels).sum())
                count += inputs.size(0)
    seconds = time.perf_counter() - start
    return {"images_per_s": count / seconds, "seconds": seconds, "peak_mb": memory.peak_mb}


def tl_train(images: Path, args: argparse.Namespace, workers: int, out: Path) -> dict:
    """``tl train`` as the command runs it (``tl.train.run``); its own epoch timers give the training time."""
    from tl.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
    from tl.progress import console
    from tl.training.run import run

    cfg = TrainConfig(
        data=DataConfig(dataset="imagefolder", data_dir=str(images), image_size=args.size, batch_size=args.batch_size,
                        num_workers=workers, augment="basic" if args.strategy == "full" else "none"),
        model=ModelConfig(arch=args.arch, weights=args.weights),
        finetune=FinetuneConfig(strategy=args.strategy),
        run=RunConfig(out=str(out), epochs=args.epochs, overwrite=True, log_every=10**6, compile=args.compile,
                      mixed_precision=args.precision, channels_last=not args.no_channels_last,
                      cache_features=not args.no_cache_features),
    )
    console.quiet = True
    try:
        with PeakMemory() as memory:
            run(cfg)
    finally:
        console.quiet = False
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(m["train_seconds"] for m in epochs)
    count = sum(m["train_images_per_s"] * m["train_seconds"] for m in epochs)
    return {"images_per_s": count / seconds, "seconds": seconds, "peak_mb": memory.peak_mb,
            "val_top1": epochs[-1]["val_top1"], "data_wait_share": statistics.mean(m["data_wait_share"] for m in epochs),
            "precision": epochs[-1]["precision"], "channels_last": epochs[-1]["channels_last"],
            "compiled": epochs[-1]["compiled"], "feature_cache": epochs[-1]["feature_cache"]}


def bench_train(args: argparse.Namespace) -> dict:
    import torch

    from tl.runtime import num_workers

    logging.getLogger("tl").disabled = True  # progress lines would be timed too
    images = _train_images(args)
    workers = num_workers(args.num_workers, 1)
    scratch = Path(tempfile.mkdtemp(prefix="tl-bench-train-"))
    baseline, candidate = "tutorial loop", "tl train"
    runs: dict[str, list[dict]] = {baseline: [], candidate: []}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for name in [baseline, candidate][:: 1 if repeat % 2 == 0 else -1]:
            result = tutorial_train(images, args, workers) if name == baseline else tl_train(images, args, workers, scratch / f"run{repeat}")
            runs[name].append(result)
            print(f"repeat {repeat + 1}/{args.repeats}: {name} {result['images_per_s']:.1f} img/s ({result['seconds']:.1f}s)", file=sys.stderr)
    title = (f"train ({args.strategy}): {args.arch} at {args.size} px, batch {args.batch_size}, {args.epochs} epoch(s), "
             f"{workers} workers, {images}")
    summary = report_table(title, runs, baseline=baseline, candidate=candidate)
    return {"bench": "train", "images": str(images), "arch": args.arch, "weights": args.weights, "strategy": args.strategy,
            "size": args.size, "batch_size": args.batch_size, "epochs": args.epochs, "num_workers": workers,
            "repeats": args.repeats, "runs": runs, **summary,
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                        "load_average_before": load_before, "load_average_after": os.getloadavg()}}


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--images", type=Path, help="a folder with train/<class>/ and val/<class>/ (default: 96 generated 400x300 JPEGs)")
    train.add_argument("--per-class", type=int, default=48, help="generated images per class when --images is not given")
    train.add_argument("--arch", default="squeezenet1_0")
    train.add_argument("--weights", default="none", help="none, or a weights file / torchvision name as tl train takes")
    train.add_argument("--strategy", default="full", choices=("full", "linear"))
    train.add_argument("--size", type=int, default=224)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--repeats", type=int, default=3)
    train.add_argument("--num-workers", type=int, default=-1)
    train.add_argument("--precision", default="auto", choices=("auto", "no", "bf16", "fp16"), help="tl's --mixed-precision")
    train.add_argument("--no-channels-last", action="store_true", help="tl with --no-channels-last")
    train.add_argument("--no-cache-features", action="store_true", help="tl with --no-cache-features")
    train.add_argument("--compile", action="store_true", help="tl with --compile")
    train.add_argument("--json", type=Path, default=Path("runs/bench/train.json"), help="where the results go")


def _train_steps(model, batches, steps: int, *, device, dtype, channels_last: bool, normalize, optimizer) -> float:
    """Images/s over ``steps`` training steps after 2 warm-up steps; ``batches`` yields (uint8 images, labels) or
    (float images, labels). One device sync at the end of each phase, none inside (as tl's loop)."""
    import torch
    import torch.nn.functional as F

    loss_fn = F.cross_entropy
    count, start = 0, None
    for step, (images, labels) in enumerate(batches):
        if step == 2:
            torch.cuda.synchronize() if device.type == "cuda" else None
            start, count = time.perf_counter(), 0
        if step == steps + 2:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        images = normalize(images) if normalize else images
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count += images.shape[0]
    torch.cuda.synchronize() if device.type == "cuda" else None
    return count / (time.perf_counter() - start) if start else 0.0


def bench_gpu(args: argparse.Namespace) -> dict:
    """(a) training on images already on the device, (b) the same through tl's input pipeline from prepared shards,
    (c) a torchvision-reference-style loop (ImageFolder + PIL transforms, fp32, NCHW), (d) predict-dir, (e) an
    all-reduce through accelerate. Without a GPU: a tiny model and sizes, so the script is checked end to end."""
    import itertools

    import torch
    from rich.console import Console
    from rich.table import Table
    from torch.utils.data import DataLoader
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from tl.data.transforms import BatchNormalize
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD, build_model

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    arch, size, batch, steps = (args.arch, args.size, args.batch_size, args.steps) if on_gpu else ("resnet18", 32, 4, 2)
    logging.getLogger("tl").disabled = True
    images = args.images or _train_images(argparse.Namespace(images=None, per_class=max(4, batch)))
    workers = args.num_workers if args.num_workers >= 0 else min(8, os.cpu_count() or 1)
    prepared, prepare_seconds = _prepared_train(args, images, size)
    normalize = BatchNormalize(IMAGENET_MEAN, IMAGENET_STD)
    dtype = torch.bfloat16 if (not on_gpu or torch.cuda.is_bf16_supported()) else torch.float16

    def model_and_optimizer(fast: bool):
        model, _ = build_model(arch, 2, image_size=size)
        model = model.to(device).to(memory_format=torch.channels_last if fast else torch.contiguous_format).train()
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def loader(dataset):
        cycle = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, pin_memory=on_gpu,
                           persistent_workers=workers > 0)
        return (b[:2] for b in itertools.chain.from_iterable(itertools.repeat(cycle)))

    results: dict[str, dict] = {}
    resident = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    model, opt = model_and_optimizer(True)
    results["train_on_device"] = {"images_per_s": _train_steps(model, itertools.repeat((resident, labels)), steps, device=device,
                                                               dtype=dtype, channels_last=True, normalize=normalize, optimizer=opt)}
    model, opt = model_and_optimizer(True)
    results["train_tl_pipeline"] = {"images_per_s": _train_steps(model, loader(prepared), steps, device=device, dtype=dtype,
                                                                 channels_last=True, normalize=normalize, optimizer=opt)}
    reference = tv_datasets.ImageFolder(str(images / "train"), transform=T.Compose([
        T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    model, opt = model_and_optimizer(False)
    results["train_reference_loop"] = {"images_per_s": _train_steps(model, loader(reference), steps, device=device, dtype=None,
                                                                    channels_last=False, normalize=None, optimizer=opt)}
    scratch = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    predict_args = argparse.Namespace(batch_size=0 if on_gpu else batch, num_workers=workers, precision="auto")
    results["predict_dir"] = {"images_per_s": batched(quick_checkpoint(scratch, arch, size), images / "train", scratch / "p.csv", predict_args)}
    results["all_reduce"] = _all_reduce(device, numel=25_557_032 if on_gpu else 1 << 16)  # resnet50's parameter count
    note = "" if on_gpu else "no GPU: tiny model (resnet18, 32 px, batch 4, 2 steps): GPU figures need a GPU"
    table = Table(title=f"gpu: {arch} at {size} px, batch {batch}, {steps} steps, {device} ({torch.__version__})", title_justify="left")
    for column in ("what", "figure"):
        table.add_column(column)
    for name, result in results.items():
        figure = f"{result['gb_per_s']:.2f} GB/s ({result['seconds'] * 1e3:.2f} ms)" if "gb_per_s" in result else f"{result['images_per_s']:.1f} images/s"
        table.add_row(name, figure)
    Console().print(table)
    if note:
        print(note)
    return {"bench": "gpu", "device": torch.cuda.get_device_name() if on_gpu else "cpu", "arch": arch, "size": size, "batch_size": batch,
            "steps": steps, "precision": str(dtype).replace("torch.", ""), "num_workers": workers, "note": note,
            "prepare_seconds": prepare_seconds, **results}


def _all_reduce(device, numel: int) -> dict:
    """One all-reduce (sum) of ``numel`` float32 through accelerate's ``reduce`` in this process (one-process group:
    the cost of the call path, not of a network), median of 5 after a warm-up."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    tensor = torch.ones(numel, device=accelerator.device)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        accelerator.reduce(tensor, reduction="sum")
        torch.cuda.synchronize() if device.type == "cuda" else None
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    return {"seconds": seconds, "gb_per_s": numel * 4 / seconds / 1e9, "numel": numel, "processes": accelerator.num_processes}


def bench_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Every bench with its defaults (quick, generated data), one after the other."""
    results = {}
    for name, bench in (("loader", bench_loader), ("predict", bench_predict), ("train", bench_train)):
        sub_args = parser.parse_args([name, "--repeats", str(args.repeats)])
        results[name] = bench(sub_args)
    return {"bench": "all", **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    predict = sub.add_parser("predict", help="tl predict-dir vs a per-image loop (images/s)")
    predict.add_argument("--images", type=Path, help="folder of images (default: 64 generated 400x300 JPEGs)")
    predict.add_argument("--checkpoint", type=Path, help="tl checkpoint (default: squeezenet1_0, random weights, 224 px)")
    predict.add_argument("--repeats", type=int, default=3)
    predict.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    predict.add_argument("--batch-size", type=int, default=0, help="0: predict-dir's default (8 on the CPU, 64 on a GPU)")
    predict.add_argument("--num-workers", type=int, default=-1)
    predict.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    predict.add_argument("--json", type=Path, default=Path("runs/bench/predict.json"), help="where the results go")
    loader = sub.add_parser("loader", help="tl's training input pipeline vs ImageFolder + PIL transforms (images/s)")
    loader.add_argument("--images", type=Path, help="a folder with train/<class>/ (default: 96 generated 400x300 JPEGs)")
    loader.add_argument("--prepared", type=Path, help="tl prepare's output for --images (default: written now, timed)")
    loader.add_argument("--size", type=int, default=224)
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("--batch-size", type=int, default=32)
    loader.add_argument("--epochs", type=int, default=3, help="timed passes per repeat, after one warm-up pass")
    loader.add_argument("--num-workers", type=int, default=-1)
    loader.add_argument("--json", type=Path, default=Path("runs/bench/loader.json"), help="where the results go")
    add_train_arguments(sub.add_parser("train", help="tl train vs the tutorials' training loop (images/s)"))
    gpu = sub.add_parser("gpu", help="training, input pipeline, predict-dir and all-reduce on a GPU (tiny on a CPU)")
    gpu.add_argument("--images", type=Path, help="a folder with train/<class>/ (default: generated 400x300 JPEGs)")
    gpu.add_argument("--prepared", type=Path, help="tl prepare's output for --images (default: written now)")
    gpu.add_argument("--arch", default="resnet50")
    gpu.add_argument("--size", type=int, default=224)
    gpu.add_argument("--batch-size", type=int, default=256)
    gpu.add_argument("--steps", type=int, default=20, help="timed steps per training figure, after 2 warm-up steps")
    gpu.add_argument("--num-workers", type=int, default=-1)
    gpu.add_argument("--json", type=Path, default=Path("runs/bench/gpu.json"), help="where the results go")
    every = sub.add_parser("all", help="loader, predict and train with their defaults")
    every.add_argument("--repeats", type=int, default=3)
    every.add_argument("--json", type=Path, default=Path("runs/bench/all.json"), help="where the results go")
    args = parser.parse_args()
    if args.bench == "all":
        result = bench_all(args, parser)
    else:
        result = {"predict": bench_predict, "loader": bench_loader, "train": bench_train, "gpu": bench_gpu}[args.bench](args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
