"""The flags of ``tl train`` (also ``python -m tl.train`` and ``accelerate launch -m tl.train``).

Only typer and the config are imported here, so ``--help`` and flag errors answer at once.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tl import config
from tl.config import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, RunConfig
from tl.data import flags  # the data flags check-data and stats share with train

DATA, MODEL, TUNE, OPTIM, RUN, SPEED = "Data", "Model", "Fine-tuning strategy", "Optimisation", "Run", "Speed"


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Strategy = _choices("Strategy", config.STRATEGIES)
Head = _choices("Head", config.HEADS)
HeadNorm = _choices("HeadNorm", config.HEAD_NORMS)
Optimizer = _choices("Optimizer", config.OPTIMIZERS)
Scheduler = _choices("Scheduler", config.SCHEDULERS)
Augment = _choices("Augment", config.AUGMENTS)
Precision = _choices("Precision", config.PRECISIONS)
Tracker = _choices("Tracker", config.TRACKERS)


def command(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="A recipe: YAML or JSON of these options (a run's config.json too), or one tl ships by name (finetune, linear-probe, mlp-plateau); flags given here override it.", rich_help_panel=RUN)] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved options as YAML (a recipe to start from) and exit.", rich_help_panel=RUN)] = False,
    arch: Annotated[str, typer.Option(help="torchvision architecture (`tl archs`), or module:callable taking num_classes.", rich_help_panel=MODEL)] = ModelConfig.arch,
    weights: Annotated[str, typer.Option(help="auto: ImageNet weights (DEFAULT) on real data, random on --dataset synthetic | DEFAULT | a torchvision weights name (IMAGENET1K_V1) | PATH to .safetensors/.pth or a tl checkpoint | none: random.", rich_help_panel=MODEL)] = ModelConfig.weights,
    head: Annotated[Head, typer.Option(help="New classifier head.", rich_help_panel=MODEL)] = Head(ModelConfig.head),
    head_hidden: Annotated[int, typer.Option(help="Hidden width of the mlp head.", rich_help_panel=MODEL)] = ModelConfig.head_hidden,
    head_norm: Annotated[HeadNorm, typer.Option(help="Normalise pooled features before the head: running standardisation, BatchNorm without affine, or none.", rich_help_panel=MODEL)] = HeadNorm(ModelConfig.head_norm),
    dropout: Annotated[float, typer.Option(help="Dropout in the head.", rich_help_panel=MODEL)] = ModelConfig.dropout,
    cut_at: Annotated[Optional[str], typer.Option(help="Take features from this earlier layer (e.g. layer3), global-pooled.", rich_help_panel=MODEL)] = ModelConfig.cut_at,
    aux_loss_weight: Annotated[float, typer.Option(help="Weight of inception_v3/googlenet auxiliary losses.", rich_help_panel=MODEL)] = ModelConfig.aux_loss_weight,
    trust_pickle: Annotated[bool, typer.Option(help="Load a --weights file that holds a pickled model (runs its code: only for files you trust).", rich_help_panel=MODEL)] = ModelConfig.trust_pickle,
    dataset: flags.Dataset = None,  # none given: inferred from --data-dir (tl.data.infer), else DataConfig's
    data_dir: flags.DataDir = DataConfig.data_dir,
    labels: flags.Labels = None,
    label_sep: flags.LabelSep = DataConfig.label_sep,
    task: flags.Task = DataConfig.task,
    image_size: Annotated[Optional[int], typer.Option(help="Input size; default: the architecture's pretrained size, or, for a new run on image files, the photos' median long side rounded up to 32 when that is 96 px to 3/4 of it (the recipe's choice).", rich_help_panel=DATA)] = DataConfig.image_size,
    augment: Annotated[Augment, typer.Option(help="basic: random resized crop + flip; strong: + rotation, colour jitter; trivial: + TrivialAugmentWide; none.", rich_help_panel=DATA)] = Augment(DataConfig.augment),
    mixup: Annotated[float, typer.Option(help="MixUp alpha (0: off).", rich_help_panel=DATA)] = DataConfig.mixup,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha (0: off).", rich_help_panel=DATA)] = DataConfig.cutmix,
    crop_scale_min: Annotated[float, typer.Option(help="Smallest area share of the random resized crop.", rich_help_panel=DATA)] = DataConfig.crop_scale_min,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share held out for validation where the data has no val split (default: 0.2; cifar10 0.1; caltech101 0.25).", rich_help_panel=DATA)] = DataConfig.val_fraction,
    test_fraction: Annotated[Optional[float], typer.Option(help="Share held out for testing where tl makes the split (default: caltech101 0.25, else none).", rich_help_panel=DATA)] = DataConfig.test_fraction,
    download: flags.Download = DataConfig.download,
    image_column: flags.ImageColumn = DataConfig.image_column,
    label_column: flags.LabelColumn = DataConfig.label_column,
    strict: Annotated[bool, typer.Option(help="Fail on an unreadable image instead of leaving it out (and counting it).", rich_help_panel=DATA)] = DataConfig.strict,
    caltech_background: flags.CaltechBackground = DataConfig.caltech_background,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step per process; default: the recipe's, by data size (the plan's first line says).", rich_help_panel=DATA, show_default=False)] = DataConfig.batch_size,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers per process; -1: automatic.", rich_help_panel=DATA)] = DataConfig.num_workers,
    cache_images: Annotated[str, typer.Option(help="Decode a folder dataset once into memory when it fits: auto (15% of RAM per node, at most 2 GiB per process) | off | a budget in MiB.", rich_help_panel=SPEED)] = DataConfig.cache_images,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean, R,G,B (default ImageNet's).", rich_help_panel=DATA)] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std, R,G,B (default ImageNet's).", rich_help_panel=DATA)] = None,
    synthetic_classes: Annotated[int, typer.Option(help="Classes of the synthetic set.", rich_help_panel=DATA)] = DataConfig.synthetic_classes,
    synthetic_per_class: Annotated[int, typer.Option(help="Training images per synthetic class.", rich_help_panel=DATA)] = DataConfig.synthetic_per_class,
    synthetic_size: Annotated[int, typer.Option(help="Side of the synthetic images in pixels.", rich_help_panel=DATA)] = DataConfig.synthetic_size,
    device_augment: Annotated[Optional[bool], typer.Option("--device-augment/--no-device-augment", help="Crop, flip and normalise whole uint8 batches on the device (cifar10, --augment basic); default: on a GPU.", rich_help_panel=SPEED, show_default=False)] = DataConfig.device_augment,
    strategy: Annotated[Strategy, typer.Option(help="full | linear (frozen backbone) | partial | gradual | auto.", rich_help_panel=TUNE)] = Strategy(FinetuneConfig.strategy),
    freeze_depth: Annotated[int, typer.Option(help="partial: number of leading stages to freeze.", rich_help_panel=TUNE)] = FinetuneConfig.freeze_depth,
    unfreeze_epoch: Annotated[int, typer.Option(help="gradual: epochs of head-only training before the backbone joins.", rich_help_panel=TUNE)] = FinetuneConfig.unfreeze_epoch,
    backbone_lr_mult: Annotated[float, typer.Option(help="Backbone lr = lr x this (with pretrained weights).", rich_help_panel=TUNE)] = FinetuneConfig.backbone_lr_mult,
    backbone_warmup_epochs: Annotated[float, typer.Option(help="Ramp the backbone's lr up from 0 over this many epochs while the head trains (pretrained weights only).", rich_help_panel=TUNE)] = FinetuneConfig.backbone_warmup_epochs,
    freeze_bn: Annotated[bool, typer.Option(help="Keep every backbone BatchNorm in inference mode.", rich_help_panel=TUNE)] = FinetuneConfig.freeze_bn,
    optimizer: Annotated[Optimizer, typer.Option(help="Optimizer.", rich_help_panel=OPTIM)] = Optimizer(OptimConfig.optimizer),
    lr: Annotated[float, typer.Option(help="Learning rate of the head.", rich_help_panel=OPTIM)] = OptimConfig.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=OPTIM)] = OptimConfig.momentum,
    nesterov: Annotated[bool, typer.Option(help="Nesterov momentum (SGD).", rich_help_panel=OPTIM)] = OptimConfig.nesterov,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (not on norms and biases).", rich_help_panel=OPTIM)] = OptimConfig.weight_decay,
    scheduler: Annotated[Scheduler, typer.Option(help="Learning-rate schedule.", rich_help_panel=OPTIM)] = Scheduler(OptimConfig.scheduler),
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up length in epochs.", rich_help_panel=OPTIM)] = OptimConfig.warmup_epochs,
    step_size: Annotated[int, typer.Option(help="step: epochs between decays.", rich_help_panel=OPTIM)] = OptimConfig.step_size,
    gamma: Annotated[float, typer.Option(help="step: decay factor.", rich_help_panel=OPTIM)] = OptimConfig.gamma,
    plateau_factor: Annotated[float, typer.Option(help="plateau: factor on the lr when the --select-by metric stalls.", rich_help_panel=OPTIM)] = OptimConfig.plateau_factor,
    plateau_patience: Annotated[int, typer.Option(help="plateau: epochs without improvement before a reduction.", rich_help_panel=OPTIM)] = OptimConfig.plateau_patience,
    max_reductions: Annotated[int, typer.Option(help="plateau: stop after this many reductions (0: never).", rich_help_panel=OPTIM)] = OptimConfig.max_reductions,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.", rich_help_panel=OPTIM)] = OptimConfig.label_smoothing,
    balance: Annotated[str, typer.Option(help="Class imbalance: none | loss (each image's loss x its class weight n_c^-1/2, normalised to a mean of 1 over the train images) | sampler (images drawn with replacement with that weight, in an order fixed by seed and epoch: exact across processes and on resume).", rich_help_panel=OPTIM)] = OptimConfig.balance,
    select_by: Annotated[str, typer.Option(help="Which epoch becomes best/ (and what --early-stop-patience watches): val_top1 | val_balanced_accuracy (mean per-class recall) | val_loss | val_map (mean per-class average precision; multi-label runs select by it whatever this says).", rich_help_panel=RUN)] = RunConfig.select_by,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.", rich_help_panel=OPTIM)] = OptimConfig.grad_accum,
    clip_grad: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this.", rich_help_panel=OPTIM)] = OptimConfig.clip_grad,
    ema: Annotated[Optional[float], typer.Option(help="Keep an EMA of the weights with this decay (e.g. 0.999).", rich_help_panel=OPTIM)] = OptimConfig.ema,
    out: Annotated[Path, typer.Option(help="Output folder (checkpoints, config.json, metrics.jsonl).", rich_help_panel=RUN)] = Path(RunConfig.out),
    epochs: Annotated[Optional[int], typer.Option(help="Epochs; default: the recipe's, by data size (the plan's first line says).", rich_help_panel=RUN, show_default=False)] = RunConfig.epochs,
    seed: Annotated[int, typer.Option(help="Random seed (data order, augmentation, init, synthetic data).", rich_help_panel=RUN)] = RunConfig.seed,
    mixed_precision: Annotated[Precision, typer.Option(help="auto: bf16 where the device computes it natively (recent GPUs, CPUs with AVX512-BF16/AMX), fp16 + grad scaler on older GPUs, else fp32; under accelerate launch, its --mixed_precision. no: fp32.", rich_help_panel=SPEED)] = Precision(RunConfig.mixed_precision),
    channels_last: Annotated[bool, typer.Option(help="Keep convolutional models in channels_last (NHWC) memory: faster convolutions, same results.", rich_help_panel=SPEED)] = RunConfig.channels_last,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model (minutes of compiling first; falls back to eager with a log line where it cannot).", rich_help_panel=SPEED)] = RunConfig.compile,
    cache_features: Annotated[bool, typer.Option(help="linear strategy with --augment none: run the frozen backbone once per image and train the head on its cached features.", rich_help_panel=SPEED)] = RunConfig.cache_features,
    early_stop_patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better val top-1 (0: off).", rich_help_panel=RUN)] = RunConfig.early_stop_patience,
    log_with: Annotated[Optional[Tracker], typer.Option(help="Also send metrics to this tracker.", rich_help_panel=RUN)] = None,
    log_every: Annotated[int, typer.Option(help="Show progress every N steps.", rich_help_panel=RUN)] = RunConfig.log_every,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run already in --out (its states and split.json too).", rich_help_panel=RUN)] = RunConfig.overwrite,
    resume: Annotated[Optional[str], typer.Option(help="auto: continue from the newest complete state in --out (fresh if none); or a state folder.", rich_help_panel=RUN)] = RunConfig.resume,
    save_every_steps: Annotated[int, typer.Option(help="Also save the full training state every N optimizer steps (0: at epoch ends only).", rich_help_panel=RUN)] = RunConfig.save_every_steps,
    keep_states: Annotated[int, typer.Option(help="How many saved states to keep in --out/state.", rich_help_panel=RUN)] = RunConfig.keep_states,
) -> None:
    """Fine-tune an ImageNet classifier on your classes.

    Examples:

      tl train --arch resnet18 --weights DEFAULT --dataset imagefolder --data-dir data/hymenoptera --epochs 5 --out runs/r18

      accelerate launch -m tl.train --arch mobilenet_v3_small --dataset synthetic --epochs 3 --out runs/demo
    """
    from tl.training.options import parse_option, resolve, to_config, to_yaml

    typed = {name: value for name, value in ctx.params.items()
             if name not in ("config", "print_config")
             and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}  # typer vendors click: compare names
    options = resolve(typed, config)
    cfg = to_config(options)  # validated either way
    if print_config:  # as given, not resolved: `weights: auto` stays auto, so the recipe adapts to its dataset
        print(to_yaml({name: parse_option(name, value) for name, value in options.items()}), end="")
        return
    from tl.entry import stop_codes
    from tl.training.api import train_config

    with stop_codes():
        train_config(cfg)
