"""predict-dir's engine: every image under a folder to a CSV, streaming, resumable, shared by several processes.

Rows are written and flushed per batch, so a killed run keeps its rows and ``--resume`` predicts only the
missing files (``tl.inference.inflight`` makes a crashing decoder cost one file). Model: timm's ``inference.py``
(filename column first, one probability column per class).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tl.errors import TLError
from tl.inference.inflight import InFlight, decoder_crash_is_an_error, terminate_stops_cleanly
from tl.inference.predictions_csv import CsvWriteError, RowWriter, check_out, check_unknown_label, csv_header, csv_row, read_done
from tl.inference.predictor import Precision, Predictor, autocast_dtype, probabilities

if TYPE_CHECKING:
    import torch

AUTO_TOP_K = 5  # written instead of every class when a model has more than MAX_PROB_COLUMNS classes
MAX_PROB_COLUMNS = 20


class ImagePaths:
    """Map-style dataset: (image tensor, index, error). A file that cannot be read gives zeros and the reason.

    With ``threads`` > 1 a whole batch is decoded by a thread pool (``__getitems__``, which the DataLoader
    calls when it exists; the decoders release the GIL): see ``predict_dir`` for why on the CPU."""

    def __init__(self, paths: list[Path], transform, size: int, threads: int = 1, known_errors: dict[int, str] | None = None) -> None:
        self.paths, self.transform, self.size, self.threads = paths, transform, size, threads
        self.known_errors = known_errors or {}  # index -> reason, not decoded again (a file that crashed the decoder)
        self._pool = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, indices: list[int]) -> list:
        if self.threads <= 1:
            return [self[i] for i in indices]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.threads)
        return list(self._pool.map(self.__getitem__, indices))

    def __getitem__(self, index: int):
        import torch

        from tl.data.decode import read_image
        from tl.data.transforms import decode_short_side

        if index in self.known_errors:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, self.known_errors[index]
        try:  # decoded exactly as training and `tl eval` decode, so the probabilities match theirs
            return self.transform(read_image(self.paths[index], decode_short_side(self.transform))), index, ""
        except Exception as exc:  # a TLError from PIL, or a transform failing on a degenerate image: one row, not the run
            reason = exc.__context__ if isinstance(exc, TLError) and exc.__context__ else exc
            text = f"{type(reason).__name__}: {reason}".replace(str(self.paths[index]), self.paths[index].name)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, " ".join(text.split())


@dataclass
class Summary:
    total: int = 0
    predicted: int = 0
    resumed: int = 0
    failed: int = 0
    seconds: float = 0.0


def check_folder(images: Path) -> None:
    if not images.is_dir():
        raise TLError(f"{images} is not a folder", "pass a folder of images (searched recursively); for files use `tl predict`")


def check_counts(*, batch_size: int = 0, top_k: int | None = None, num_workers: int = -1) -> None:
    """predict-dir's number options, one check for the command and ``tl.Classifier.predict_dir``, before any work."""
    if batch_size < 0:
        raise TLError(f"--batch-size: must be at least 1 (or 0 for the automatic size), got {batch_size}")
    if top_k is not None and top_k < 0:
        raise TLError("--top-k: must be >= 0", "0 writes one column per class")
    if num_workers < -1:
        raise TLError(f"--num-workers: must be -1 (automatic) or >= 0, got {num_workers}")


def find_images(images: Path) -> tuple[list[Path], dict[Path, str]]:
    """(image files under ``images`` in sorted order, {broken link: why it cannot be read}); the broken links are
    in the list too, so they get an error row. Symlinked folders are not entered, so loops cannot hang it."""
    from tl.data.datasets import IMAGE_EXTENSIONS, scan_images

    check_folder(images)
    broken: dict[Path, str] = {}
    files = list(scan_images(images, broken=broken))
    if broken:
        files = sorted([*files, *broken], key=lambda path: path.relative_to(images).parts)  # the scan's order
    if not files:
        raise TLError(f"no images under {images}", f"supported extensions (any case): {' '.join(IMAGE_EXTENSIONS)}")
    return files, broken


CPU_BATCH, GPU_BATCH = 8, 64
CPU_CHUNK_BATCHES = 32  # on the CPU, images are decoded this many model batches at a time (see predict_dir)


def default_batch_size(device: "torch.device") -> int:
    """Small batches on the CPU: activations of a few images stay in cache (squeezenet1_0, bf16, this project's
    CPU: ~300 images/s at batch 4-8, ~130 at 32); large ones keep a GPU busy."""
    return CPU_BATCH if device.type == "cpu" else GPU_BATCH


def predict_dir(predictor: Predictor, images: Path, out: Path, *, batch_size: int = 0, num_workers: int = -1,
                top_k: int | None = None, tta: bool = False, precision: Precision = Precision.auto,
                resume: bool = False, overwrite: bool = False, compile: bool = False,
                min_confidence: float = 0.0, unknown_label: str = "unknown") -> Summary:
    """Predict every image under ``images`` into ``out``, streaming: each batch's rows are written and flushed
    as soon as they are computed. Under ``accelerate launch`` the processes take turns by batch and the main
    process writes the gathered rows, so the file is the same as a single process writes.

    On the CPU (``num_workers`` -1) decoding and the model take turns instead of overlapping: a chunk of
    ``CPU_CHUNK_BATCHES`` batches is decoded by a thread per core, then the model runs on it with every core.
    Loader worker processes decoding while the model's threads run oversubscribe the cores: on this project's
    2-core CPU (squeezenet1_0, bf16, bees/ants val) that ran at ~130 images/s, taking turns at ~210.

    A file that cannot be read (a broken link included) gets a row with its reason in ``error``; ``summary.failed``
    counts them. Ctrl-C, SIGTERM and a write that fails (a full disk) leave a valid CSV to ``resume``."""
    from tl.progress import log, setup_logging

    start = time.perf_counter()
    from tl.runtime import build_accelerator

    accelerator = build_accelerator()
    setup_logging(accelerator.is_main_process)
    names = predictor.class_names
    if predictor.thresholds is not None:  # multi-label: one probability column per class, always
        top_k = 0
    if top_k is None:
        top_k = AUTO_TOP_K if len(names) > MAX_PROB_COLUMNS else 0
        if top_k:
            log.info(f"{len(names)} classes: writing the top {top_k} per image (--top-k 0 writes every class)")
    top_k = min(top_k, len(names))
    check_unknown_label(min_confidence, unknown_label, names)
    check_out(out, resume=resume, overwrite=overwrite)
    header = csv_header(names, top_k, predictor.thresholds)
    files, broken = find_images(images)
    relative = [p.relative_to(images).as_posix() for p in files]

    done, failed_before, end = set(), 0, 0
    if out.exists() and resume:
        done, failed_before, end = read_done(out, header, relative)
    accelerator.wait_for_everyone()  # every process has read the file before the main one cuts it
    pending = [i for i, rel in enumerate(relative) if rel not in done]
    marker = InFlight(out)
    if resume:
        from tl.data.transforms import decode_short_side

        crashed = marker.culprits([files[i] for i in pending], accelerator, decode_short_side(predictor.pixels()))
    else:
        crashed = {}
    known_errors = {**broken, **crashed}
    summary = Summary(total=len(files), resumed=len(files) - len(pending), failed=failed_before)

    writer = RowWriter(out, end, header) if accelerator.is_main_process else None
    try:
        with terminate_stops_cleanly():
            if pending:
                _predict_pending(predictor, accelerator, [files[i] for i in pending], [relative[i] for i in pending],
                                 out, writer, marker, summary, known_errors, start=start, batch_size=batch_size,
                                 num_workers=num_workers, top_k=top_k, tta=tta, precision=precision, compile=compile,
                                 min_confidence=min_confidence, unknown_label=unknown_label)
    except (KeyboardInterrupt, SystemExit, CsvWriteError):  # stopped on purpose, or the disk is full: no decoder crashed
        if writer is not None:
            marker.clear()
        raise
    finally:  # the rows of the batch in hand too, when stopped
        if writer is not None:
            writer.close()
    if writer is not None:
        marker.clear()  # finished: nothing was in flight
    summary.seconds = time.perf_counter() - start
    return summary


def _predict_pending(predictor: Predictor, accelerator, files: list[Path], relative: list[str], out: Path,
                     writer: RowWriter | None, marker: InFlight, summary: Summary, known_errors: dict[Path, str], *,
                     start: float, batch_size: int, num_workers: int, top_k: int, tta: bool, precision: Precision,
                     compile: bool, min_confidence: float, unknown_label: str) -> None:
    """``predict_dir``'s loop over the files not in the CSV yet; the main process (``writer``) writes their rows."""
    import torch
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader

    from tl.progress import EpochProgress
    from tl.runtime import num_workers as resolve_workers

    names = predictor.class_names
    device = accelerator.device
    dtype = autocast_dtype(precision, device)
    model = predictor.model.to(device, memory_format=torch.channels_last)  # faster convolutions, same results
    if compile:
        from tl.models.fastpaths import compile_model

        compile_model(model, device)
    predictor.model = model
    batch_size = batch_size or default_batch_size(device)
    normalize = predictor.normalizer()
    take_turns = device.type == "cpu" and num_workers < 0
    workers = 0 if take_turns else resolve_workers(num_workers, accelerator.num_processes)
    threads = max(1, resolve_workers(-1, accelerator.num_processes)) if take_turns else 1
    dataset = ImagePaths(files, predictor.pixels(), predictor.size, threads=threads,
                         known_errors={k: known_errors[path] for k, path in enumerate(files) if path in known_errors})
    loader_batch, prefetch = batch_size * (CPU_CHUNK_BATCHES if take_turns else 1), 4 if workers else None
    loader = accelerator.prepare_data_loader(DataLoader(
        dataset, batch_size=loader_batch, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=prefetch))
    # Files decoded but not yet written: what a crash of a decoder can have been working on.
    if writer is not None:
        marker.write(loader_batch * (workers * (prefetch or 0) + 2) * accelerator.num_processes)
    progress = EpochProgress(description="predict", total=len(loader), enabled=accelerator.is_main_process,
                             every=max(1, len(loader) // 10))
    try:
        with torch.inference_mode(), decoder_crash_is_an_error(out):
            for step, (batch, indices, errors) in enumerate(loader, start=1):
                batch = batch.to(device, non_blocking=True)
                probs = torch.cat([probabilities(predictor, normalize(part, channels_last=True), tta=tta, dtype=dtype)
                                   for part in batch.split(batch_size)])
                local_errors = [(int(i), e) for i, e in zip(indices, errors) if e]
                indices, probs = accelerator.gather_for_metrics((indices, probs))
                error_of = dict(gather_object(local_errors))  # every process gets every message (a padded repeat is harmless)
                summary.predicted += len(indices)
                summary.failed += sum(int(i) in error_of for i in indices)
                if writer is not None:  # flushed: a killed run loses only the batch in flight
                    writer.write([csv_row(relative[index], row, names, top_k, error_of.get(index, ""),
                                          min_confidence=min_confidence, unknown_label=unknown_label, thresholds=predictor.thresholds)
                                  for index, row in zip(indices.tolist(), probs.cpu().tolist())])
                if progress.wants_stats(step):
                    progress.update(step, f"{summary.predicted / (time.perf_counter() - start):.1f} img/s")
                else:
                    progress.update(step)
    finally:  # also when a decoder crashed: a notebook keeps running, its threads must not
        progress.close()
        if dataset._pool is not None:
            dataset._pool.shutdown()
