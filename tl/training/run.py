"""``tl train``: fine-tune a classifier. ``run(cfg)`` is the recipe; ``command(...)`` is its CLI signature.

The same function serves ``tl train``, ``python -m tl.train`` and ``accelerate launch -m tl.train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

from tl.config import TrainConfig
from tl.errors import TLError


def run(cfg: TrainConfig, *, expect_fingerprint: str | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the best epoch's metrics. Heavy imports live here, not at module level."""
    import torch
    from accelerate.utils import set_seed

    from tl import runtime
    from tl.data import gpu_augment, image_cache, splits
    from tl.data.datasets import EpochSeeded, build_datasets
    from tl.data.splits import MANIFEST
    from tl.data.transforms import DeviceNormalize, batch_mix, eval_transform, train_pixels, train_transform
    from tl.models import checkpoint, fastpaths
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD, build_model, input_sizes
    from tl.models.heads import HeadSpec
    from tl.progress import log, setup_logging
    from tl.runtime import StopRequest
    from tl.training import feature_cache, multilabel, report, setup, state
    from tl.training.loop import LossGuard, TrainContext, evaluate, train_one_epoch
    from tl.training.optim import Plateau, backbone_warmup_factor, lr_factor, set_lr
    from tl.training.state import TrainingProgress
    from tl.training.strategies import phase_for_epoch, resolve_auto, set_train_mode

    out = Path(cfg.run.out)
    candidates = state.resolve_resume(cfg.run.resume, out)
    finished_run = (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0
    if finished_run and not candidates and not cfg.run.overwrite:
        raise TLError(f"--out: {out} already holds a run",
                      "continue it with --resume auto, choose another --out, or pass --overwrite to replace it")
    if candidates:  # a resumed run keeps the precision it started with
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, mixed_precision=state.recorded_precision(out, cfg.run.mixed_precision)))
    accelerator = setup.make_accelerator(cfg)
    setup_logging(accelerator.is_main_process)
    set_seed(cfg.run.seed)

    # Data: preprocessing comes from the architecture's pretrained input size unless given.
    size, resize = input_sizes(cfg.model.arch, image_size=cfg.data.image_size, dataset=cfg.data.dataset,
                               synthetic_size=cfg.data.synthetic_size, cut_at=cfg.model.cut_at)
    mean, std = cfg.data.mean or IMAGENET_MEAN, cfg.data.std or IMAGENET_STD
    tf = dict(size=size, resize=resize, mean=mean, std=std)
    on_device = gpu_augment.wanted(cfg.data, accelerator.device)  # CIFAR-10 on a GPU: crops and flips per batch there
    # Workers hand out augmented uint8 crops; the batch is normalised where the model runs (a quarter of the bytes).
    pixels_only = not on_device and cfg.data.augment != "none"
    train_tf = (gpu_augment.uint8_images() if on_device else
                train_pixels(size=size, augment=cfg.data.augment, crop_scale_min=cfg.data.crop_scale_min) if pixels_only else
                train_transform(**tf, augment="none"))
    with accelerator.main_process_first():
        # A replaced run's split (--overwrite), or one an attempt left that died before its first epoch: its files may
        # have changed since. The new listing is written beside it and takes its place when the run starts writing
        # (start_files), so a replacement that fails first (a wrong --data-dir, no weights offline) leaves the old run
        # whole. A split made for this run (tl split --out, tl reproduce) is pinned and kept.
        manifest = out / MANIFEST
        replacing = not candidates and manifest.is_file() and (finished_run or not splits.is_pinned(manifest))
        listing = manifest.with_name(MANIFEST + ".new") if replacing else manifest
        stale = manifest.with_name(MANIFEST + ".new")  # a replacement that failed before
        if accelerator.is_main_process and stale.exists():
            with contextlib.suppress(OSError):  # a read-only --out says so once, where the run first writes
                stale.unlink()
        data = build_datasets(cfg.data, seed=cfg.run.seed, eval_tf=eval_transform(**tf), manifest=listing, train_tf=train_tf)
    cached_bytes = image_cache.preload([data.train, data.val],  # each local process decodes its own copy, with its share of the CPUs
                                       image_cache.parse_budget(cfg.data.cache_images, runtime.local_processes(accelerator)),
                                       threads=max(1, runtime.num_workers(-1, accelerator.num_processes)))
    data.train = EpochSeeded(data.train, cfg.run.seed)
    multi = multilabel.is_multilabel(cfg.data.task, data)  # one sigmoid per class (tl.training.multilabel)
    if multi:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, select_by=multilabel.select_by(cfg.run.select_by)))
    if candidates:
        state.check_same_run(out, cfg.to_dict(), data.class_names)
    if expect_fingerprint and expect_fingerprint != data.fingerprint:
        log.warning(f"warning: the data differ from the original run ({data.fingerprint} != {expect_fingerprint})")

    # Model and strategy.
    head_spec = HeadSpec(cfg.model.head, cfg.model.head_hidden, cfg.model.head_norm, cfg.model.dropout)
    model, info = build_model(cfg.model.arch, len(data.class_names), weights=cfg.model.weights, head=head_spec,
                              cut_at=cfg.model.cut_at, image_size=size, trust_pickle=cfg.model.trust_pickle)
    fast = dict(channels_last=fastpaths.apply_channels_last(model, cfg.run.channels_last), device_augment=on_device,
                image_cache=cached_bytes > 0,
                compiled=cfg.run.compile and fastpaths.compile_model(model, accelerator.device))  # same results, sooner
    pretrained = cfg.model.weights.lower() != "none"
    if not pretrained and cfg.data.dataset != "synthetic":
        log.warning(f"training {cfg.model.arch} from random weights: transfer learning starts from pretrained ones "
                    "(--weights DEFAULT for ImageNet's, --weights PATH for a local file)")
    strategy, reason = cfg.finetune.strategy, ""
    if strategy == "auto":
        strategy, reason = resolve_auto(len(data.train) / len(data.class_names), pretrained)
    backbone_lr_mult = cfg.finetune.backbone_lr_mult if pretrained else 1.0
    phase_at = lambda epoch: phase_for_epoch(strategy, epoch, freeze_depth=cfg.finetune.freeze_depth,
                                             unfreeze_epoch=cfg.finetune.unfreeze_epoch)

    train_loader, val_loader = accelerator.prepare(*setup.loaders(data, cfg, accelerator))
    steps_per_epoch = math.ceil(len(train_loader) / cfg.optim.grad_accum)  # per process, after sharding
    first_epoch = (state.read_progress(candidates[0]) or TrainingProgress()).epoch if candidates else 0
    phase = phase_at(first_epoch)  # gradual: a resumed run may already be past the unfreeze
    model, optimizer = setup.prepare_phase(accelerator, model, phase, cfg, backbone_lr_mult)
    workers = runtime.num_workers(cfg.data.num_workers, accelerator.num_processes)
    cache = feature_cache.plan(cfg, strategy, model, accelerator, {"train": data.train, "val": data.val}, workers)
    fast.update(precision=accelerator.mixed_precision, feature_cache=cache is not None)
    report.print_plan(model=accelerator.unwrap_model(model), info=info, strategy=strategy, reason=reason, data=data,
                       accelerator=accelerator, backbone_lr_mult=backbone_lr_mult, fast=fast)

    ema = None
    if cfg.optim.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema), use_buffers=True)
        accelerator.register_for_checkpointing(ema)
    o = cfg.optim
    schedule = dict(kind=o.scheduler, total_steps=steps_per_epoch * cfg.run.epochs,
                    warmup_steps=round(o.warmup_epochs * steps_per_epoch), steps_per_epoch=steps_per_epoch,
                    step_size=o.step_size, gamma=o.gamma)
    backbone_warmup_steps = round(cfg.finetune.backbone_warmup_epochs * steps_per_epoch) if pretrained else 0
    plateau = Plateau(o.plateau_factor, o.plateau_patience, o.max_reductions, watching=cfg.run.select_by)
    if multi and o.balance == "sampler":
        raise TLError("--balance sampler draws images by their class: a multi-label image has several",
                      "use --balance loss (a per-class weight on the positives) for multi-label data")
    class_weight = (multilabel.positive_weights if multi else setup.class_weights)(data.train.targets, len(data.class_names))  # --balance
    if o.balance != "none":
        log.info(f"--balance {o.balance}: {'positive' if multi else 'class'} weights " + ", ".join(f"{n} {w:.2f}" for n, w in zip(data.class_names, class_weight)))
    ctx = TrainContext(
        accelerator=accelerator, optimizer=optimizer,
        loss_fn=multilabel.MultiLabelLoss(torch.tensor(class_weight, device=accelerator.device) if o.balance == "loss" else None,
                                          o.label_smoothing)
        if multi else torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing, reduction="none",
                                                weight=torch.tensor(class_weight, device=accelerator.device) if o.balance == "loss" else None),
        apply_lr=lambda optimizer, step: set_lr(optimizer, lr_factor(step, **schedule) * plateau.multiplier,
                                                backbone_warmup_factor(step, backbone_warmup_steps)),
        clip_grad=o.clip_grad, aux_loss_weight=cfg.model.aux_loss_weight, ema=ema, log_every=cfg.run.log_every,
        batch_mix=multilabel.batch_mix(mixup=cfg.data.mixup, cutmix=cfg.data.cutmix) if multi else
        batch_mix(num_classes=len(data.class_names), mixup=cfg.data.mixup, cutmix=cfg.data.cutmix),
        hits=multilabel.exact_hits if multi else None,
        augment=gpu_augment.DeviceAugment(size=size, mean=mean, std=std, seed=cfg.run.seed, scale=(cfg.data.crop_scale_min, 1.0))
        if on_device else DeviceNormalize(mean, std, channels_last=fast["channels_last"]) if pixels_only else None,
        guard=LossGuard(accelerator.device, nonfinite_hint(cfg, accelerator.mixed_precision)),
    )

    meta = report.checkpoint_meta(cfg, info, data.class_names, strategy, mean, std, resize)
    evaluate_split = multilabel.evaluate if multi else evaluate
    progress = TrainingProgress()
    resumed = state.load_training_state(accelerator, candidates) if candidates else None
    if resumed:
        resumed_from, progress = resumed
        plateau = Plateau(**progress.plateau) if progress.plateau else plateau
        plateau.watch(cfg.run.select_by, watched_metric(progress.best, cfg.run.select_by) if progress.best else -math.inf)
        log.info(f"resumed from {resumed_from}: epoch {progress.epoch + 1}, batch {progress.batches_done}, step {progress.step}")

    def start_files() -> None:
        out.mkdir(parents=True, exist_ok=True)
        if resumed:  # keep the lines of finished epochs only: a crash after a line but before its state repeats the epoch
            report.truncate_metrics(out / "metrics.jsonl", progress.epoch)
        else:
            shutil.rmtree(state.state_root(out), ignore_errors=True)  # states of a replaced run must not be resumed
            if replacing:  # a dataset that keeps no listing (synthetic) leaves none of the old run either
                listing.replace(manifest) if listing.is_file() else manifest.unlink(missing_ok=True)
                if not finished_run:
                    log.info(f"data: {manifest} of an earlier attempt that finished no epoch is replaced by a new listing")
            report.write_config(out / "config.json", cfg, data, accelerator, strategy=strategy,
                                 backbone_lr_mult=backbone_lr_mult, image_size=size, **fast)
            (out / "metrics.jsonl").write_text("")

    state.main_process_writes(accelerator, start_files, out)  # a read-only --out: one line on every process
    setup.start_trackers(accelerator, cfg)

    def save_state(epoch: int, batches_done: int, step: int, sums: torch.Tensor) -> None:
        global_sums = accelerator.reduce(sums.clone(), reduction="sum").tolist()
        snapshot = TrainingProgress(epoch, batches_done, step, global_sums, progress.best, dataclasses.asdict(plateau))
        state.save_training_state(accelerator, out, snapshot, cfg.run.keep_states)

    best: dict[str, Any] = progress.best
    step, start, stop = progress.step, time.perf_counter(), StopRequest().install()
    try:
        for epoch in range(progress.epoch, cfg.run.epochs):
            if phase_at(epoch) != phase:  # gradual: the backbone joins, with fresh optimizer state of its own
                phase = phase_at(epoch)
                log.info(f"epoch {epoch + 1}: unfreezing the backbone ({phase.strategy})")
                model, ctx.optimizer = setup.prepare_phase(accelerator, model, phase, cfg, backbone_lr_mult, ctx.optimizer)
            set_train_mode(accelerator.unwrap_model(model), phase, freeze_bn=cfg.finetune.freeze_bn)
            train_loader.set_epoch(epoch)
            data.train.set_epoch(epoch)
            if ctx.augment is not None:
                ctx.augment.set_epoch(epoch)
            skip = progress.batches_done if epoch == progress.epoch else 0
            cache, prep_seconds = feature_cache.ready(cache, stop)  # at first use the backbone sees every image once
            fast["feature_cache"] = cache is not None
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            loader = cache.train_batches(train_loader, skip) if cache else loader
            carried = torch.tensor(progress.epoch_sums, dtype=torch.float64) if skip and accelerator.is_main_process else None

            def after_step(step: int, batches_done: int, sums: torch.Tensor) -> bool:
                # Several processes agree through a collective (a host sync): every STOP_CHECK_EVERY steps only, on a
                # stop signal or a nan loss. The guard is checked before every save: a nan model is never saved.
                agree = accelerator.num_processes == 1 or step % state.STOP_CHECK_EVERY == 0
                stopping = stop.agreed(accelerator, ctx.guard.alarm()) if agree else False
                if stopping or (cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0):
                    ctx.guard.check(accelerator, epoch)
                    save_state(epoch, batches_done, step, sums)
                return stopping

            result = train_one_epoch(model, loader, ctx, step=step, description=f"epoch {epoch + 1}/{cfg.run.epochs}",
                                     start_batch=skip, epoch=epoch, sums=carried, after_step=after_step,
                                     forward=cache.forward if cache else None, prep_seconds=prep_seconds)
            step = result.step
            ctx.guard.check(accelerator, epoch)
            if result.metrics is None:
                raise stop.stopped(state.state_root(out))
            val = evaluate_split(model, cache.val_batches() if cache else val_loader, accelerator, forward=cache.forward if cache else None)
            if multi:  # each class's F1-best threshold on val, kept in the checkpoint with the weights it fits
                meta.update(task="multilabel", thresholds=val.pop("thresholds"))
            metrics = {"epoch": epoch + 1, "step": step, **result.metrics, **val, **fast}
            for split in ("train", "val"):  # reduced counts: every rank raises together
                if not metrics[f"{split}_count"]:  # else its loss and accuracy would read 0 and a 0 loss would win
                    raise TLError(f"not one {split} image could be read in epoch {epoch + 1}: all "
                                  f"{metrics[f'{split}_unreadable']} are unreadable (each named in a warning above)",
                                  "fix or replace them (`tl check-data` lists them all)")
            unreadable = metrics["train_unreadable"] + metrics["val_unreadable"]
            if cfg.data.strict and unreadable:  # reduced counts: every rank raises together
                raise TLError(f"--strict: {unreadable} unreadable image(s) in epoch {epoch + 1} (each named in a warning above)",
                              "fix or remove them (`tl check-data` lists them all), or drop --strict to leave them out")
            if ema is not None:
                metrics.update(evaluate_split(ema, val_loader, accelerator, prefix="ema_val"))
                ema_thresholds = metrics.pop("thresholds", None)
            for key in ("val_loss", "ema_val_loss"):  # the last step's update can leave the weights nan (gathered: all ranks)
                if not math.isfinite(metrics.get(key, 0.0)):
                    raise TLError(f"{key} is {metrics[key]} after epoch {epoch + 1}: the weights went non-finite; "
                                  "training stopped before saving them", ctx.guard.hint)
            if o.scheduler == "plateau" and plateau.update(watched_metric(metrics, cfg.run.select_by)):
                log.info(f"{cfg.run.select_by} stopped improving: learning rate x{o.plateau_factor} ({plateau.reductions} reduction(s))")
            metrics["lr_reductions"] = plateau.reductions
            improved = not best or selection_key(metrics, cfg.run.select_by) > selection_key(best, cfg.run.select_by)
            if improved:
                best = progress.best = metrics

            def save_epoch() -> None:  # on a full disk the previous checkpoints stay whole (tl.models.checkpoint)
                report.record_epoch(out, metrics, improved, workers=workers)
                unwrapped = accelerator.unwrap_model(model)
                checkpoint.save_checkpoint(out / "last", unwrapped, {**meta, "epoch": epoch + 1, "metrics": metrics})
                if improved:
                    checkpoint.save_checkpoint(out / "best", unwrapped, {**meta, "epoch": epoch + 1, "metrics": metrics})
                if ema is not None:
                    checkpoint.save_checkpoint(out / "ema", ema.module, {**meta, "epoch": epoch + 1, "metrics": metrics, "ema": cfg.optim.ema,
                                                                         **({"thresholds": ema_thresholds} if multi else {})})

            state.main_process_writes(accelerator, save_epoch, out)
            accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=epoch + 1)
            save_state(epoch + 1, 0, step, torch.zeros(4, dtype=torch.float64, device=accelerator.device))
            if stop.agreed(accelerator):
                raise stop.stopped(state.state_root(out))
            if cfg.run.early_stop_patience and metrics["epoch"] - best["epoch"] >= cfg.run.early_stop_patience:
                log.info(f"early stop: no better {cfg.run.select_by} for {cfg.run.early_stop_patience} epochs")
                break
            if plateau.exhausted:
                log.info(f"stopping after {plateau.reductions} learning-rate reductions (--max-reductions)")
                break
    finally:
        stop.uninstall()

    def finish_files() -> None:
        from tl.inference.calibration import calibrate_checkpoint
        from tl.viz.curves import write_curves_if_available

        if best and multi:
            log.info("calibration: not for multi-label models (each class has its own threshold, fit on val)")
        elif best:  # temperature scaling on val, where it shows it helps: predict-dir's probabilities mean what they say
            cal = calibrate_checkpoint(out / "best", data.val, batch_size=cfg.data.batch_size, device=accelerator.device)
            kept = f"T = {cal['temperature']:.3f} kept" if cal["kept"] else "T = 1"
            log.info(f"calibration: {kept}: {cal['reason']}")
        write_curves_if_available(out)  # RUN/curves.png with the tl[viz] extra; nothing, silently, without it

    state.main_process_writes(accelerator, finish_files, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    report.print_summary(best, seconds=time.perf_counter() - start, out=out, accelerator=accelerator)
    return best


def selection_key(metrics: dict[str, Any], select_by: str) -> tuple[float, ...]:
    """Larger is better: the --select-by metric, then val top-1 and val loss to break ties. A best epoch saved
    before balanced accuracy was recorded counts it as 0."""
    top1, loss = metrics["val_top1"], -metrics["val_loss"]
    return {"val_top1": (top1, loss), "val_loss": (loss, top1), "val_map": (metrics.get("val_map", 0.0), loss),
            "val_balanced_accuracy": (metrics.get("val_balanced_accuracy", 0.0), top1, loss)}[select_by]


def watched_metric(metrics: dict[str, Any], select_by: str) -> float:
    """What the plateau schedule watches, larger is better: the --select-by metric (val loss negated), so the rate
    is cut when the metric that picks best/ stalls, not val top-1 alone."""
    return selection_key(metrics, select_by)[0]


def nonfinite_hint(cfg: TrainConfig, precision: str) -> str:
    """The likely fixes for a nan/inf loss, most likely first."""
    fixes = [f"lower --lr (now {cfg.optim.lr:g})",
             f"lower --clip-grad (now {cfg.optim.clip_grad:g})" if cfg.optim.clip_grad else "add --clip-grad 1.0"]
    if cfg.finetune.backbone_lr_mult > 1 and cfg.model.weights.lower() != "none":  # the backbone's rate is lr x this
        fixes.insert(1, f"lower --backbone-lr-mult (now {cfg.finetune.backbone_lr_mult:g})")
    if precision == "fp16":  # fp16 overflows at 65504: bf16 has float32's range
        fixes.append("use --mixed-precision bf16")
    return ", or ".join(fixes)
