"""Resumable training state: where it lives and how it is written safely (the signals that ask for it: tl.runtime).

``accelerator.save_state`` writes model, optimizer and every process's RNG states; ``TrainingProgress``
(registered for checkpointing) adds where in the run we are. Each state is written to a hidden temporary
folder and renamed into ``OUT/state/step-NNNNNNNN`` only when complete, so a crash or ``kill -9`` mid-save
leaves the previous state whole; ``--resume auto`` ignores anything that is not complete.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tl.errors import TLError
from tl.models.files import PROGRESS_FILE

log = logging.getLogger("tl")

STATE_DIR = "state"
_STATE_NAME = re.compile(r"^step-(\d{8})$")
STOP_CHECK_EVERY = 10  # steps between the all-reduces by which several processes agree to stop (SLURM warns minutes ahead)


@dataclass
class TrainingProgress:
    """Where the run is. Saved beside accelerate's files; restored before training continues."""

    epoch: int = 0  # the epoch in progress (0-based)
    batches_done: int = 0  # batches of that epoch already trained
    step: int = 0  # optimizer steps so far
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # this process's running sums
    best: dict[str, Any] = field(default_factory=dict)  # metrics of the best epoch so far
    plateau: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"progress": json.dumps(asdict(self))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in json.loads(state["progress"]).items():
            setattr(self, key, value)


def state_root(out: Path) -> Path:
    return out / STATE_DIR


def complete_states(out: Path) -> list[Path]:
    """Complete states in ``out``, oldest first (temporary folders of interrupted saves are ignored)."""
    root = state_root(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STATE_NAME.match(p.name))


def read_progress(path: Path) -> TrainingProgress | None:
    try:
        return TrainingProgress(**json.loads((path / PROGRESS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process: with several, a collective (every process calls it), so all of them
    take the same branch and none is left waiting for the others."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item() > 0)


def main_process_writes(accelerator, write: Callable[[], Any], out: Path) -> None:
    """Run ``write`` on the main process. A failed write (a full disk, a read-only ``--out``) becomes one TLError
    naming the file, and every process raises it together (with several, this is a collective): no traceback, no hang."""
    from tl.models.checkpoint import write_error

    failure: TLError | None = None
    if accelerator.is_main_process:
        try:
            write()
        except TLError as error:  # tl.models.checkpoint's own, for a checkpoint that could not be written
            failure = error
        except OSError as error:  # metrics.jsonl, config.json, curves.png
            failure = write_error(Path(error.filename or out), error)
    if any_process(accelerator, failure is not None):
        raise failure or TLError(f"the main process could not write to {out}", "its error is printed above")


def save_training_state(accelerator, out: Path, progress: TrainingProgress, keep: int) -> Path:
    """Every process calls this; the main process renames the finished folder into place and prunes old ones.

    ``progress.epoch_sums`` must already be summed over processes (the main process resumes with them). A failed
    write (a full disk, a read-only ``--out``) on any process removes the half-written folder and raises the same
    TLError on every process; the previous state stays as it was.
    """
    from tl.models.checkpoint import WRITE_ERRORS, write_error

    root = state_root(out)
    final = root / f"step-{progress.step:08d}"
    tmp = root / f".tmp-step-{progress.step:08d}"
    failure: TLError | None = None

    def make_room() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)

    def finish() -> None:
        (tmp / PROGRESS_FILE).write_text(json.dumps(asdict(progress)))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def on_main(stage):  # the folders are the main process's; save_state writes every process's share
        return stage if accelerator.is_main_process else lambda: None

    # Each stage is followed by a collective, which is also the barrier the next stage needs.
    for stage in (on_main(make_room), lambda: accelerator.save_state(output_dir=str(tmp), safe_serialization=True),
                  on_main(finish)):
        try:
            stage()
        except WRITE_ERRORS as error:
            failure = write_error(final, error)  # before the clean-up frees the space
        if any_process(accelerator, failure is not None):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise failure or TLError(f"could not write {final} on another process", "its error is printed above")
    if accelerator.is_main_process:
        for old in complete_states(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str | None, out: Path) -> list[Path]:
    """Candidate states to resume from, best first: ``auto`` gives every complete state newest first."""
    if not resume:
        return []
    if resume == "auto":
        return list(reversed(complete_states(out)))
    path = Path(resume)
    if not path.is_dir():
        raise TLError(f"--resume: no state folder at {path}", f"use --resume auto, or a folder under {state_root(out)}")
    return [path]


def load_training_state(accelerator, candidates: list[Path]) -> tuple[Path, TrainingProgress] | None:
    """Load the first candidate that loads; a broken one is reported and the next (older) one is tried."""
    for path in candidates:
        progress = read_progress(path)
        try:
            if progress is None:
                raise ValueError(f"{PROGRESS_FILE} is missing or unreadable")
            accelerator.load_state(str(path))
            return path, progress
        except Exception as exc:  # a truncated file raises from safetensors, torch or pickle: all mean "broken"
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            log.warning(f"resume: state {path} cannot be loaded ({reason}); trying an older one")
    if candidates:
        raise TLError(f"no state under {candidates[0].parent} could be loaded", "start afresh with another --out")
    return None


def recorded_precision(out: Path, requested: str | None) -> str | None:
    """The precision to resume ``out`` with: the one it recorded, unless another than the default was asked for.

    Runs from before ``--mixed-precision auto`` recorded None (accelerate's choice); resuming one with the new
    default would change precision mid-run, and on GPUs without bf16 look for a gradient-scaler state the run
    never saved."""
    if requested != "auto":
        return requested
    try:
        saved = json.loads((out / "config.json").read_text())["config"]["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return requested
    return saved.get("mixed_precision", requested)


def check_same_run(out: Path, cfg_dict: dict[str, Any], class_names: list[str]) -> None:
    """Refuse to resume a run with another architecture, head, class list or dataset: say what differs."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        raise TLError(f"--resume: {out} has a state but no readable config.json", "resume into the run's own --out folder")
    differences = []
    for section, keys in (("model", ("arch", "head", "head_hidden", "head_norm", "cut_at")), ("data", ("dataset", "data_dir")),
                          ("finetune", ("strategy",))):
        for key in keys:
            before, now = saved["config"][section].get(key), cfg_dict[section].get(key)
            if key == "dataset":  # hf:prepared and hf:/abs/prepared are the same folder (an inferred one is absolute)
                before, now = _same_folder(before), _same_folder(now)
            if before != now:
                differences.append(f"{key} {before!r} -> {now!r}")
    if saved.get("class_names") != class_names:
        differences.append(f"classes {saved.get('class_names')} -> {class_names}")
    if differences:
        raise TLError(f"--resume: this is not the run in {out}: {'; '.join(differences)}",
                      "resume with the run's own flags (its config.json), or choose another --out")


def _same_folder(dataset: Any) -> Any:
    """``hf:<local folder>`` with the folder resolved, so a relative and an absolute spelling compare equal."""
    if isinstance(dataset, str) and dataset.startswith("hf:") and Path(dataset[3:]).is_dir():
        return f"hf:{Path(dataset[3:]).resolve()}"
    return dataset
