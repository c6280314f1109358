"""``bench.py train``: ``tl train``'s code path (``tl.training.run.run``: its default fast paths, timed by its
own ``train_seconds``) against the tutorials' loop (``ImageFolder`` + PIL transforms + ``DataLoader`` + a
plain fp32 loop that reads ``loss.item()`` every step) on the same images, model, batch size, image size and
epochs, alternating them, each in a fresh process (``in_fresh_process``); the tutorial gets ``--num-workers`` loader
workers, tl its own choice unless ``--num-workers`` is given. With ``--strategy full`` the model-bound ceiling too.
Peak MB is the main process's (the tutorial's loader workers are not counted)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import PeakMemory, in_fresh_process, machine_info, report_table, scratch_dir, train_images

HELP = "tl train vs the tutorials' training loop (images/s)"


def add_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--images", type=Path, help="a folder with train/<class>/ and val/<class>/ (default: 96 generated 400x300 JPEGs)")
    train.add_argument("--per-class", type=int, default=48, help="generated images per class when --images is not given")
    train.add_argument("--arch", default="squeezenet1_0")
    train.add_argument("--weights", default="none", help="none, or a weights file / torchvision name as tl train takes")
    train.add_argument("--strategy", default="full", choices=("full", "linear"))
    train.add_argument("--size", type=int, default=224)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--repeats", type=int, default=3)
    train.add_argument("--num-workers", type=int, default=-1, help="the tutorial loop's workers (-1: tl's rule for the CPUs); "
                       "tl gets this value too, so -1 lets it choose")
    train.add_argument("--precision", default="auto", choices=("auto", "no", "bf16", "fp16"), help="tl's --mixed-precision")
    train.add_argument("--no-channels-last", action="store_true", help="tl with --no-channels-last")
    train.add_argument("--no-cache-features", action="store_true", help="tl with --no-cache-features")
    train.add_argument("--compile", action="store_true", help="tl with --compile")
    train.add_argument("--json", type=Path, default=Path("runs/bench/train.json"), help="where the results go")


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


def model_ceiling(args: argparse.Namespace, steps: int) -> dict:
    """The model-bound ceiling: ``steps`` optimizer steps (forward, backward, AdamW) of the same model, batch, input
    size, precision and memory format as tl's run, on one batch of tensors already in memory: what an epoch would
    reach if data cost nothing. tl's epoch against it is the share of the machine that training gets."""
    import torch
    from torch import nn

    from tl import runtime
    from tl.models import fastpaths
    from tl.models.architectures import build_model
    from tl.models.heads import HeadSpec

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        runtime.keep_freed_memory()  # the process settings tl's run gives itself: the ceiling is the best this model does
    model, _ = build_model(args.arch, 2, weights="none", head=HeadSpec(), image_size=args.size)
    channels_last = fastpaths.apply_channels_last(model, not args.no_channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(runtime.resolve_precision(args.precision, on_gpu=cuda) or "no")
    model.to(device).train()
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # first-call set-up (oneDNN primitives, allocator) is not the model's speed
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * args.batch_size / seconds, "seconds": seconds, "peak_mb": 0.0}


def tl_train(images: Path, args: argparse.Namespace, workers: int, out: Path) -> dict:
    """``tl train`` as the command runs it (``tl.train.run``); its own epoch timers give the training time."""
    from tl.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
    from tl.progress import console
    from tl.training.run import run as run_recipe

    cfg = TrainConfig(
        data=DataConfig(dataset="imagefolder", data_dir=str(images), image_size=args.size, batch_size=args.batch_size,
                        num_workers=workers, augment="basic" if args.strategy == "full" else "none"),
        model=ModelConfig(arch=args.arch, weights=args.weights),
        finetune=FinetuneConfig(strategy=args.strategy),
        run=RunConfig(out=str(out), epochs=args.epochs, overwrite=True, log_every=10**6, compile=args.compile,
                      mixed_precision=args.precision, channels_last=not args.no_channels_last,
                      cache_features=not args.no_cache_features),
    )
    logging.getLogger("tl").disabled = True  # progress lines would be timed too
    console.quiet = True
    try:
        with PeakMemory() as memory:
            run_recipe(cfg)
    finally:
        console.quiet = False
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(m["train_seconds"] for m in epochs)
    count = sum(m["train_images_per_s"] * m["train_seconds"] for m in epochs)
    return {"images_per_s": count / seconds, "seconds": seconds, "peak_mb": memory.peak_mb,
            "val_top1": epochs[-1]["val_top1"], "data_wait_share": statistics.mean(m["data_wait_share"] for m in epochs),
            "precision": epochs[-1]["precision"], "channels_last": epochs[-1]["channels_last"],
            "compiled": epochs[-1]["compiled"], "feature_cache": epochs[-1]["feature_cache"]}


def run(args: argparse.Namespace) -> dict:
    import torch

    from tl.runtime import num_workers

    logging.getLogger("tl").disabled = True  # progress lines would be timed too
    images = train_images(args)
    workers = num_workers(args.num_workers, 1)
    scratch = scratch_dir("tl-bench-train-")
    baseline, candidate = "tutorial loop", "tl train"
    runs: dict[str, list[dict]] = {baseline: [], candidate: []}
    load_before = os.getloadavg()
    ceiling_name = "model ceiling (tensors in memory)"  # full training only: a linear probe's ceiling is another model
    if args.strategy == "full":
        runs[ceiling_name] = []
    steps = max(4, sum(1 for _ in (images / "train").rglob("*.*")) // args.batch_size)  # about one epoch's steps
    for repeat in range(args.repeats):
        for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            result = (in_fresh_process(tutorial_train, images, args, workers) if name == baseline
                      else in_fresh_process(model_ceiling, args, steps) if name == ceiling_name
                      else in_fresh_process(tl_train, images, args, args.num_workers, scratch / f"run{repeat}"))
            runs[name].append(result)
            print(f"repeat {repeat + 1}/{args.repeats}: {name} {result['images_per_s']:.1f} img/s ({result['seconds']:.1f}s)", file=sys.stderr)
    title = (f"train ({args.strategy}): {args.arch} at {args.size} px, batch {args.batch_size}, {args.epochs} epoch(s), "
             f"{workers} workers (tl: {'its own choice' if args.num_workers < 0 else args.num_workers}), {images}")
    summary = report_table(title, runs, baseline=baseline, candidate=candidate)
    if ceiling_name in runs:
        share = summary["medians"][candidate]["images_per_s"] / summary["medians"][ceiling_name]["images_per_s"]
        summary["share_of_ceiling"] = share
        print(f"tl train's epoch ran at {share:.0%} of the model-bound ceiling (medians)", file=sys.stderr)
    return {"bench": "train", "images": str(images), "arch": args.arch, "weights": args.weights, "strategy": args.strategy,
            "size": args.size, "batch_size": args.batch_size, "epochs": args.epochs, "num_workers": workers,
            "repeats": args.repeats, "runs": runs, **summary,
            "machine": machine_info(load_before, torch_threads=torch.get_num_threads(),
                                    cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)}
