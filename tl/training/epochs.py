"""The epochs' steps of ``tl.training.run.run``: one epoch (train, evaluate, check), end the epoch (checkpoints,
state), whether to stop early, and finish (calibration, curves, summary). The set-up steps are in ``tl.training.steps``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from tl.config import TrainConfig
from tl.errors import TLError
from tl.training.steps import Built, Data, Parts, watched_metric


def save_state(cfg: TrainConfig, accelerator, out: Path, parts: Parts, progress, epoch: int, batches_done: int, step: int, sums) -> None:
    """The full training state of every process, summed epoch sums included (``--resume``)."""
    from tl.training import state
    from tl.training.state import TrainingProgress

    global_sums = accelerator.reduce(sums.clone(), reduction="sum").tolist()
    snapshot = TrainingProgress(epoch, batches_done, step, global_sums, progress.best, dataclasses.asdict(parts.plateau))
    state.save_training_state(accelerator, out, snapshot, cfg.run.keep_states)


def one_epoch(cfg: TrainConfig, accelerator, out: Path, data: Data, built: Built, parts: Parts, progress, epoch: int,
              step: int, stop) -> tuple[dict[str, Any], int]:
    """Train one epoch (from where a resumed state left it) and evaluate: (the epoch's metrics, the step reached)."""
    import torch

    from tl.progress import log
    from tl.training import feature_cache, multilabel, setup, state
    from tl.training.loop import evaluate, train_one_epoch
    from tl.training.strategies import set_train_mode

    ctx, cache, model = parts.ctx, parts.cache, parts.model
    if built.phase_at(epoch) != parts.phase:  # gradual: the backbone joins, with fresh optimizer state of its own
        parts.phase = built.phase_at(epoch)
        log.info(f"epoch {epoch + 1}: unfreezing the backbone ({parts.phase.strategy})")
        model, ctx.optimizer = setup.prepare_phase(accelerator, model, parts.phase, cfg, built.backbone_lr_mult, ctx.optimizer)
        parts.model = model
    set_train_mode(accelerator.unwrap_model(model), parts.phase, freeze_bn=cfg.finetune.freeze_bn)
    parts.train_loader.set_epoch(epoch)
    data.bundle.train.set_epoch(epoch)
    if ctx.augment is not None:
        ctx.augment.set_epoch(epoch)
    skip = progress.batches_done if epoch == progress.epoch else 0
    cache, prep_seconds = feature_cache.ready(cache, stop)  # at first use the backbone sees every image once
    parts.cache = cache
    built.fast["feature_cache"] = cache is not None
    loader = accelerator.skip_first_batches(parts.train_loader, skip) if skip else parts.train_loader
    loader = cache.train_batches(parts.train_loader, skip) if cache else loader
    carried = torch.tensor(progress.epoch_sums, dtype=torch.float64) if skip and accelerator.is_main_process else None

    def after_step(step: int, batches_done: int, sums: torch.Tensor) -> bool:
        # Several processes agree through a collective (a host sync): every STOP_CHECK_EVERY steps only, on a
        # stop signal or a nan loss. The guard is checked before every save: a nan model is never saved.
        agree = accelerator.num_processes == 1 or step % state.STOP_CHECK_EVERY == 0
        stopping = stop.agreed(accelerator, ctx.guard.alarm()) if agree else False
        if stopping or (cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0):
            ctx.guard.check(accelerator, epoch)
            save_state(cfg, accelerator, out, parts, progress, epoch, batches_done, step, sums)
        return stopping

    result = train_one_epoch(model, loader, ctx, step=step, description=f"epoch {epoch + 1}/{cfg.run.epochs}",
                             start_batch=skip, epoch=epoch, sums=carried, after_step=after_step,
                             forward=cache.forward if cache else None, prep_seconds=prep_seconds)
    step = result.step
    ctx.guard.check(accelerator, epoch)
    if result.metrics is None:
        raise stop.stopped(state.state_root(out))
    kept: list = []  # this epoch's val logits: if it is the best, calibration needs no pass of its own
    batches, forward = cache.val_batches() if cache else parts.val_loader, cache.forward if cache else None
    if data.multilabel:  # each class's F1-best threshold on val, kept in the checkpoint with the weights it fits
        val = multilabel.evaluate(model, batches, accelerator, forward=forward)
        parts.meta.update(task="multilabel", thresholds=val.pop("thresholds"))
    else:
        val = evaluate(model, batches, accelerator, forward=forward, keep=kept)
    parts.epoch_val_logits = kept
    metrics = {"epoch": epoch + 1, "step": step, **result.metrics, **val, **built.fast}
    check_epoch(cfg, accelerator, data, parts, metrics, epoch)
    return metrics, step


def check_epoch(cfg: TrainConfig, accelerator, data: Data, parts: Parts, metrics: dict[str, Any], epoch: int) -> None:
    """An epoch that read no image, broke --strict or left the weights non-finite stops the run; EMA and plateau metrics."""
    from tl.progress import log
    from tl.training import multilabel
    from tl.training.loop import evaluate

    for split in ("train", "val"):  # reduced counts: every rank raises together
        if not metrics[f"{split}_count"]:  # else its loss and accuracy would read 0 and a 0 loss would win
            raise TLError(f"not one {split} image could be read in epoch {epoch + 1}: all "
                          f"{metrics[f'{split}_unreadable']} are unreadable (each named in a warning above)",
                          "fix or replace them (`tl check-data` lists them all)")
    unreadable = metrics["train_unreadable"] + metrics["val_unreadable"]
    if cfg.data.strict and unreadable:  # reduced counts: every rank raises together
        raise TLError(f"--strict: {unreadable} unreadable image(s) in epoch {epoch + 1} (each named in a warning above)",
                      "fix or remove them (`tl check-data` lists them all), or drop --strict to leave them out")
    if parts.ema is not None:
        metrics.update((multilabel.evaluate if data.multilabel else evaluate)(parts.ema, parts.val_loader, accelerator, prefix="ema_val"))
        parts.ema_thresholds = metrics.pop("thresholds", None)  # multi-label: the EMA weights' own
    for key in ("val_loss", "ema_val_loss"):  # the last step's update can leave the weights nan (gathered: all ranks)
        if not math.isfinite(metrics.get(key, 0.0)):
            raise TLError(f"{key} is {metrics[key]} after epoch {epoch + 1}: the weights went non-finite; "
                          "training stopped before saving them", parts.ctx.guard.hint)
    if cfg.optim.scheduler == "plateau" and parts.plateau.update(watched_metric(metrics, cfg.run.select_by)):
        log.info(f"{cfg.run.select_by} stopped improving: learning rate x{cfg.optim.plateau_factor} ({parts.plateau.reductions} reduction(s))")
    metrics["lr_reductions"] = parts.plateau.reductions


def end_epoch(cfg: TrainConfig, accelerator, out: Path, built: Built, parts: Parts, progress, metrics: dict[str, Any],
              improved: bool, epoch: int, step: int) -> None:
    """The epoch's line, last/ (best/ when it improved, ema/), tracker metrics and the state to resume from."""
    import torch

    from tl.models import checkpoint
    from tl.training import report, state

    def save_epoch() -> None:  # on a full disk the previous checkpoints stay whole (tl.models.checkpoint)
        report.record_epoch(out, metrics, improved, workers=parts.workers)
        unwrapped = accelerator.unwrap_model(parts.model)
        checkpoint.save_checkpoint(out / "last", unwrapped, {**parts.meta, "epoch": epoch + 1, "metrics": metrics})
        if improved:
            checkpoint.save_checkpoint(out / "best", unwrapped, {**parts.meta, "epoch": epoch + 1, "metrics": metrics})
        if parts.ema is not None:
            checkpoint.save_checkpoint(out / "ema", parts.ema.module, {**parts.meta, "epoch": epoch + 1, "metrics": metrics, "ema": cfg.optim.ema,
                                                                        **({"thresholds": parts.ema_thresholds} if parts.ema_thresholds else {})})

    if improved:
        parts.best_val_logits = parts.epoch_val_logits
    state.main_process_writes(accelerator, save_epoch, out)
    accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=epoch + 1)
    save_state(cfg, accelerator, out, parts, progress, epoch + 1, 0, step, torch.zeros(4, dtype=torch.float64, device=accelerator.device))


def should_stop(cfg: TrainConfig, parts: Parts, metrics: dict[str, Any], best: dict[str, Any]) -> bool:
    """Early stopping (--early-stop-patience) and the plateau schedule's last reduction (--max-reductions)."""
    from tl.progress import log

    if cfg.run.early_stop_patience and metrics["epoch"] - best["epoch"] >= cfg.run.early_stop_patience:
        log.info(f"early stop: no better {cfg.run.select_by} for {cfg.run.early_stop_patience} epochs")
        return True
    if parts.plateau.exhausted:
        log.info(f"stopping after {parts.plateau.reductions} learning-rate reductions (--max-reductions)")
        return True
    return False


def finish(cfg: TrainConfig, accelerator, out: Path, data: Data, parts: Parts, best: dict[str, Any], *, seconds: float) -> None:
    """Calibrate best/ on val, draw the curves, end the trackers, print the summary."""
    from tl.progress import log
    from tl.training import report, state

    def finish_files() -> None:
        import torch

        from tl.inference.calibration import calibrate_checkpoint, calibrate_logits
        from tl.viz.curves import write_curves_if_available

        if best and data.multilabel:
            log.info("calibration: not for multi-label models (each class has its own threshold, fit on val)")
        elif best:  # temperature scaling on val, where it shows it helps: predict-dir's probabilities mean what they say
            if parts.best_val_logits:  # the best epoch's own evaluation: no second pass over val
                logits, labels = (torch.cat(t) for t in zip(*parts.best_val_logits))
                cal = calibrate_logits(out / "best", logits, labels)
            else:  # a run resumed after its best epoch
                cal = calibrate_checkpoint(out / "best", data.bundle.val, batch_size=cfg.data.batch_size, device=accelerator.device)
            kept = f"T = {cal['temperature']:.3f} kept" if cal["kept"] else "T = 1"
            log.info(f"calibration: {kept}: {cal['reason']}")
        write_curves_if_available(out)  # RUN/curves.png with the tl[viz] extra; nothing, silently, without it

    state.main_process_writes(accelerator, finish_files, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    report.print_summary(best, seconds=seconds, out=out, accelerator=accelerator)
