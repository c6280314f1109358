"""predict-dir's crash recovery: a decoder that kills the process costs one file, not the run, and not the next run.

While predicting, ``OUT.inflight`` says how many files past the last written row can be in flight (decoded
ahead of the model). A run that finishes removes it; one that a crashing decoder killed leaves it behind. Then
``--resume`` decodes those next files in a child process first (``tl.data.isolated_decode``): the one that kills
the child gets an error row ("the decoder crashed on this file") and is not decoded again, the rest are
predicted as usual. Nobody has to find the bad file by hand, and nothing written is lost.

A run stopped on purpose (Ctrl-C, SIGTERM, SIGUSR1, a write that failed) crashed in no decoder: it removes the marker, so
the next ``--resume`` does not decode the next files in child processes for nothing.
"""

from __future__ import annotations

import gc
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tl.errors import TLError

_WORKER_DIED = re.compile(r"DataLoader worker \(pid.*(killed by signal|exited unexpectedly)")


class InFlight:
    def __init__(self, out: Path) -> None:
        self.path = out.with_name(out.name + ".inflight")

    def write(self, window: int) -> None:
        self.path.write_text(json.dumps({"window": window}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def window(self) -> int:
        """Files that can have been in flight when the last run died; 0 when it did not die."""
        try:
            return int(json.loads(self.path.read_text())["window"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def culprits(self, pending: list[Path], accelerator, min_short_side: int | None = None) -> dict[Path, str]:
        """The files among the next ``window()`` pending ones that crash or hang the decoder, with the reason.

        The main process decodes them in child processes, at the reduced size predicting decodes them at
        (``min_short_side``), and tells the others, so all agree."""
        from accelerate.utils import broadcast_object_list

        from tl.data.isolated_decode import CRASHED, HUNG, decode_each_in_child
        from tl.progress import log

        found: list = [{}]
        if accelerator.is_main_process:
            window = self.window()
            if window:
                suspects = pending[:window]
                log.warning(f"the last run into {self.path.with_suffix('')} stopped while decoding: checking the next "
                            f"{len(suspects)} file(s) in a separate process first")
                outcomes = decode_each_in_child(suspects, min_short_side=min_short_side)
                found[0] = {Path(p): o.detail for p, o in outcomes.items() if o.status in (CRASHED, HUNG)}
                for path, reason in found[0].items():
                    log.warning(f"{path}: {reason}; it gets an error row and is not decoded again")
        if accelerator.num_processes > 1:
            broadcast_object_list(found)
        return found[0]


@contextmanager
def decoder_crash_is_an_error(out: Path, stopping: Callable[[], BaseException | None] = lambda: None) -> Iterator[None]:
    """A loader worker killed by its decoder becomes one line that says how to carry on (the in-flight marker stays).
    A worker that died after a stop was asked for (SLURM signals every process of a job step, the workers too) is
    that stop: ``stopping()`` gives the exception that says so, None when no stop was asked for."""
    died, stopped = "", None
    try:
        yield
    except (RuntimeError, OSError) as exc:
        # The signal that asked for the stop reaches the workers too: one can die mid-transfer of a batch (the
        # main process then reads a reset connection) or between batches (torch's "worker killed"). Both are the stop.
        stopped = stopping()
        if stopped is None and not (isinstance(exc, RuntimeError) and _WORKER_DIED.search(str(exc))):
            raise
        died = str(exc).splitlines()[0].strip() if str(exc) else type(exc).__name__
    if stopped is not None:
        gc.collect()
        raise stopped
    if died:
        # Raised outside the except block, with the loader's frames collected: a live loader iterator keeps
        # torch's SIGCHLD handler raising the same error again wherever the program happens to be.
        gc.collect()
        raise TLError(f"a decoder crashed on one of the files being read ({died}); the rows written so far are in {out}",
                      "run the same command with --resume: the file that crashed gets an error row and the rest are predicted")
