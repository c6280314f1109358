"""``tl.train(...)``: a training run from Python, the one implementation behind ``tl train`` too.

Keywords are ``tl train``'s options with ``_`` (``head_hidden=512``), with the same defaults; ``config=`` reads a
recipe file first. Returns a ``Run`` (its best metrics, checkpoint, metrics per epoch) instead of printing, and
raises ``tl.TLError`` on bad input instead of exiting.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tl.config import TrainConfig
from tl.errors import TLError
from tl.training.options import resolve, to_config


@dataclass
class Run:
    """A finished (or resumed and finished) run: ``best`` is the best epoch's metrics, ``checkpoint`` its folder."""

    out: Path
    best: dict[str, Any]
    config: TrainConfig = field(repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.out / "best"

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per epoch, from ``OUT/metrics.jsonl`` (the last line of an epoch that was run twice wins)."""
        by_epoch: dict[int, dict[str, Any]] = {}
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            raise TLError(f"{path} is gone: the run's metrics cannot be read", "was its folder moved or deleted?")
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            by_epoch[record.get("epoch", len(by_epoch))] = record
        return [by_epoch[e] for e in sorted(by_epoch)]


def train(*, config: str | Path | None = None, progress: bool = True, num_processes: int = 1, **options: Any) -> Run:
    """Fine-tune as ``tl train`` does. ``options``: its flags as keywords; ``config``: a YAML/JSON recipe they override.

    ``num_processes`` > 1 starts that many processes through accelerate's ``notebook_launcher`` (one per GPU).
    """
    from tl.progress import quiet

    with quiet(not progress):  # resolving says which dataset a data_dir was read as: a line of the plan
        cfg = to_config(resolve(options, Path(config) if config else None))
    return train_config(cfg, progress=progress, num_processes=num_processes)


def train_config(cfg: TrainConfig, *, progress: bool = True, num_processes: int = 1) -> Run:
    from tl.progress import quiet

    if num_processes > 1:
        _launch(cfg, progress, num_processes)
        best = _best_of(Path(cfg.run.out))
    else:
        from tl.training.run import run

        with quiet(not progress), _random_state_kept():
            best = run(cfg)
    return Run(out=Path(cfg.run.out).absolute(), best=best, config=cfg)  # still right after os.chdir (%cd)


@contextmanager
def _random_state_kept() -> Iterator[None]:
    """A run seeds Python's, NumPy's and torch's global generators for itself; the caller's streams go on afterwards
    as if it had not run (a notebook's own random draws do not all restart from the run's seed)."""
    import random

    import numpy as np
    import torch

    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _launch(cfg: TrainConfig, progress: bool, num_processes: int) -> None:
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < num_processes:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise TLError(f"num_processes={num_processes} needs {num_processes} GPUs from a notebook; this machine has {found}",
                      "use num_processes=1, or from a terminal: accelerate launch --multi_gpu --num_processes N -m tl.train ...")
    from accelerate import notebook_launcher

    notebook_launcher(_worker, (cfg.to_dict(), progress), num_processes=num_processes)


def _worker(raw: dict[str, Any], progress: bool) -> None:
    from tl.progress import quiet
    from tl.training.run import run

    with quiet(not progress):
        run(TrainConfig.from_dict(raw))


def _best_of(out: Path) -> dict[str, Any]:
    """The best epoch's metrics as the run recorded them (the processes' return values stay in the processes)."""
    meta = out / "best" / "tl.json"
    if not meta.is_file():
        return {}
    return dict(json.loads(meta.read_text()).get("metrics", {}))
