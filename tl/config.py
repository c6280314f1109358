"""Typed run configuration: every default lives here, every check names the CLI flag it is about.

The resolved ``TrainConfig`` is written to ``RUN/config.json``; ``TrainConfig.from_dict`` reads it back
(``tl reproduce``), so field names double as the on-disk schema.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tl.errors import TLError

DATASETS = ("synthetic", "imagefolder", "cifar10", "caltech101", "labels")  # and hf:<hub id or folder>; labels: --labels FILE.csv
STRATEGIES = ("full", "linear", "partial", "gradual", "auto")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "plateau", "none")
HEADS = ("linear", "mlp")
HEAD_NORMS = ("standardize", "batchnorm", "none")
AUGMENTS = ("basic", "strong", "trivial", "none")
PRECISIONS = ("auto", "no", "fp16", "bf16")
TRACKERS = ("tensorboard", "wandb", "mlflow")
BALANCES = ("none", "loss", "sampler")
SELECT_BY = ("val_top1", "val_balanced_accuracy", "val_loss", "val_map")  # val_map: multi-label runs (their default)
TASKS = ("auto", "single", "multilabel")


def _is_number(text: str) -> bool:
    try:
        return 0 <= float(text) < float("inf")
    except ValueError:
        return False


def _require(ok: bool, flag: str, problem: str, hint: str = "") -> None:
    if not ok:
        raise TLError(f"{flag}: {problem}", hint)


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, flag, f"unknown value {value!r}", f"choose one of {', '.join(choices)}")


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    data_dir: str | None = None
    image_size: int | None = None  # None: the architecture's pretrained input size, or recipe 3's for small photos
    augment: str = "basic"
    crop_scale_min: float = 0.25
    mixup: float = 0.0  # alpha; 0: off
    cutmix: float = 0.0
    val_fraction: float | None = None  # None: the dataset's usual share (see ``fraction``)
    test_fraction: float | None = None
    download: bool = False
    image_column: str | None = None  # hf: datasets; None: the usual names
    label_column: str | None = None
    caltech_background: bool = False
    strict: bool = False  # an unreadable image is an error instead of being left out and counted
    batch_size: int | None = None  # None: the default recipe's, by data size (tl.training.recipe)
    num_workers: int = -1  # -1: pick from the CPUs this process has
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    synthetic_classes: int = 4
    synthetic_per_class: int = 48
    synthetic_size: int = 32
    device_augment: bool | None = None  # None: on for cifar10 with basic augmentation on a GPU (tl.data.gpu_augment)
    cache_images: str = "auto"  # decoded folder images kept in memory: auto | off | a budget in MiB (tl.data.image_cache)
    labels: str | None = None  # a label file (CSV of path,label rows; tl.data.label_file): --dataset labels
    label_sep: str | None = None  # separator of several labels in one cell; None: the first of ; | space found
    task: str = "auto"  # single | multilabel (one sigmoid per class); auto: multilabel when the labels say so

    def __post_init__(self) -> None:
        if not self.dataset.startswith("hf:"):
            _choice(self.dataset, "--dataset", DATASETS + ("hf:<name-or-path>",))
        if self.dataset in ("imagefolder",):
            _require(bool(self.data_dir), "--data-dir", "is required with --dataset imagefolder",
                     "point it at a folder with train/<class>/ and val/<class>/ sub-folders")
        _choice(self.task, "--task", TASKS)
        if self.dataset == "labels":
            _require(bool(self.labels), "--labels", "is required with --dataset labels", "pass the CSV of path,label rows")
        else:
            _require(not self.labels, "--labels", f"reads a label file, not --dataset {self.dataset}", "drop --dataset (or pass --dataset labels)")
        _choice(self.augment, "--augment", AUGMENTS)
        _require(self.image_size is None or self.image_size >= 8, "--image-size", "must be at least 8")
        _require(0.0 < self.crop_scale_min <= 1.0, "--crop-scale-min", "must be in (0, 1]")
        _require(self.mixup >= 0 and self.cutmix >= 0, "--mixup/--cutmix", "alphas must be >= 0")
        _require(self.val_fraction is None or 0.0 < self.val_fraction < 1.0, "--val-fraction", "must be in (0, 1)")
        _require(self.test_fraction is None or 0.0 <= self.test_fraction < 1.0, "--test-fraction", "must be in [0, 1)")
        _require(self.fraction("val") + self.fraction("test") < 1.0, "--val-fraction", "val and test together must leave images to train on")
        _require(self.batch_size is None or self.batch_size >= 1, "--batch-size", "must be at least 1")
        _require(self.num_workers >= -1, "--num-workers", "must be >= 0 (or -1 for automatic)")
        _require(self.synthetic_classes >= 2, "--synthetic-classes", "must be at least 2")
        _require(self.synthetic_per_class >= 2, "--synthetic-per-class", "must be at least 2")
        _require(self.synthetic_size >= 8, "--synthetic-size", "must be at least 8")
        for flag, value in (("--mean", self.mean), ("--std", self.std)):
            _require(value is None or len(value) == 3, flag, "needs three numbers, one per RGB channel")
        _require(self.std is None or min(self.std) > 0, "--std", "values must be > 0")
        _require(self.cache_images in ("auto", "off") or _is_number(self.cache_images), "--cache-images",
                 f"{self.cache_images!r} is not auto, off or a budget in MiB", "e.g. --cache-images 4096 (MiB), or off to stream from disk")
        if self.device_augment:
            _require(self.dataset == "cifar10" and self.augment == "basic", "--device-augment",
                     "works for --dataset cifar10 with --augment basic only", "drop --device-augment")


    def fraction(self, part: str) -> float:
        """The val/test share: as given, else Caltech-101's 25/25 (its write-up's 50/25/25), else 20% val, no test."""
        given = self.val_fraction if part == "val" else self.test_fraction
        if given is not None:
            return given
        if self.dataset == "caltech101":
            return 0.25
        return {"val": 0.1 if self.dataset == "cifar10" else 0.2, "test": 0.0}[part]


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    weights: str = "auto"  # auto | none | DEFAULT | a torchvision enum name | a local file (see TrainConfig.__post_init__)
    head: str = "linear"
    head_hidden: int = 256
    head_norm: str = "standardize"
    dropout: float = 0.0
    cut_at: str | None = None
    aux_loss_weight: float = 0.4  # inception_v3 / googlenet auxiliary heads
    trust_pickle: bool = False  # allow --weights files that need full unpickling (runs their code)

    def __post_init__(self) -> None:
        _require(bool(self.arch), "--arch", "is empty", "see `tl archs` for the list")
        _choice(self.head, "--head", HEADS)
        _choice(self.head_norm, "--head-norm", HEAD_NORMS)
        _require(self.head_hidden >= 1, "--head-hidden", "must be at least 1")
        _require(0.0 <= self.dropout < 1.0, "--dropout", "must be in [0, 1)")
        _require(self.aux_loss_weight >= 0, "--aux-loss-weight", "must be >= 0")


@dataclass
class FinetuneConfig:
    strategy: str = "full"
    freeze_depth: int = 0
    unfreeze_epoch: int = 1
    backbone_lr_mult: float = 0.01  # pretrained features move slowly; applies only with pretrained weights
    freeze_bn: bool = False
    backbone_warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        _choice(self.strategy, "--strategy", STRATEGIES)
        _require(self.backbone_warmup_epochs >= 0, "--backbone-warmup-epochs", "must be >= 0")
        _require(self.freeze_depth >= 0, "--freeze-depth", "must be >= 0")
        _require(
            self.strategy != "partial" or self.freeze_depth > 0,
            "--freeze-depth",
            "must be at least 1 with --strategy partial",
            "e.g. --freeze-depth 2 freezes the first two stages; `tl archs` shows the model",
        )
        _require(self.unfreeze_epoch >= 1, "--unfreeze-epoch", "must be at least 1")
        _require(self.backbone_lr_mult >= 0, "--backbone-lr-mult", "must be >= 0")


@dataclass
class OptimConfig:
    # AdamW: its per-parameter step size copes with badly scaled pretrained nets (squeezenet's activations are
    # in the tens) where SGD at the tutorial's rate wrecks the backbone in a dozen steps.
    optimizer: str = "adamw"
    lr: float = 2e-3  # the head's rate (backbone: x backbone_lr_mult); with cosine decay 1e-3 under-trains a head in 3 epochs
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    max_reductions: int = 0  # 0: never stop because of reductions
    label_smoothing: float = 0.0
    # Class imbalance: loss weighs each image by its class's n_c^-1/2, sampler draws images with that weight
    # (normalised to a mean of 1 over the train images), so rare classes count more (tl.training.setup)
    balance: str = "none"
    grad_accum: int = 1
    clip_grad: float | None = None
    ema: float | None = None

    def __post_init__(self) -> None:
        _choice(self.optimizer, "--optimizer", OPTIMIZERS)
        _choice(self.scheduler, "--scheduler", SCHEDULERS)
        _require(self.lr > 0, "--lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "--momentum", "must be in [0, 1)")
        _require(self.weight_decay >= 0, "--weight-decay", "must be >= 0")
        _require(self.warmup_epochs >= 0, "--warmup-epochs", "must be >= 0")
        _require(self.step_size >= 1, "--step-size", "must be at least 1")
        _require(0 < self.gamma <= 1, "--gamma", "must be in (0, 1]")
        _require(0 < self.plateau_factor < 1, "--plateau-factor", "must be in (0, 1)")
        _require(self.plateau_patience >= 0, "--plateau-patience", "must be >= 0")
        _require(self.max_reductions >= 0, "--max-reductions", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "--label-smoothing", "must be in [0, 1)")
        _choice(self.balance, "--balance", BALANCES)
        _require(self.grad_accum >= 1, "--grad-accum", "must be at least 1")
        _require(self.clip_grad is None or self.clip_grad > 0, "--clip-grad", "must be > 0")
        _require(self.ema is None or 0 < self.ema < 1, "--ema", "decay must be in (0, 1), e.g. 0.999")


@dataclass
class RunConfig:
    out: str = "runs/latest"
    epochs: int | None = None  # None: the default recipe's, by data size (tl.training.recipe)
    seed: int = 0
    # auto: bf16 where the device computes it natively, fp16 + grad scaler on GPUs without bf16, else fp32;
    # under `accelerate launch` its --mixed_precision decides. None (older config.json files): accelerate's.
    mixed_precision: str | None = "auto"
    channels_last: bool = True  # convolutional models only (tl.models.fastpaths)
    compile: bool = False  # torch.compile the model; falls back to eager with a log line where it cannot
    cache_features: bool = True  # linear strategy without augmentation: backbone features computed once
    early_stop_patience: int = 0  # 0: off
    select_by: str = "val_top1"  # which epoch is best/ (and what early stopping watches)
    log_with: str | None = None
    log_every: int = 20
    overwrite: bool = False
    resume: str | None = None  # auto | a state folder
    save_every_steps: int = 0  # 0: states only at the end of each epoch
    keep_states: int = 2

    def __post_init__(self) -> None:
        _require(self.epochs is None or self.epochs >= 1, "--epochs", "must be at least 1")
        if self.mixed_precision is not None:
            _choice(self.mixed_precision, "--mixed-precision", PRECISIONS)
        _require(self.early_stop_patience >= 0, "--early-stop-patience", "must be >= 0")
        _choice(self.select_by, "--select-by", SELECT_BY)
        if self.log_with is not None:
            _choice(self.log_with, "--log-with", TRACKERS)
        _require(self.log_every >= 1, "--log-every", "must be at least 1")
        _require(self.save_every_steps >= 0, "--save-every-steps", "must be >= 0")
        _require(self.keep_states >= 1, "--keep-states", "must be at least 1")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.model.weights.lower() == "auto":
            # A transfer-learning tool starts from ImageNet weights unless told otherwise (fastai's default too); the
            # built-in synthetic set and your own module:callable have none. Recorded resolved in config.json.
            custom = ":" in self.model.arch or self.data.dataset == "synthetic"
            self.model.weights = "none" if custom else "DEFAULT"
        _require(
            self.finetune.strategy != "gradual" or self.run.epochs is None or self.finetune.unfreeze_epoch < self.run.epochs,
            "--unfreeze-epoch",
            f"must be below --epochs ({self.run.epochs}) for the backbone to train at all",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict`` (``config.json``'s ``config`` section); unknown keys are an error, missing ones default."""
        sections = {"data": DataConfig, "model": ModelConfig, "finetune": FinetuneConfig, "optim": OptimConfig, "run": RunConfig}
        kwargs = {}
        for name, section_cls in sections.items():
            values = dict(raw.get(name, {}))
            unknown = set(values) - {f.name for f in dataclasses.fields(section_cls)}
            if unknown:
                raise TLError(f"config section {name!r} has unknown keys {sorted(unknown)}", "was it written by a newer tl?")
            for key in ("mean", "std"):
                if values.get(key) is not None:
                    values[key] = tuple(values[key])
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)
