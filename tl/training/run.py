"""``tl train``: fine-tune a classifier. ``run(cfg)`` is the recipe, read top to bottom; each step is a function of
``tl.training.steps`` (set-up) or ``tl.training.epochs``.

The same function serves ``tl train``, ``python -m tl.train`` and ``accelerate launch -m tl.train``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tl.config import TrainConfig
from tl.training.epochs import end_epoch, finish, one_epoch, should_stop
from tl.training.steps import (  # noqa: F401 (re-exported)
    build,
    check_out,
    nonfinite_hint,
    prepare_data,
    prepare_training,
    resume,
    selection_key,
    start,
    start_files,
    watched_metric,
)


def run(cfg: TrainConfig, *, expect_fingerprint: str | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the best epoch's metrics. Heavy imports live in the steps, not at module level."""
    from tl.runtime import StopRequest, return_freed_memory
    from tl.training import state

    out = Path(cfg.run.out)
    cfg, candidates, finished_run = check_out(cfg, out)
    accelerator = start(cfg)
    cfg, data = prepare_data(cfg, accelerator, out, candidates, finished_run, expect_fingerprint)  # and the recipe's choices
    built = build(cfg, accelerator, data)
    parts = prepare_training(cfg, accelerator, data, built, candidates)
    progress, resumed = resume(cfg, accelerator, parts, candidates)
    start_files(cfg, accelerator, out, data, built, progress, resumed, finished_run)

    best: dict[str, Any] = progress.best
    step, start_time, stop = progress.step, time.perf_counter(), StopRequest().install()
    try:
        for epoch in range(progress.epoch, cfg.run.epochs):
            metrics, step = one_epoch(cfg, accelerator, out, data, built, parts, progress, epoch, step, stop)
            improved = not best or selection_key(metrics, cfg.run.select_by) > selection_key(best, cfg.run.select_by)
            if improved:
                best = progress.best = metrics
            end_epoch(cfg, accelerator, out, built, parts, progress, metrics, improved, epoch, step)
            if stop.agreed(accelerator):
                raise stop.stopped(state.state_root(out))
            if should_stop(cfg, parts, metrics, best):
                break
    finally:
        stop.uninstall()
        return_freed_memory()  # the steps' kept heap (a notebook goes on running)
    finish(cfg, accelerator, out, data, parts, best, seconds=time.perf_counter() - start_time)
    return best
