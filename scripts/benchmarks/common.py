"""What several benchmarks share: generated photos and checkpoints, tl's prediction and prepared-shard paths,
the report tables, peak memory and the machine's facts. Imports nothing from the other bench modules."""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def in_fresh_process(function, *args):
    """``function(*args)`` in a new Python process (spawned, not forked), its result returned: each measurement starts
    from the same state, and nothing one method sets for its process (tl keeps freed memory for reuse on the CPU,
    ``tl.runtime.keep_freed_memory``) carries over to the next, whose baseline is the plain process a tutorial gets."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def scratch_dir(prefix: str = "tl-bench-") -> Path:
    """A new temporary folder, removed when the bench exits (generated photos and runs are hundreds of MB)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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


def train_images(args: argparse.Namespace) -> Path:
    """``--images``, or 2 classes x 48 generated photo-sized JPEGs (val is train: only speed is measured)."""
    if args.images is not None:
        return args.images
    images = scratch_dir() / "data"
    for name in ("a", "b"):
        (images / "train" / name).mkdir(parents=True)
        quick_images(images / "train" / name, args.per_class)
    (images / "val").symlink_to(images / "train")
    return images


def predict_dir_rate(checkpoint: Path, images: Path, out: Path, args: argparse.Namespace) -> float:
    """Images/s of ``tl predict-dir`` as the command runs it, model loading excepted (the loop loads it once too)."""
    from tl.inference.folder import predict_dir
    from tl.inference.predictor import Precision, load_predictor

    predictor = load_predictor(checkpoint)
    start = time.perf_counter()
    summary = predict_dir(predictor, images, out, batch_size=args.batch_size, num_workers=args.num_workers,
                          precision=Precision(args.precision), overwrite=True)
    return summary.predicted / (time.perf_counter() - start)


def prepared_train(args: argparse.Namespace, images: Path, size: int):
    """(tl's training dataset over ``--prepared``, or over shards ``tl prepare`` writes from ``images`` now; the
    seconds that took, 0 when given). Short side: the eval resize of ``size`` (256 for 224), as the README says."""
    from tl.config import DataConfig
    from tl.data.datasets import EpochSeeded
    from tl.data.prepare import prepare

    prepared, seconds = args.prepared, 0.0
    if prepared is None:
        prepared = scratch_dir() / "prepared"
        start = time.perf_counter()
        prepare(DataConfig(dataset="imagefolder", data_dir=str(images)), prepared, short_side=round(size / 0.875))
        seconds = time.perf_counter() - start
    return EpochSeeded(tl_datasets(DataConfig(dataset=f"hf:{prepared}"), size).train, 0), seconds


def tl_datasets(config, size: int):
    """``config``'s datasets with tl train's transforms at ``size``: uint8 crops for training (``train_pixels``),
    the eval resize of size / 0.875 (256 for 224)."""
    from tl.data.datasets import build_datasets
    from tl.data.transforms import eval_transform, train_pixels
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    tf = dict(size=size, resize=round(size / 0.875), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return build_datasets(config, seed=0, train_tf=train_pixels(size=size), eval_tf=eval_transform(**tf))


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


class PeakMemory:
    """Peak memory while the block runs: GPU memory allocated by torch on CUDA, else the resident set size
    of this process, sampled every 20 ms (DataLoader workers are processes of their own and not counted)."""

    def __enter__(self) -> PeakMemory:
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


def machine_info(load_before: tuple[float, float, float], **extra) -> dict:
    """CPUs, torch and Python versions, ``extra`` facts, and the load average before and after the run: other
    work on the machine slows the baselines and tl differently, so a report names it."""
    import torch

    return {"cpus": os.cpu_count(), **extra, "torch": torch.__version__, "python": platform.python_version(),
            "load_average_before": load_before, "load_average_after": os.getloadavg()}
