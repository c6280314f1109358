"""``--shard K/N``: the K-th of N contiguous blocks of the file list, and the record that keeps a shard honest.

Blocks are contiguous (shard K reads neighbouring files, which a file system caches well) and cover the list
exactly once: shard K is files [K*n//N, (K+1)*n//N). Each shard writes its own --out, and beside it
``OUT.shard.json``: its K/N, its block (first, end, the digest of its names in order), the digest of the whole
list, and whether it finished. ``--resume`` refuses another --shard or a block whose files changed;
``tl merge-predictions`` reads the records to put the shards in order and to name any that is missing,
repeated or unfinished.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from tl.errors import TLError

SHARD_HINT = "--shard K/N with 0 <= K < N (K is 0-based), e.g. --shard 0/4 ... --shard 3/4; or --shard auto in a SLURM array job"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def block(self, total: int) -> tuple[int, int]:
        return self.index * total // self.count, (self.index + 1) * total // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """``K/N`` (0-based K) or ``auto``: K and N of this task of a SLURM array job
    (K = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, N = SLURM_ARRAY_TASK_COUNT)."""
    if text is None:
        return None
    text = text.strip()
    if text == "auto":
        return _from_slurm(environ)
    found = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
    if not found:
        raise TLError(f"--shard: {text!r} is not K/N", SHARD_HINT)
    index, count = int(found[1]), int(found[2])
    if count < 1:
        raise TLError(f"--shard {text}: N must be at least 1", SHARD_HINT)
    if index >= count:
        raise TLError(f"--shard {text}: K must be below N (K is 0-based: 0..{count - 1})", SHARD_HINT)
    return Shard(index, count)


def _from_slurm(environ: Mapping[str, str]) -> Shard:
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    if not all(environ.get(name) for name in names):
        raise TLError("--shard auto: not in a SLURM array job (SLURM_ARRAY_TASK_ID/_MIN/_COUNT are not set)",
                      "submit with sbatch --array=0-N-1, or give the shard yourself: --shard K/N")
    try:
        task, first, count = (int(environ[name]) for name in names)
        step = int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
    except ValueError as exc:
        raise TLError(f"--shard auto: SLURM's array variables are not numbers ({exc})", "give the shard yourself: --shard K/N") from exc
    index, off_step = divmod(task - first, max(step, 1))
    if off_step or not 0 <= index < count:
        raise TLError(f"--shard auto: task {task} of an array from {first} by {step} with {count} tasks is not one of its tasks",
                      "use a plain array (sbatch --array=0-N-1), or give the shard yourself: --shard K/N")
    return Shard(index, count)


@dataclass
class ShardRecord:
    shard: list[int]  # [K, N]
    block: list[int]  # [first file, end]
    block_digest: str
    list_files: int
    list_digest: str
    complete: bool = False

    @property
    def label(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}"


def record_path(out: Path) -> Path:
    return out.with_name(out.name + ".shard.json")


def read_record(out: Path) -> ShardRecord | None:
    path = record_path(out)
    if not path.exists():
        return None
    try:
        return ShardRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise TLError(f"{path} is not a shard record ({exc})", "it is written by tl predict-dir --shard; run the shard again with --overwrite") from exc


def write_record(out: Path, record: ShardRecord) -> None:
    path = record_path(out)
    partial = path.with_name(path.name + ".new")
    partial.write_text(json.dumps(asdict(record)) + "\n")
    os.replace(partial, path)  # a kill leaves the old record or the new one, never half of one


def new_record(shard: Shard, files) -> ShardRecord:
    """The record of ``shard`` over ``files`` (a ``FileList``), not finished yet."""
    start, stop = shard.block(len(files))
    return ShardRecord([shard.index, shard.count], [start, stop], files.digest(start, stop), len(files), files.digest())


def check_resumed_shard(out: Path, started: bool, shard: Shard | None, record: ShardRecord | None) -> None:
    """Refuse to continue ``out`` (``started``: it has rows) as another shard than the one it was started as, or as
    the same one over a block of files that is not the same any more (``record`` is this run's, for the files now)."""
    if not started:
        return
    previous = read_record(out)
    if previous is None and shard is not None:
        raise TLError(f"--resume: {out} was not started with --shard", "resume it without --shard, or choose a new --out")
    if previous is None:
        return
    if shard is None:
        raise TLError(f"--resume: {out} is shard {previous.label}", f"resume it with --shard {previous.label}")
    if previous.shard != record.shard:
        raise TLError(f"--resume: {out} is shard {previous.label}, not {shard}", f"resume it with --shard {previous.label}, or choose another --out")
    if previous.block_digest != record.block_digest:
        raise TLError(f"--resume: the files of shard {shard} changed since {out} was started "
                      f"({previous.block[1] - previous.block[0]} files then, {record.block[1] - record.block[0]} now)",
                      "predict the same files as before (the same folder or --files list), or start every shard again with --overwrite")
