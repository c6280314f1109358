"""Decoded images kept in memory for small folder datasets: each photo is decoded once per run, not once per epoch.

Decoding is most of the input cost of a training step on the CPU: on the bees/ants photos (~500x375 JPEG)
libjpeg-turbo takes ~1.7 ms of the ~2.5 ms one worker spends per image. The sets people fine-tune on are
often small (hundreds to a few thousand photos) and trained for tens of epochs, so when their decoded pixels
fit a memory budget they are decoded once, up front, with a thread per CPU, and every epoch then only crops,
flips and normalises uint8 tensors. Loader workers are forked after this and share the pixels (copy on write).

The budget is per process (each of N local processes holds its own copy); ``--cache-images off`` streams
from disk as before, a number of MiB sets the budget. Larger sets are streamed: the check stops at the
first file that takes the running total over the budget, so a folder of 300,000 photos costs a few stats.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("tl")

MiB = 1 << 20
AUTO_LIMIT = 2048 * MiB  # never more than this by default, whatever the machine has
AUTO_SHARE = 0.15  # of physical memory, shared between the processes on the node


def auto_budget(local_processes: int = 1) -> int:
    """Bytes of decoded pixels one process may keep: 15% of RAM split between local processes, at most 2 GiB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 1024 * MiB
    return int(min(AUTO_LIMIT, ram * AUTO_SHARE / max(1, local_processes)))


def parse_budget(setting: str, local_processes: int = 1) -> int:
    """``auto`` | ``off`` | a number of MiB -> bytes (0 = off)."""
    if setting == "auto":
        return auto_budget(local_processes)
    if setting == "off":
        return 0
    return int(float(setting) * MiB)


def decoded_size(paths: list[Path], budget: int, needs: list[int | None] | None = None) -> int | None:
    """Bytes the decoded RGB pixels of ``paths`` take, or None as soon as they cannot fit ``budget``.

    File sizes first (pixels are never smaller than their compressed file; a JPEG decoded at a reduced size
    can be, so this check only errs on the side of streaming), then the image headers. JPEG and PNG are held
    as uint8 tensors (3 bytes a pixel); what PIL decodes is held as an RGB image (4 bytes). ``needs``: each
    path's ``min_short_side`` (read_image's), which shrinks large JPEGs."""
    from PIL import Image

    from tl.data.decode import jpeg_scale

    needs = needs or [None] * len(paths)
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue  # found unreadable later, when loaded
        if total > budget:
            return None
    total = 0
    for path, need in zip(paths, needs):
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                scale = jpeg_scale(width, height, need) if image.format in ("JPEG", "MPO") else 1
        except Exception:  # a bad file is reported when it is loaded
            continue
        total += -(-width // scale) * -(-height // scale) * (3 if path.suffix.lower() in (".jpg", ".jpeg", ".png") else 4)
        if total > budget:
            return None
    return total


def preload(datasets: list, budget: int, *, threads: int | None = None, workers_read: bool = True) -> int:
    """Decode every image of ``datasets`` (``ImageFiles``) into memory when all of them fit ``budget`` together.

    Returns the bytes held (0 when nothing was cached). A file that fails to decode is left out of the cache
    and read (and reported) as usual when it is loaded. ``workers_read``: loader workers will read the cache (they
    must then be forked to share it); False when the main process loads every batch itself."""
    import multiprocessing

    from tl.data.decode import read_image_sized
    from tl.errors import TLError

    datasets = [d for d in datasets if d is not None and hasattr(d, "samples") and getattr(d, "decoded", None) is None]
    paths = [path for d in datasets for path, _ in d.samples]
    needs = [getattr(d, "min_short_side", None) for d in datasets for _ in d.samples]
    if budget <= 0 or not paths:
        return 0
    # The start method loader workers will use, read without fixing it (get_all_start_methods lists the default first).
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if method != "fork" and workers_read:  # spawned workers would each get a pickled copy
        log.info("images are streamed from disk: the decoded-image cache needs fork-started loader workers")
        return 0
    size = decoded_size(paths, budget, needs)
    if size is None:
        log.info(f"images are streamed from disk: their decoded pixels exceed the {budget / MiB:.0f} MiB cache budget "
                 "(--cache-images MiB to raise it)")
        return 0

    def decode(path: Path, need: int | None):
        try:
            return read_image_sized(path, need)
        except (TLError, OSError, RuntimeError, ValueError):
            return None, None

    start = time.perf_counter()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = threads or cpus
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # the decoders release the GIL
        for dataset in datasets:
            decoded = list(pool.map(decode, [path for path, _ in dataset.samples], [dataset.min_short_side] * len(dataset)))
            dataset.decoded, dataset.full_sizes = [image for image, _ in decoded], [size for _, size in decoded]
    log.info(f"decoded {len(paths)} images into memory ({size / MiB:.0f} MiB) in {time.perf_counter() - start:.1f} s; "
             "later epochs skip decoding (--cache-images off streams them instead)")
    return size
