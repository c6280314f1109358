"""``bench.py gpu``: training on images already on the device, the same through tl's input pipeline from
prepared shards, a torchvision-reference-style loop, predict-dir, and an all-reduce through accelerate.
Without a GPU it runs a tiny model and sizes, so the script is checked end to end."""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import predict_dir_rate, prepared_train, quick_checkpoint, train_images

HELP = "training, input pipeline, predict-dir and all-reduce on a GPU (tiny on a CPU)"


def add_arguments(gpu: argparse.ArgumentParser) -> None:
    gpu.add_argument("--images", type=Path, help="a folder with train/<class>/ (default: generated 400x300 JPEGs)")
    gpu.add_argument("--prepared", type=Path, help="tl prepare's output for --images (default: written now)")
    gpu.add_argument("--arch", default="resnet50")
    gpu.add_argument("--size", type=int, default=224)
    gpu.add_argument("--batch-size", type=int, default=256)
    gpu.add_argument("--steps", type=int, default=20, help="timed steps per training figure, after 2 warm-up steps")
    gpu.add_argument("--num-workers", type=int, default=-1)
    gpu.add_argument("--json", type=Path, default=Path("runs/bench/gpu.json"), help="where the results go")


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


def run(args: argparse.Namespace) -> dict:
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
    images = args.images or train_images(argparse.Namespace(images=None, per_class=max(4, batch)))
    workers = args.num_workers if args.num_workers >= 0 else min(8, os.cpu_count() or 1)
    prepared, prepare_seconds = prepared_train(args, images, size)
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
    results["predict_dir"] = {"images_per_s": predict_dir_rate(quick_checkpoint(scratch, arch, size), images / "train", scratch / "p.csv", predict_args)}
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
