"""``tl train``: fine-tune a classifier. ``run(cfg)`` is the recipe; ``command(...)`` is its CLI signature.

The same function serves ``tl train``, ``python -m tl.train`` and ``accelerate launch -m tl.train``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tl.config import TrainConfig
from tl.errors import TLError


def run(cfg: TrainConfig, *, expect_fingerprint: str | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the best epoch's metrics. Heavy imports live here, not at module level."""
    import torch
    from accelerate.utils import set_seed

    from tl import checkpoint, distributed, report
    from tl.datasets import build_datasets
    from tl.engine import TrainContext, evaluate, train_one_epoch
    from tl.finetune import phase_for_epoch, resolve_auto, set_train_mode
    from tl.heads import HeadSpec
    from tl.models import IMAGENET_MEAN, IMAGENET_STD, build_model, check_arch, default_sizes
    from tl.optim import Plateau, backbone_warmup_factor, lr_factor, set_lr
    from tl.progress import log, setup_logging
    from tl.transforms import eval_transform, train_transform

    out = Path(cfg.run.out)
    if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size and not cfg.run.overwrite:
        raise TLError(f"--out: {out} already holds a run", "choose another --out, or pass --overwrite to replace it")
    accelerator = distributed.make_accelerator(cfg)
    setup_logging(accelerator.is_main_process)
    set_seed(cfg.run.seed)

    # Data: preprocessing comes from the architecture's pretrained input size unless given.
    check_arch(cfg.model.arch)
    size, resize = default_sizes(cfg.model.arch)
    image_size = cfg.data.image_size or (cfg.data.synthetic_size if cfg.data.dataset == "synthetic" else None)
    if image_size:  # the synthetic set is small on purpose: upscaling it to 224 px would only cost time
        size, resize = image_size, round(image_size / 0.875)
    mean, std = cfg.data.mean or IMAGENET_MEAN, cfg.data.std or IMAGENET_STD
    tf = dict(size=size, resize=resize, mean=mean, std=std)
    with accelerator.main_process_first():
        data = build_datasets(cfg.data, seed=cfg.run.seed, eval_tf=eval_transform(**tf),
                              train_tf=train_transform(**tf, augment=cfg.data.augment, crop_scale_min=cfg.data.crop_scale_min))
    if expect_fingerprint and expect_fingerprint != data.fingerprint:
        log.warning(f"warning: the data differ from the original run ({data.fingerprint} != {expect_fingerprint})")

    # Model and strategy.
    head_spec = HeadSpec(cfg.model.head, cfg.model.head_hidden, cfg.model.head_norm, cfg.model.dropout)
    model, info = build_model(cfg.model.arch, len(data.class_names), weights=cfg.model.weights, head=head_spec,
                              cut_at=cfg.model.cut_at, image_size=size)
    pretrained = cfg.model.weights.lower() != "none"
    strategy, reason = cfg.finetune.strategy, ""
    if strategy == "auto":
        strategy, reason = resolve_auto(len(data.train) / len(data.class_names), pretrained)
    backbone_lr_mult = cfg.finetune.backbone_lr_mult if pretrained else 1.0
    phase_at = lambda epoch: phase_for_epoch(strategy, epoch, freeze_depth=cfg.finetune.freeze_depth,
                                             unfreeze_epoch=cfg.finetune.unfreeze_epoch)

    train_loader, val_loader = accelerator.prepare(*distributed.loaders(data, cfg, accelerator))
    steps_per_epoch = math.ceil(len(train_loader) / cfg.optim.grad_accum)  # per process, after sharding
    phase = phase_at(0)
    model, optimizer = distributed.prepare_phase(accelerator, model, phase, cfg, backbone_lr_mult)
    report.print_plan(model=accelerator.unwrap_model(model), info=info, strategy=strategy, reason=reason, data=data,
                       accelerator=accelerator, backbone_lr_mult=backbone_lr_mult)

    ema = None
    if cfg.optim.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema), use_buffers=True)
    o = cfg.optim
    schedule = dict(kind=o.scheduler, total_steps=steps_per_epoch * cfg.run.epochs,
                    warmup_steps=round(o.warmup_epochs * steps_per_epoch), steps_per_epoch=steps_per_epoch,
                    step_size=o.step_size, gamma=o.gamma)
    backbone_warmup_steps = round(cfg.finetune.backbone_warmup_epochs * steps_per_epoch) if pretrained else 0
    plateau = Plateau(o.plateau_factor, o.plateau_patience, o.max_reductions)
    ctx = TrainContext(
        accelerator=accelerator, optimizer=optimizer,
        loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing, reduction="none"),
        apply_lr=lambda optimizer, step: set_lr(optimizer, lr_factor(step, **schedule) * plateau.multiplier,
                                                backbone_warmup_factor(step, backbone_warmup_steps)),
        clip_grad=o.clip_grad, aux_loss_weight=cfg.model.aux_loss_weight, ema=ema, log_every=cfg.run.log_every,
    )

    meta = report.checkpoint_meta(cfg, info, data.class_names, strategy, mean, std, resize)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        report.write_config(out / "config.json", cfg, data, accelerator, strategy=strategy,
                             backbone_lr_mult=backbone_lr_mult, image_size=size)
        (out / "metrics.jsonl").write_text("")
    distributed.start_trackers(accelerator, cfg)

    best: dict[str, Any] = {}
    step, start = 0, time.perf_counter()
    for epoch in range(cfg.run.epochs):
        if phase_at(epoch) != phase:  # gradual: the backbone joins, with fresh optimizer state of its own
            phase = phase_at(epoch)
            log.info(f"epoch {epoch + 1}: unfreezing the backbone ({phase.strategy})")
            model, ctx.optimizer = distributed.prepare_phase(accelerator, model, phase, cfg, backbone_lr_mult, ctx.optimizer)
        set_train_mode(accelerator.unwrap_model(model), phase, freeze_bn=cfg.finetune.freeze_bn)
        metrics, step = train_one_epoch(model, train_loader, ctx, step=step, description=f"epoch {epoch + 1}/{cfg.run.epochs}")
        metrics = {"epoch": epoch + 1, "step": step, **metrics, **evaluate(model, val_loader, accelerator)}
        if ema is not None:
            metrics.update(evaluate(ema, val_loader, accelerator, prefix="ema_val"))
        if o.scheduler == "plateau" and plateau.update(metrics["val_top1"]):
            log.info(f"val top-1 stopped improving: learning rate x{o.plateau_factor} ({plateau.reductions} reduction(s))")
        metrics["lr_reductions"] = plateau.reductions
        improved = not best or (metrics["val_top1"], -metrics["val_loss"]) > (best["val_top1"], -best["val_loss"])
        if improved:
            best = metrics
        if accelerator.is_main_process:
            report.record_epoch(out, metrics, improved)
            unwrapped = accelerator.unwrap_model(model)
            checkpoint.save_checkpoint(out / "last", unwrapped, {**meta, "epoch": epoch + 1, "metrics": metrics})
            if improved:
                checkpoint.save_checkpoint(out / "best", unwrapped, {**meta, "epoch": epoch + 1, "metrics": metrics})
            if ema is not None:
                checkpoint.save_checkpoint(out / "ema", ema.module, {**meta, "epoch": epoch + 1, "metrics": metrics, "ema": cfg.optim.ema})
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=epoch + 1)
        accelerator.wait_for_everyone()
        if cfg.run.early_stop_patience and metrics["epoch"] - best["epoch"] >= cfg.run.early_stop_patience:
            log.info(f"early stop: no better val top-1 for {cfg.run.early_stop_patience} epochs")
            break
        if plateau.exhausted:
            log.info(f"stopping after {plateau.reductions} learning-rate reductions (--max-reductions)")
            break

    accelerator.end_training()
    report.print_summary(best, seconds=time.perf_counter() - start, out=out, accelerator=accelerator)
    return best


# ------------------------------------------------------------------------------------------------------
# CLI signature (kept free of heavy imports so `tl --help` is instant)
# ------------------------------------------------------------------------------------------------------
from tl.train_cli import command  # noqa: E402,F401  (one function: `tl train`, `python -m tl.train`, accelerate)


def main() -> None:
    from tl.cli import run_single

    run_single(command)


if __name__ == "__main__":
    main()
