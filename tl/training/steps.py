"""The set-up steps of ``tl.training.run.run``, in the order it calls them: check --out, start, prepare the data,
build the model, prepare training, resume, start the files. The epochs' steps are in ``tl.training.epochs``.

Each takes the config and what the steps before it handed on (``Data``, ``Built``, ``Parts``), so the recipe in
``run`` reads top to bottom and each detail is one call away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from tl.config import TrainConfig
from tl.errors import TLError


def check_out(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, list[Path], bool]:
    """(cfg, the states to resume from, whether --out holds a finished run): a finished run is replaced only when asked."""
    from tl.training import recipe, state

    candidates = state.resolve_resume(cfg.run.resume, out)
    finished_run = (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0
    if finished_run and not candidates and not cfg.run.overwrite:
        raise TLError(f"--out: {out} already holds a run",
                      "continue it with --resume auto, choose another --out, or pass --overwrite to replace it")
    if candidates:  # a resumed run keeps the precision it started with, and what its recipe chose
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, mixed_precision=state.recorded_precision(out, cfg.run.mixed_precision)))
        if (out / "config.json").is_file():
            cfg = recipe.recorded(cfg, json.loads((out / "config.json").read_text()))
    return cfg, candidates, finished_run


def start(cfg: TrainConfig):
    """The run's accelerator, logging on the main process, and every generator seeded."""
    from accelerate.utils import set_seed

    from tl.progress import setup_logging
    from tl.training import setup

    accelerator = setup.make_accelerator(cfg)
    setup_logging(accelerator.is_main_process)
    set_seed(cfg.run.seed)
    return accelerator


@dataclasses.dataclass
class Data:
    """What ``prepare_data`` hands on: the datasets, their preprocessing, and where the split listing goes."""

    bundle: Any  # tl.data.datasets.DatasetBundle
    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    on_device: bool  # crops and flips per batch on the device
    pixels_only: bool  # workers hand out uint8 crops; the batch is normalised where the model runs
    cached_bytes: int
    manifest: Path
    listing: Path
    replacing: bool
    recipe: dict[str, Any]  # what the default recipe chose: options no flag set (tl.training.recipe)
    multilabel: bool = False  # one sigmoid per class (tl.training.multilabel)


def prepare_data(cfg: TrainConfig, accelerator, out: Path, candidates: list[Path], finished_run: bool,
                 expect_fingerprint: str | None) -> tuple[TrainConfig, Data]:
    """Datasets with their transforms, decoded into memory when they fit; a resumed run must read the same data. The
    default recipe sees the data here and fills the options no flag set: the returned config holds its choices."""
    from tl import runtime
    from tl.data import gpu_augment, image_cache, splits
    from tl.data.datasets import EpochSeeded, build_datasets
    from tl.data.image_files import photo_long_sides
    from tl.data.splits import MANIFEST
    from tl.data.transforms import eval_transform, train_pixels, train_transform
    from tl.models.architectures import IMAGENET_MEAN, IMAGENET_STD, input_sizes, trains_at_size
    from tl.progress import log
    from tl.training import multilabel, recipe, setup, state

    fits = lambda arch, side: side is not None and trains_at_size(arch, side)

    # Data: preprocessing comes from the architecture's pretrained input size unless given.
    size, resize = input_sizes(cfg.model.arch, image_size=cfg.data.image_size, dataset=cfg.data.dataset,
                               synthetic_size=cfg.data.synthetic_size, cut_at=cfg.model.cut_at)
    mean, std = cfg.data.mean or IMAGENET_MEAN, cfg.data.std or IMAGENET_STD
    on_device = gpu_augment.wanted(cfg.data, accelerator.device)  # CIFAR-10 on a GPU: crops and flips per batch there
    # Workers hand out augmented uint8 crops; the batch is normalised where the model runs (a quarter of the bytes).
    pixels_only = not on_device and cfg.data.augment != "none"

    def transforms(size: int, resize: int) -> tuple[Any, Any]:
        tf = dict(size=size, resize=resize, mean=mean, std=std)
        train_tf = (gpu_augment.uint8_images() if on_device else
                    train_pixels(size=size, augment=cfg.data.augment, crop_scale_min=cfg.data.crop_scale_min) if pixels_only else
                    train_transform(**tf, augment="none"))
        return train_tf, eval_transform(**tf)

    train_tf, eval_tf = transforms(size, resize)
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
        data = build_datasets(cfg.data, seed=cfg.run.seed, eval_tf=eval_tf, manifest=listing, train_tf=train_tf)
    # What no option set, by the data's size and, for a new run, its photos' size (a resumed or reproduced run keeps its own).
    own_size = cfg.data.image_size is None and not candidates and expect_fingerprint is None and not cfg.model.cut_at
    sides = photo_long_sides(data.train) if own_size and cfg.data.dataset != "synthetic" else []
    if own_size and accelerator.num_processes > 1:  # every process trains at the main one's size, whatever it read
        from accelerate.utils import broadcast_object_list

        sides = broadcast_object_list([sides])[0]
    cfg, chosen, line = recipe.apply(cfg, train_images=len(data.train), long_sides=sides,
                                     default_size=size if fits(cfg.model.arch, recipe.photo_input_size(sides, size)) else None)
    if line:
        log.info(line)
    if "image_size" in chosen:  # small photos train and evaluate at their own size, not upscaled
        size, resize = input_sizes(cfg.model.arch, image_size=cfg.data.image_size)
        train_tf, eval_tf = transforms(size, resize)
        for part, tf in ((data.train, train_tf), (data.val, eval_tf), (data.test, eval_tf)):
            if part is not None:
                part.transform = tf
    cached_bytes = image_cache.preload([data.train, data.val],  # each local process decodes its own copy, with its share of the CPUs
                                       image_cache.parse_budget(cfg.data.cache_images, runtime.local_processes(accelerator)),
                                       threads=max(1, runtime.num_workers(-1, accelerator.num_processes)),
                                       workers_read=setup.loader_workers(cfg.data.num_workers, accelerator, in_memory=True,
                                                                         augment=cfg.data.augment) > 0)
    data.train = EpochSeeded(data.train, cfg.run.seed)
    multi = multilabel.is_multilabel(cfg.data.task, data)
    multilabel.check_options(cfg, multi)  # before the loaders: --balance sampler would draw by one class
    if multi:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, select_by=multilabel.select_by(cfg.run.select_by)))
    if candidates:
        state.check_same_run(out, cfg.to_dict(), data.class_names)
    if expect_fingerprint and expect_fingerprint != data.fingerprint:
        log.warning(f"warning: the data differ from the original run ({data.fingerprint} != {expect_fingerprint})")
    return cfg, Data(data, size, resize, mean, std, on_device, pixels_only, cached_bytes, manifest, listing, replacing, chosen, multi)


@dataclasses.dataclass
class Built:
    """What ``build`` hands on: the model with its new head, its fast paths and the strategy that trains it."""

    model: Any
    info: Any  # tl.models.architectures.ModelInfo
    fast: dict[str, Any]
    strategy: str
    reason: str
    pretrained: bool
    backbone_lr_mult: float
    phase_at: Callable[[int], Any]  # epoch -> tl.training.strategies.Phase


def build(cfg: TrainConfig, accelerator, data: Data) -> Built:
    """The model with a new head for these classes, its fast paths, and the strategy (``auto`` resolved here)."""
    from tl import runtime
    from tl.models import fastpaths
    from tl.models.architectures import build_model
    from tl.models.heads import HeadSpec
    from tl.progress import log
    from tl.training.strategies import phase_for_epoch, resolve_auto

    head_spec = HeadSpec(cfg.model.head, cfg.model.head_hidden, cfg.model.head_norm, cfg.model.dropout)
    model, info = build_model(cfg.model.arch, len(data.bundle.class_names), weights=cfg.model.weights, head=head_spec,
                              cut_at=cfg.model.cut_at, image_size=data.size, trust_pickle=cfg.model.trust_pickle)
    fast = dict(channels_last=fastpaths.apply_channels_last(model, cfg.run.channels_last), device_augment=data.on_device,
                image_cache=data.cached_bytes > 0,
                compiled=cfg.run.compile and fastpaths.compile_model(model, accelerator.device),  # same results, sooner
                kept_memory=accelerator.device.type == "cpu" and runtime.keep_freed_memory())  # no page faults each step
    pretrained = cfg.model.weights.lower() != "none"
    if not pretrained and cfg.data.dataset != "synthetic":
        log.warning(f"training {cfg.model.arch} from random weights: transfer learning starts from pretrained ones "
                    "(--weights DEFAULT for ImageNet's, --weights PATH for a local file)")
    strategy, reason = cfg.finetune.strategy, ""
    if strategy == "auto":
        strategy, reason = resolve_auto(len(data.bundle.train) / len(data.bundle.class_names), pretrained)
    backbone_lr_mult = cfg.finetune.backbone_lr_mult if pretrained else 1.0
    phase_at = lambda epoch: phase_for_epoch(strategy, epoch, freeze_depth=cfg.finetune.freeze_depth,
                                             unfreeze_epoch=cfg.finetune.unfreeze_epoch)
    return Built(model, info, fast, strategy, reason, pretrained, backbone_lr_mult, phase_at)


@dataclasses.dataclass
class Parts:
    """The moving parts of the epochs: prepared model and loaders, the loop's context, schedules, cache, EMA."""

    model: Any
    phase: Any
    train_loader: Any
    val_loader: Any
    ctx: Any  # tl.training.loop.TrainContext
    ema: Any
    plateau: Any  # tl.training.optim.Plateau
    cache: Any  # tl.training.feature_cache.FeatureCache | None
    workers: int
    meta: dict[str, Any]
    epoch_val_logits: Any = None  # [(logits, labels) per batch] of the last evaluation
    best_val_logits: Any = None  # the same of the best epoch's, for calibration
    ema_thresholds: Any = None  # multi-label: the EMA weights' per-class thresholds


def prepare_training(cfg: TrainConfig, accelerator, data: Data, built: Built, candidates: list[Path]) -> Parts:
    """Loaders, optimizer and model through ``accelerator.prepare``; the schedule, loss and the loop's context."""
    import torch

    from tl.data import gpu_augment
    from tl.data.transforms import DeviceNormalize, batch_mix
    from tl.progress import log
    from tl.training import feature_cache, multilabel, report, setup, state
    from tl.training.loop import LossGuard, TrainContext
    from tl.training.optim import Plateau, backbone_warmup_factor, lr_factor, set_lr
    from tl.training.state import TrainingProgress

    bundle = data.bundle
    workers = setup.loader_workers(cfg.data.num_workers, accelerator, in_memory=data.cached_bytes > 0, augment=cfg.data.augment)
    train_loader, val_loader = accelerator.prepare(*setup.loaders(bundle, cfg, accelerator, workers))
    steps_per_epoch = math.ceil(len(train_loader) / cfg.optim.grad_accum)  # per process, after sharding
    first_epoch = (state.read_progress(candidates[0]) or TrainingProgress()).epoch if candidates else 0
    phase = built.phase_at(first_epoch)  # gradual: a resumed run may already be past the unfreeze
    model, optimizer = setup.prepare_phase(accelerator, built.model, phase, cfg, built.backbone_lr_mult)
    cache = feature_cache.plan(cfg, built.strategy, model, accelerator, {"train": bundle.train, "val": bundle.val}, workers)
    built.fast.update(precision=accelerator.mixed_precision, feature_cache=cache is not None)
    report.print_plan(model=accelerator.unwrap_model(model), info=built.info, strategy=built.strategy, reason=built.reason,
                      data=bundle, accelerator=accelerator, backbone_lr_mult=built.backbone_lr_mult, fast=built.fast)

    ema = None
    if cfg.optim.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema), use_buffers=True)
        accelerator.register_for_checkpointing(ema)
    o = cfg.optim
    schedule = dict(kind=o.scheduler, total_steps=steps_per_epoch * cfg.run.epochs,
                    warmup_steps=round(o.warmup_epochs * steps_per_epoch), steps_per_epoch=steps_per_epoch,
                    step_size=o.step_size, gamma=o.gamma)
    backbone_warmup_steps = round(cfg.finetune.backbone_warmup_epochs * steps_per_epoch) if built.pretrained else 0
    plateau = Plateau(o.plateau_factor, o.plateau_patience, o.max_reductions, watching=cfg.run.select_by)
    multi = data.multilabel
    class_weight = (multilabel.positive_weights if multi else setup.class_weights)(bundle.train.targets, len(bundle.class_names))  # --balance
    if o.balance != "none":
        log.info(f"--balance {o.balance}: {'positive' if multi else 'class'} weights "
                 + ", ".join(f"{n} {w:.2f}" for n, w in zip(bundle.class_names, class_weight)))
    weight = torch.tensor(class_weight, device=accelerator.device) if o.balance == "loss" else None
    parts = Parts(model, phase, train_loader, val_loader, None, ema, plateau, cache, workers, {})
    parts.ctx = TrainContext(
        accelerator=accelerator, optimizer=optimizer,
        loss_fn=multilabel.MultiLabelLoss(weight, o.label_smoothing) if multi else
        torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing, reduction="none", weight=weight),
        apply_lr=lambda optimizer, step: set_lr(optimizer, lr_factor(step, **schedule) * parts.plateau.multiplier,
                                                backbone_warmup_factor(step, backbone_warmup_steps)),
        clip_grad=o.clip_grad, aux_loss_weight=cfg.model.aux_loss_weight, ema=ema, log_every=cfg.run.log_every,
        batch_mix=multilabel.batch_mix(mixup=cfg.data.mixup, cutmix=cfg.data.cutmix) if multi else
        batch_mix(num_classes=len(bundle.class_names), mixup=cfg.data.mixup, cutmix=cfg.data.cutmix),
        hits=multilabel.exact_hits if multi else None,
        augment=gpu_augment.DeviceAugment(size=data.size, mean=data.mean, std=data.std, seed=cfg.run.seed, scale=(cfg.data.crop_scale_min, 1.0))
        if data.on_device else DeviceNormalize(data.mean, data.std, channels_last=built.fast["channels_last"]) if data.pixels_only else None,
        guard=LossGuard(accelerator.device, nonfinite_hint(cfg, accelerator.mixed_precision)),
    )
    parts.meta = report.checkpoint_meta(cfg, built.info, bundle.class_names, built.strategy, data.mean, data.std, data.resize)
    return parts


def resume(cfg: TrainConfig, accelerator, parts: Parts, candidates: list[Path]) -> tuple[Any, bool]:
    """(the progress to start from, whether it was resumed): a fresh one, or the newest complete state's (weights,
    optimizer, RNG, plateau)."""
    from tl.progress import log
    from tl.training import state
    from tl.training.optim import Plateau
    from tl.training.state import TrainingProgress

    progress = TrainingProgress()
    resumed = state.load_training_state(accelerator, candidates) if candidates else None
    if resumed:
        resumed_from, progress = resumed
        parts.plateau = Plateau(**progress.plateau) if progress.plateau else parts.plateau
        parts.plateau.watch(cfg.run.select_by, watched_metric(progress.best, cfg.run.select_by) if progress.best else -math.inf)
        log.info(f"resumed from {resumed_from}: epoch {progress.epoch + 1}, batch {progress.batches_done}, step {progress.step}")
    return progress, bool(resumed)


def start_files(cfg: TrainConfig, accelerator, out: Path, data: Data, built: Built, progress, resumed: bool,
                finished_run: bool) -> None:
    """--out's config.json and an empty metrics.jsonl (a resumed run keeps the lines of its finished epochs); trackers."""
    from tl.progress import log
    from tl.training import recipe, report, setup, state

    def write() -> None:
        out.mkdir(parents=True, exist_ok=True)
        if resumed:  # keep the lines of finished epochs only: a crash after a line but before its state repeats the epoch
            report.truncate_metrics(out / "metrics.jsonl", progress.epoch)
        else:
            shutil.rmtree(state.state_root(out), ignore_errors=True)  # states of a replaced run must not be resumed
            if data.replacing:  # a dataset that keeps no listing (synthetic) leaves none of the old run either
                data.listing.replace(data.manifest) if data.listing.is_file() else data.manifest.unlink(missing_ok=True)
                if not finished_run:
                    log.info(f"data: {data.manifest} of an earlier attempt that finished no epoch is replaced by a new listing")
            report.write_config(out / "config.json", cfg, data.bundle, accelerator, strategy=built.strategy,
                                 backbone_lr_mult=built.backbone_lr_mult, image_size=data.size, **built.fast,
                                 recipe={"version": recipe.VERSION, "chosen": data.recipe})
            (out / "metrics.jsonl").write_text("")

    state.main_process_writes(accelerator, write, out)  # a read-only --out: one line on every process
    setup.start_trackers(accelerator, cfg)


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
