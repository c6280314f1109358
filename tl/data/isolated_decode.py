"""Decoding files in a child process, so that a decoder that crashes or hangs names its file instead of killing us.

Used where a crash already happened once (``predict-dir --resume`` after a run died: the files that were in
flight are decoded here first, and the one that kills the decoder gets an error row instead of killing the
run again) and by the fuzz test. The child decodes the files one by one with ``tl.data.decode.read_image``, the
function training and prediction use, announcing each before it starts: when the child dies, the last file
it announced is the culprit, and a fresh child carries on with the files after it.

Run as a program it is that child: ``python -m tl.data.isolated_decode`` reads {"paths": [...], "min_short_side": N}
as JSON on stdin.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

CRASHED, HUNG, UNREADABLE, OK, BUG = "crashed", "hung", "unreadable", "ok", "bug"


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | unreadable (a clean TLError) | crashed | hung | bug (any other exception: a defect in tl)
    detail: str = ""


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def decode_each_in_child(paths: list[str | Path], *, timeout: float = 60.0, env: dict[str, str] | None = None,
                         min_short_side: int | None = None) -> dict[str, Outcome]:
    """Every path's outcome, decoded in child processes; a crash or a hang costs a new child, not this process.

    ``timeout``: seconds one file may take (the first also pays the child's start-up) before it counts as hung.
    ``min_short_side``: ``read_image``'s, so the reduced-size JPEG decode can be probed too.
    """
    names = [str(p) for p in paths]
    outcomes: dict[str, Outcome] = {}
    start = 0
    while start < len(names):
        done_up_to = _run_child(names, start, timeout, env, outcomes, min_short_side)
        start = done_up_to + 1
    return outcomes


def _run_child(names: list[str], start: int, timeout: float, env: dict[str, str] | None, outcomes: dict[str, Outcome],
               min_short_side: int | None = None) -> int:
    """Decode ``names[start:]`` in one child; returns the index of the last file it settled."""
    child = subprocess.Popen([sys.executable, "-m", "tl.data.isolated_decode"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env, text=True, encoding="utf-8", errors="surrogateescape")
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    assert child.stdin is not None
    try:
        child.stdin.write(json.dumps({"paths": names[start:], "min_short_side": min_short_side}))
        child.stdin.close()
    except BrokenPipeError:
        pass
    current = start - 1  # the file the child announced last
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            child.kill()
            child.wait()
            return _settle(names, start, current, outcomes,
                           Outcome(HUNG, f"the decoder hung on this file (no answer in {timeout:.0f} s)"),
                           f"the decoding process did not start in {timeout:.0f} s")
        if line is None:
            stopped = _signal_name(child.wait())
            return _settle(names, start, current, outcomes, Outcome(CRASHED, f"the decoder crashed on this file ({stopped})"),
                           f"the decoding process failed to start ({stopped})")
        kind, _, rest = line.rstrip("\n").partition(" ")
        index, _, detail = rest.partition(" ")
        position = start + int(index)
        if kind == "S":
            current = position
        else:
            outcomes[names[position]] = Outcome({"O": OK, "E": UNREADABLE, "B": BUG}[kind], detail)


def _settle(names: list[str], start: int, current: int, outcomes: dict[str, Outcome], culprit: Outcome,
            not_started: str) -> int:
    """After the child stopped (died or hung): the file it announced last gets ``culprit`` and the next child starts
    after it. Before any file was announced there is nothing to blame, and starting it again would not help: the
    remaining files are reported with ``not_started``. Returns the index of the last file settled."""
    if current < start:
        for name in names[start:]:
            outcomes.setdefault(name, Outcome(BUG, not_started))
        return len(names) - 1
    outcomes.setdefault(names[current], culprit)
    return current


def _child() -> None:
    from tl.data.decode import read_image
    from tl.errors import TLError

    request = json.loads(sys.stdin.read())
    names, min_short_side = request["paths"], request.get("min_short_side")
    sys.stdout.reconfigure(errors="backslashreplace")  # a file name that is not UTF-8 must not kill the report
    out = sys.stdout
    for index, name in enumerate(names):
        out.write(f"S {index}\n")
        out.flush()  # announced before decoding: if the decoder kills us, the parent knows the file
        try:
            read_image(name, min_short_side)
            out.write(f"O {index}\n")
        except TLError as error:
            out.write(f"E {index} {' '.join(error.message.split())}\n")
        except Exception as exc:  # noqa: BLE001  (reported to the parent as a defect, with its type)
            out.write(f"B {index} {type(exc).__name__}: {' '.join(str(exc).split())}\n")
    out.flush()
    os._exit(0)  # skip interpreter teardown: nothing to clean up, and it is the slow part


if __name__ == "__main__":
    _child()
