"""predict-dir's engine: every image under a folder (or in a list) to a CSV or Parquet, streaming, resumable,
shared by several processes, or split into shards that are predicted apart and merged.

Rows are written and flushed per batch, so a killed run keeps its rows and ``--resume`` predicts only the
missing files (``tl.inference.inflight`` makes a crashing decoder cost one file). Model: timm's ``inference.py``
(filename column first, one probability column per class). The files: ``file_list``; shards: ``shards``;
Parquet: ``predictions_parquet``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tl.errors import TLError
from tl.inference.file_list import FileList, NameSet, load_files, scan_folder
from tl.inference.inflight import InFlight, decoder_crash_is_an_error
from tl.inference.predictions_csv import CsvWriteError, RowWriter, check_out, check_unknown_label, csv_header, csv_row, read_done
from tl.inference.predictions_parquet import (
    check_parquet_out,
    finalise,
    is_parquet,
    journal_of,
    parquet_to_journal,
    read_parquet_done,
)
from tl.inference.predictor import Precision, Predictor, autocast_dtype, probabilities
from tl.inference.shards import ShardRecord, check_resumed_shard, new_record, parse_shard, record_path, write_record

if TYPE_CHECKING:
    import numpy as np
    import torch

AUTO_TOP_K = 5  # written instead of every class when a model has more than MAX_PROB_COLUMNS classes
MAX_PROB_COLUMNS = 20


class ImagePaths:
    """Map-style dataset over files ``indices`` of ``files``: (image tensor, position, error). A file that cannot be
    read (missing, broken, not an image) gives zeros and the reason.

    With ``threads`` > 1 a whole batch is decoded by a thread pool (``__getitems__``, which the DataLoader
    calls when it exists; the decoders release the GIL): see ``predict_dir`` for why on the CPU."""

    def __init__(self, files: FileList, indices: "np.ndarray", transform, size: int, threads: int = 1,
                 known_errors: dict[int, str] | None = None) -> None:
        self.files, self.indices, self.transform, self.size, self.threads = files, indices, transform, size, threads
        self.known_errors = known_errors or {}  # position -> reason, not decoded again (a broken link, a decoder crash)
        self._pool = None

    def __len__(self) -> int:
        return len(self.indices)

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
        path = self.files.path(int(self.indices[index]))
        try:  # decoded exactly as training and `tl eval` decode, so the probabilities match theirs
            return self.transform(read_image(Path(path), decode_short_side(self.transform))), index, ""
        except Exception as exc:  # a TLError from PIL, or a transform failing on a degenerate image: one row, not the run
            reason = exc.__context__ if isinstance(exc, TLError) and exc.__context__ else exc
            text = f"{type(reason).__name__}: {reason}".replace(path, os.path.basename(path))
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, " ".join(text.split())


@dataclass
class Summary:
    total: int = 0
    predicted: int = 0
    resumed: int = 0
    failed: int = 0
    seconds: float = 0.0
    shard: str = ""  # "K/N" when one shard of the files was predicted


def check_counts(*, batch_size: int = 0, top_k: int | None = None, num_workers: int = -1) -> None:
    """predict-dir's number options, one check for the command and ``tl.Classifier.predict_dir``, before any work."""
    if batch_size < 0:
        raise TLError(f"--batch-size: must be at least 1 (or 0 for the automatic size), got {batch_size}")
    if top_k is not None and top_k < 0:
        raise TLError("--top-k: must be >= 0", "0 writes one column per class")
    if num_workers < -1:
        raise TLError(f"--num-workers: must be -1 (automatic) or >= 0, got {num_workers}")


def check_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    """--out (a CSV, or a .parquet and the rows of its unfinished run), before the model loads."""
    check_out(out, resume=resume, overwrite=overwrite)
    check_parquet_out(out, resume=resume, overwrite=overwrite)


def find_images(images: Path) -> tuple[list[Path], dict[Path, str]]:
    """(image files under ``images`` in predict-dir's order, {broken link: why it cannot be read}), as ``Path``s:
    for a few thousand files (the benchmarks); predict-dir itself keeps them in a ``FileList``."""
    files = scan_folder(images)
    return [Path(files.path(i)) for i in range(len(files))], {Path(files.path(i)): why for i, why in files.errors.items()}


CPU_BATCH, GPU_BATCH = 8, 64
CPU_CHUNK_BATCHES = 32  # on the CPU, images are decoded this many model batches at a time (see predict_dir)


def default_batch_size(device: "torch.device") -> int:
    """Small batches on the CPU: activations of a few images stay in cache (squeezenet1_0, bf16, this project's
    CPU: ~300 images/s at batch 4-8, ~130 at 32); large ones keep a GPU busy."""
    return CPU_BATCH if device.type == "cpu" else GPU_BATCH


def predict_dir(predictor: Predictor, images: Path | None, out: Path, *, files: Path | None = None,
                shard: str | None = None, batch_size: int = 0, num_workers: int = -1, top_k: int | None = None,
                tta: bool = False, precision: Precision = Precision.auto, resume: bool = False, overwrite: bool = False,
                compile: bool = False, min_confidence: float = 0.0, unknown_label: str = "unknown") -> Summary:
    """Predict every image under ``images`` (or listed in ``files``; ``shard`` "K/N" or "auto": the K-th of N
    blocks of them) into ``out``, a CSV or a .parquet, streaming: each batch's rows are written and flushed as soon
    as they are computed. Under ``accelerate launch`` the processes take turns by batch and the main process writes
    the gathered rows, so the file is the same as a single process writes.

    On the CPU (``num_workers`` -1) decoding and the model take turns instead of overlapping: a chunk of
    ``CPU_CHUNK_BATCHES`` batches is decoded by a thread per core, then the model runs on it with every core.
    Loader worker processes decoding while the model's threads run oversubscribe the cores: on this project's
    2-core CPU (squeezenet1_0, bf16, bees/ants val) that ran at ~130 images/s, taking turns at ~210.

    A file that cannot be read (missing, a broken link) gets a row with its reason in ``error``; ``summary.failed``
    counts them. SIGTERM, SIGUSR1 and Ctrl-C finish the batch in flight, write it and raise ``tl.errors.Stopped``;
    a write that fails (a full disk) keeps the rows before: ``resume`` continues from there either way."""
    from tl.progress import log, setup_logging
    from tl.runtime import StopRequest, build_accelerator

    start = time.perf_counter()
    wanted = parse_shard(shard)
    accelerator = build_accelerator()
    setup_logging(accelerator.is_main_process)
    # From here a signal (SIGTERM/SIGUSR1/Ctrl-C) asks for a clean stop: during a long scan or resume it ends the
    # run right after them, during the predictions after the batch in flight.
    stop = StopRequest(doing="writing the batch in flight", where="predict-dir").install()
    writer = marker = None
    try:
        names = predictor.class_names
        if predictor.thresholds is not None:  # multi-label: one probability column per class, always
            if top_k or min_confidence:
                log.warning("--top-k and --min-confidence do not apply to a multi-label model: every class's "
                            "probability is written and `labels` holds those over their thresholds (see --threshold)")
            top_k = 0
        if top_k is None:
            top_k = AUTO_TOP_K if len(names) > MAX_PROB_COLUMNS else 0
            if top_k:
                log.info(f"{len(names)} classes: writing the top {top_k} per image (--top-k 0 writes every class)")
        top_k = min(top_k, len(names))
        check_unknown_label(min_confidence, unknown_label, names)
        check_output(out, resume=resume, overwrite=overwrite)
        header = csv_header(names, top_k, predictor.thresholds)
        listing = load_files(images, files)
        first, stop_at = wanted.block(len(listing)) if wanted else (0, len(listing))
        record = new_record(wanted, listing) if wanted else None
        parquet = is_parquet(out)
        rows_file = journal_of(out) if parquet else out  # where the rows stream (a Parquet is written at the end)
        finished_parquet = parquet and resume and out.exists() and not rows_file.exists()
        if resume:
            check_resumed_shard(out, rows_file.exists() or out.exists(), wanted, record)

        done, failed_before, end = NameSet(), 0, 0
        if resume and rows_file.exists():
            _, failed_before, end = read_done(rows_file, header, listing, done)
        elif finished_parquet:
            failed_before = read_parquet_done(out, header, done)
        accelerator.wait_for_everyone()  # every process has read the file before the main one cuts it
        pending = listing.pending(first, stop_at, done.array())
        del done
        summary = Summary(total=stop_at - first, resumed=stop_at - first - len(pending), failed=failed_before,
                          shard=str(wanted or ""))
        main = accelerator.is_main_process
        writes = main and not (finished_parquet and not len(pending))  # else a finished Parquet has every row already
        if main:
            _start_records(out, record, overwrite=not resume)
            if finished_parquet and len(pending):  # files were added: its rows back into the CSV they came from
                parquet_to_journal(out, rows_file, header)
                end = rows_file.stat().st_size
        marker = InFlight(out)
        crashed = _crashed(marker, listing, pending, predictor, accelerator) if resume else {}
        known_errors = {**_positions(listing.errors, pending), **crashed}

        writer = RowWriter(rows_file, end, header) if writes else None
        if stop.agreed(accelerator):
            raise _stopped(stop, rows_file)
        if len(pending):
            _predict_pending(predictor, accelerator, listing, pending, rows_file, writer, marker, summary, known_errors,
                             stop, start=start, batch_size=batch_size, num_workers=num_workers, top_k=top_k, tta=tta,
                             precision=precision, compile=compile, min_confidence=min_confidence, unknown_label=unknown_label)
    except (KeyboardInterrupt, SystemExit, CsvWriteError):  # stopped on purpose, or the disk is full: no decoder crashed
        if writer is not None:
            marker.clear()
        raise
    finally:  # the rows of the batch in hand too, when stopped
        stop.uninstall()
        if writer is not None:
            writer.close()
    if writer is not None:
        if parquet:
            finalise(rows_file, out, header)
        marker.clear()  # finished: nothing was in flight
    if main and record is not None:
        record.complete = True
        write_record(out, record)
    summary.seconds = time.perf_counter() - start
    return summary


def _start_records(out: Path, record: ShardRecord | None, *, overwrite: bool) -> None:
    """A shard's record (not finished yet), written before its first row; a fresh run without --shard leaves none."""
    if record is not None:
        write_record(out, record)
    elif overwrite:
        record_path(out).unlink(missing_ok=True)


def _positions(errors: dict[int, str], pending: "np.ndarray") -> dict[int, str]:
    """{file index: reason} -> {position in ``pending``: reason}, for the files of ``pending`` only."""
    import numpy as np

    found = {}
    for index, reason in errors.items():
        at = int(np.searchsorted(pending, index))
        if at < len(pending) and pending[at] == index:
            found[at] = reason
    return found


def _crashed(marker: InFlight, listing: FileList, pending: "np.ndarray", predictor: Predictor, accelerator) -> dict[int, str]:
    """The next pending files that crash the decoder, when the last run died decoding (see ``inflight``), by position."""
    from tl.data.transforms import decode_short_side

    suspects = [Path(listing.path(int(i))) for i in pending[:marker.window()]]
    found = marker.culprits(suspects, accelerator, decode_short_side(predictor.pixels()))
    return {at: found[path] for at, path in enumerate(suspects) if path in found}


def _stopped(stop, rows_file: Path) -> BaseException:
    return stop.stopped(None, where=f"stopped after the batch in flight; the rows so far are in {rows_file}",
                        resume="continue with the same call and resume=True")


def _predict_pending(predictor: Predictor, accelerator, listing: FileList, pending: "np.ndarray", out: Path,
                     writer: RowWriter | None, marker: InFlight, summary: Summary, known_errors: dict[int, str], stop, *,
                     start: float, batch_size: int, num_workers: int, top_k: int, tta: bool, precision: Precision,
                     compile: bool, min_confidence: float, unknown_label: str) -> None:
    """``predict_dir``'s loop over the files not written yet; the main process (``writer``) writes their rows.
    After each batch the processes agree whether one was asked to stop (``stop``), and then all stop there."""
    import torch
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader

    from tl.progress import EpochProgress
    from tl.runtime import ignore_stop_signals, keep_freed_memory, return_freed_memory
    from tl.runtime import num_workers as resolve_workers

    names = predictor.class_names
    device = accelerator.device
    if device.type == "cpu":
        keep_freed_memory()  # each batch's activations come back from the heap, not as page faults
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
    dataset = ImagePaths(listing, pending, predictor.pixels(), predictor.size, threads=threads, known_errors=known_errors)
    loader_batch, prefetch = batch_size * (CPU_CHUNK_BATCHES if take_turns else 1), 4 if workers else None
    loader = accelerator.prepare_data_loader(DataLoader(
        dataset, batch_size=loader_batch, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=prefetch, worker_init_fn=ignore_stop_signals if workers else None))
    # Files decoded but not yet written: what a crash of a decoder can have been working on.
    if writer is not None:
        marker.write(loader_batch * (workers * (prefetch or 0) + 2) * accelerator.num_processes)
    progress = EpochProgress(description="predict", total=len(loader), enabled=accelerator.is_main_process,
                             every=max(1, len(loader) // 10))
    try:
        with torch.inference_mode(), decoder_crash_is_an_error(out, lambda: _stopped(stop, out) if stop.signal_name else None):
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
                    writer.write([csv_row(listing.name(int(pending[index])), row, names, top_k, error_of.get(index, ""),
                                          min_confidence=min_confidence, unknown_label=unknown_label,
                                          thresholds=predictor.thresholds)
                                  for index, row in zip(indices.tolist(), probs.cpu().tolist())])
                if progress.wants_stats(step):
                    progress.update(step, f"{summary.predicted / (time.perf_counter() - start):.1f} img/s")
                else:
                    progress.update(step)
                if stop.agreed(accelerator) and step < len(loader):
                    raise _stopped(stop, out)
    finally:  # also when a decoder crashed: a notebook keeps running, its threads must not, nor hold its peak memory
        progress.close()
        if dataset._pool is not None:
            dataset._pool.shutdown()
        return_freed_memory()
