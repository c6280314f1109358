"""``bench.py gpu``: training on images already on the device, the same through tl's input pipeline from
prepared shards, a torchvision-reference-style loop, predict-dir, and an all-reduce through accelerate.
Without a GPU it runs a tiny model and sizes, so the script is checked end to end."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from benchmarks.common import predict_dir_rate, prepared_train, quick_checkpoint, scratch_dir, tl_datasets, train_images

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


def _train_steps(model, batches, steps: int, *, device, dtype, channels_last: bool, normalize, optimizer) -> dict:
    """{"images_per_s", "data_wait_share", "gpu_busy_share"} over ``steps`` training steps after 2 warm-up steps;
    ``batches`` yields (uint8 images, labels) or (float images, labels). One device sync at the end of each phase,
    none inside (as tl's loop). ``data_wait_share``: the share of the time spent waiting for the next batch, as tl's
    loop reports it. ``gpu_busy_share``: see ``_gpu_busy_share``."""
    import torch
    import torch.nn.functional as F

    def step(images, labels) -> int:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        images = normalize(images) if normalize else images
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return images.shape[0]

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = iter(batches)
    for _ in range(2):
        step(*next(batches))
    sync()
    start, count, waited = time.perf_counter(), 0, 0.0
    for _ in range(steps):
        asked = time.perf_counter()
        images, labels = next(batches)
        waited += time.perf_counter() - asked
        count += step(images, labels)
    sync()
    seconds = time.perf_counter() - start
    return {"images_per_s": count / seconds, "data_wait_share": waited / seconds,
            "gpu_busy_share": _gpu_busy_share(step, batches, min(steps, 5), device)}


def _gpu_busy_share(step, batches, steps: int, device) -> float | None:
    """Kernel time / wall time over ``steps`` more steps under torch.profiler (after the timed ones, which it would
    slow down): how much of the time the GPU computes. None on a CPU."""
    if device.type != "cuda":
        return None
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:  # CUDA alone has recorded nothing
        start = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    # the kernels' own events, as torch.profiler's table totals "Self CUDA" (the ops that launch them would count twice)
    kernels = [e for e in profiler.key_averages() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    if not kernels:  # the profiler saw no device events: say nothing rather than 0%
        return None
    return sum(e.self_device_time_total for e in kernels) / 1e6 / seconds  # kernels and copies on the one stream


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
    images = args.images or train_images(argparse.Namespace(images=None, per_class=4 * batch))  # 4 batches a class: few epoch restarts
    workers = args.num_workers if args.num_workers >= 0 else min(8, os.cpu_count() or 1)
    try:
        prepared, prepare_seconds = prepared_train(args, images, size)
        pipeline = "prepared shards (tl prepare)"
    except Exception as error:  # noqa: BLE001  no usable Hugging Face datasets (the GPU image lacks it unless carried)
        prepared, prepare_seconds = _streamed_train(images, size), 0.0
        pipeline = f"the image folder, streamed: no prepared shards ({error})"
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
    results["train_on_device"] = _train_steps(model, itertools.repeat((resident, labels)), steps, device=device,
                                              dtype=dtype, channels_last=True, normalize=normalize, optimizer=opt)
    model, opt = model_and_optimizer(True)
    results["train_tl_pipeline"] = _train_steps(model, loader(prepared), steps, device=device, dtype=dtype,
                                                channels_last=True, normalize=normalize, optimizer=opt)
    reference = tv_datasets.ImageFolder(str(images / "train"), transform=T.Compose([
        T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    model, opt = model_and_optimizer(False)
    results["train_reference_loop"] = _train_steps(model, loader(reference), steps, device=device, dtype=None,
                                                   channels_last=False, normalize=None, optimizer=opt)
    scratch = scratch_dir()
    predict_args = argparse.Namespace(batch_size=0 if on_gpu else batch, num_workers=workers, precision="auto")
    results["predict_dir"] = {"images_per_s": predict_dir_rate(quick_checkpoint(scratch, arch, size), images / "train", scratch / "p.csv", predict_args)}
    results["all_reduce"] = _all_reduce(device, numel=25_557_032 if on_gpu else 1 << 16)  # resnet50's parameter count
    note = "" if on_gpu else "no GPU: tiny model (resnet18, 32 px, batch 4, 2 steps): GPU figures need a GPU"
    table = Table(title=f"gpu: {arch} at {size} px, batch {batch}, {steps} steps, {device} ({torch.__version__})", title_justify="left")
    for column in ("what", "figure", "data wait", "GPU busy"):
        table.add_column(column)
    share = lambda value: "" if value is None else f"{value:.0%}"
    for name, result in results.items():
        if "gb_per_s" in result:
            table.add_row(name, f"{result['gb_per_s']:.2f} GB/s ({result['seconds'] * 1e3:.2f} ms, {result['backend']})", "", "")
        else:
            table.add_row(name, f"{result['images_per_s']:.1f} images/s", share(result.get("data_wait_share")),
                          share(result.get("gpu_busy_share")))
    ceiling = results["train_on_device"]["images_per_s"]
    table.add_row("tl pipeline / on device", f"{results['train_tl_pipeline']['images_per_s'] / ceiling:.0%}", "", "")
    table.add_row("tl pipeline / reference loop",
                  f"{results['train_tl_pipeline']['images_per_s'] / results['train_reference_loop']['images_per_s']:.2f}x", "", "")
    Console().print(table)
    print(f"train_tl_pipeline read {pipeline}")
    if note:
        print(note)
    return {"bench": "gpu", "device": torch.cuda.get_device_name() if on_gpu else "cpu", "arch": arch, "size": size, "batch_size": batch,
            "steps": steps, "precision": str(dtype).replace("torch.", ""), "num_workers": workers, "note": note, "pipeline": pipeline,
            "prepare_seconds": prepare_seconds, **results}


def _streamed_train(images: Path, size: int):
    """tl's training dataset over the image folder itself (decoded per step), for when shards cannot be written."""
    from tl.config import DataConfig
    from tl.data.datasets import EpochSeeded

    return EpochSeeded(tl_datasets(DataConfig(dataset="imagefolder", data_dir=str(images)), size).train, 0)


def _all_reduce(device, numel: int) -> dict:
    """An all-reduce (sum) of ``numel`` float32 through accelerate in a one-process group that accelerate itself
    initialises (NCCL on a GPU, gloo on the CPU), run as a child process (``all_reduce.py``), median of 5."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    command = [sys.executable, str(Path(__file__).with_name("all_reduce.py")), str(numel)] + ([] if device.type == "cuda" else ["--cpu"])
    failed = {"seconds": float("nan"), "gb_per_s": float("nan"), "numel": numel, "processes": 0, "backend": "failed"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # a hung NCCL set-up must not cost the other figures
        return {**failed, "error": "no answer in 120 s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {**failed, "error": next((line for line in reversed(lines) if "Error" in line), lines[-1])}
    return json.loads(done.stdout.strip().splitlines()[-1])
