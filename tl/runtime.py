"""Where the code runs: the accelerator for this machine, its precision rule, worker counts, what the CPU can do,
and the signals (SIGTERM/SIGUSR1/Ctrl-C) that ask a run, training or predict-dir, to stop cleanly.

Shared by every stage (data commands size their loaders with it, training and inference build their accelerator
with it). Let accelerate own distribution: no rank arithmetic by hand. Training's own set-up (loaders, trackers,
re-preparing after an unfreeze) is ``tl.training.setup``.
"""

from __future__ import annotations

import functools
import os
import platform
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from tl.errors import Stopped, TLError
from tl.progress import log


def has_accelerator_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def auto_precision(on_gpu: bool) -> str:
    """bf16 where the device computes it natively: it halves memory traffic and needs no loss scaling. GPUs
    without bf16 (before Ampere) get fp16, which accelerate pairs with a gradient scaler. On the CPU only
    AVX512-BF16/AMX cores qualify (elsewhere oneDNN emulates bf16, slower than fp32). On this project's
    2-core EPYC, squeezenet1_0 training at 224 px ran ~2x faster in bf16 + channels_last than in fp32, with
    the same bees/ants accuracy (see README, Performance)."""
    if on_gpu:
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"  # mps: autocast support for training is partial
    return "bf16" if cpu_has_native_bf16() else "no"


def resolve_precision(requested: str | None, on_gpu: bool) -> str | None:
    """The precision to build the accelerator with. ``auto`` follows ``accelerate launch`` when it chose a mixed
    precision, else the device (``auto_precision``). fp16 autocast on the CPU silently computes in float32: map
    it to bf16.

    ``accelerate launch`` always sets ACCELERATE_MIXED_PRECISION, to ``no`` when neither its flag nor a config
    file chose one, and a typed ``--mixed_precision no`` looks the same: without this rule every launched GPU
    run without the flag trained in fp32. So a launcher's ``no`` counts as not chosen under ``auto``, and fp32
    is forced with tl's own ``--mixed-precision no``."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if requested == "auto":
        requested = launched if launched and launched != "no" else auto_precision(on_gpu)
        if launched == "no" and requested != "no":
            log.info(f"mixed precision {requested} (--mixed-precision auto; the launcher's 'no' is its default): "
                     "pass --mixed-precision no for fp32")
    effective = requested or launched
    if effective == "fp16" and not on_gpu:
        log.warning("mixed precision fp16 does nothing on the CPU; using bf16 instead")
        return "bf16"
    return requested


def build_accelerator(*, mixed_precision: str | None = None, **kwargs: Any) -> Accelerator:
    """An Accelerator for this machine, for training and prediction alike. Without a GPU it is built for the
    CPU, so that processes started by ``accelerate launch --multi_gpu`` or torchrun form one gloo group instead
    of each working alone; a launch whose processes did not join one group is refused."""
    from accelerate.state import AcceleratorState

    # The state is a process-wide singleton: a second run in one process (a notebook, `tl reproduce` from
    # Python, the tests) could not choose another precision. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    on_gpu = has_accelerator_device()
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=resolve_precision(mixed_precision, on_gpu), **kwargs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise TLError(f"launched as {world} processes, but they did not join one process group",
                      "launch with `accelerate launch --multi_gpu --num_processes N` or torchrun")
    return accelerator


def local_processes(accelerator: Accelerator) -> int:
    """Processes on this node (they share its CPUs and memory)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def num_workers(requested: int, num_processes: int) -> int:
    """-1: the CPUs this process may use, shared between the local processes, at most 8."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", num_processes)))
    return min(8, per_process) if per_process > 1 else 0


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16).

    oneDNN also runs bf16 on older AVX512 CPUs by emulation, which is slower than float32, so
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not the question to ask. On this project's 2-core
    EPYC (avx512_bf16), squeezenet1_0 inference in channels_last went from 82 to 129 images/s at batch 32.
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


# glibc's mallopt parameters (malloc.h), and the variables by which a user sets them: tl leaves those alone
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_OWN_ALLOCATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory a CPU training or inference step frees, for the next step to reuse.

    Each step allocates and frees the same few hundred MB of activations. By default glibc hands freed blocks back to
    the kernel (blocks above 128 KiB-32 MiB are mmap'ed, and a free heap top above 2x that is trimmed), so every step
    faults its pages in afresh. On the project's 2-core machine squeezenet1_0 at batch 16 took ~140,000 page faults
    per training step and a quarter of its CPU time in the kernel; with blocks up to 32 MiB served from the heap and
    up to 1 GiB of free heap kept, ~6,000 faults and ~25% more images/s. The same as ``GLIBC_TUNABLES=glibc.malloc.
    mmap_threshold=...``, set at run time. ``return_freed_memory`` hands the kept heap back when a run ends inside a
    longer-lived process. Left alone when the user chose these settings (``_OWN_ALLOCATOR_SETTINGS``, malloc
    tunables, a malloc in ``LD_PRELOAD``) or set ``TL_KEEP_FREED_MEMORY=0``. Returns whether it applied.
    """
    if os.environ.get("TL_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _OWN_ALLOCATOR_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: their own reuse
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))


def return_freed_memory() -> None:
    """Give the free heap that ``keep_freed_memory`` kept back to the kernel (glibc's ``malloc_trim``): a run inside a
    notebook or another program does not hold its peak after it ends. The settings stay for the next run."""
    if not keep_freed_memory.cache_info().currsize or not keep_freed_memory():
        return
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (what SLURM sends before a time limit or preemption) and Ctrl-C into a request to
    stop cleanly after the current step (training saves its state, predict-dir writes its batch). A second signal
    stops at once."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self, doing: str = "saving state after this step", where: str = "training") -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self.doing, self.where = doing, where  # what the warning says happens next; what runs (when in a thread)

    def install(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():  # Python allows handlers there only
            log.info(f"{self.where} in a thread: Ctrl-C and SIGTERM cannot ask this run to stop cleanly")
            return self
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if self.signal_name is not None:
            log.warning(f"{name} again: stopping now without saving")
            if number == signal.SIGINT:
                raise KeyboardInterrupt  # a notebook's kernel lives on; `tl train` exits 130
            raise SystemExit(128 + number)
        self.signal_name = name
        log.warning(f"{name} received: {self.doing}, then exiting (send it again to stop at once)")

    def stopped(self, state_dir: Path | None, **where: str) -> Stopped:
        """The exception that ends the run once it stopped as asked (its state saved in ``state_dir``; ``where``:
        ``Stopped``'s own words for a run that has no state folder)."""
        return Stopped(self.signal_name or "stop", str(state_dir) if state_dir else None, **where)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, accelerator: Accelerator, alarm: torch.Tensor | None = None) -> bool:
        """Whether any process was asked to stop, or (several processes) raised ``alarm``, a device flag such as
        ``LossGuard.alarm()``: one collective for both, so every rank stops at the same step."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        if alarm is not None:
            flag = flag + alarm.to(flag)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def ignore_stop_signals(worker_id: int) -> None:
    """A loader's ``worker_init_fn`` (training's, predict-dir's): workers leave Ctrl-C and SIGUSR1 to the main one.

    A terminal's Ctrl-C (and a notebook's interrupt) reaches every process of the group. Workers forked after
    ``StopRequest.install`` ran its handler too: one Ctrl-C printed its warning once per process, and a second made
    the workers exit, so the main process died of "DataLoader worker exited unexpectedly" without saving. SIGTERM is
    left to torch's own worker handler: multiprocessing ends daemonic workers with it when the program exits (ignored,
    the program hung there).
    """
    for name in ("SIGINT", "SIGUSR1"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)
