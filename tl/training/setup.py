"""Training's accelerate set-up: the run's accelerator, its loaders, trackers, and (re-)preparing model and optimizer.

Model: accelerate's ``examples/complete_cv_example.py``. No rank arithmetic by hand: accelerate shards the
loaders and wraps the model.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from torch.utils.data import DataLoader

from tl.config import TrainConfig
from tl.data.datasets import DatasetBundle
from tl.errors import TLError
from tl.runtime import build_accelerator, ignore_stop_signals, num_workers
from tl.training.optim import build_optimizer
from tl.training.strategies import Phase, apply_phase, parameter_groups


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The training run's accelerator: precision, accumulation, seeded sampling, trackers."""
    if cfg.run.log_with:
        check_tracker(cfg.run.log_with)
    return build_accelerator(
        mixed_precision=cfg.run.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        # data_seed: every process draws the same permutation (and so a disjoint shard of it) whatever the
        # global RNG says; accelerate otherwise seeds from torch.initial_seed(), equal on all ranks only after set_seed
        # non_blocking: copies of pinned batches to the GPU overlap the step before instead of waiting for it
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.run.seed, non_blocking=True),
        log_with=cfg.run.log_with,
        project_dir=cfg.run.out,
    )


def check_tracker(name: str) -> None:
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}[name]()
    if not available:
        raise TLError(f"--log-with {name}: the {name} package is not installed", f"pip install {name}")


def start_trackers(accelerator: Accelerator, cfg: TrainConfig) -> None:
    if not cfg.run.log_with:
        return
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    accelerator.init_trackers("tl", config=flat)


# Class weight n_c^-power. 1 would equalise the classes fully; on bees/ants with one class cut to a tenth it did
# worse than 1/2 in every setting tried (README, "Real-world labels"): a dozen rare images drawn half the time overfit.
BALANCE_POWER = 0.5


def class_weights(targets: list[int], num_classes: int, power: float = BALANCE_POWER) -> list[float]:
    """Weight of each class, n_c^-power, scaled so that the mean over the train images is 1 (the loss keeps its
    scale, so does the learning rate that suits it). A class without train images gets 0."""
    counts = [0] * num_classes
    for label in targets:
        counts[label] += 1
    raw = [n ** -power if n else 0.0 for n in counts]
    mean = sum(n * w for n, w in zip(counts, raw)) / max(len(targets), 1)
    return [w / mean for w in raw]


class BalancedSampler(torch.utils.data.Sampler):
    """``len(weights)`` indices drawn with replacement, image i with probability ~ ``weights[i]``, in an order fixed
    by (seed, epoch) alone. Every process computes the same list, so accelerate's batch sharding gives each a
    disjoint share of it, and a run resumed mid-epoch skips into the very list it was interrupted in."""

    def __init__(self, weights: list[float], seed: int) -> None:
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard.set_epoch calls it
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF_FFFF)
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist())


MAIN_PROCESS_CPUS = 4  # the largest CPU count per process where crops in the main process were measured (2) and expected to pay


def loader_workers(requested: int, accelerator: Accelerator, *, in_memory: bool, augment: str = "basic") -> int:
    """Loader workers for training: ``num_workers``'s rule, except on a small CPU-only machine (at most
    ``MAIN_PROCESS_CPUS`` CPUs per process) with every image already decoded in memory (``tl.data.image_cache``) and
    cheap crops (``--augment basic`` or ``none``), where ``-1`` means none: the crops run in the main process between
    steps.

    There the model's threads use every core, and workers that wake up beside them stall a step's threads more than
    the crops cost: on the 2-core build machine squeezenet1_0 at batch 16 (bees/ants, cached) trained at 29.5 images/s
    with no worker against 19.6 with two (medians of 5, alternating), the crops taking ~2% of the epoch. Larger
    machines and costlier augmentation keep workers until measured otherwise.
    """
    per_process = num_workers(-1, accelerator.num_processes)
    if (requested < 0 and in_memory and accelerator.device.type == "cpu" and augment in ("basic", "none")
            and per_process <= MAIN_PROCESS_CPUS):
        return 0
    return num_workers(requested, accelerator.num_processes)


def loaders(data: DatasetBundle, cfg: TrainConfig, accelerator: Accelerator, workers: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders; ``workers``: the count ``loader_workers`` chose (None: ``--num-workers``'s rule)."""
    workers = num_workers(cfg.data.num_workers, accelerator.num_processes) if workers is None else workers
    # Loaders draw their worker seeds from generators of their own: starting an iterator then leaves the
    # global RNG (augmentation, dropout) untouched, so a run resumed mid-epoch continues the same stream.
    common: dict[str, Any] = dict(batch_size=cfg.data.batch_size, num_workers=workers, persistent_workers=workers > 0,
                                  pin_memory=accelerator.device.type == "cuda", worker_init_fn=ignore_stop_signals)
    seeded = lambda offset: torch.Generator().manual_seed(cfg.run.seed + offset)
    # Full batches only in training: a batch of one breaks BatchNorm (the head's feature norm included).
    drop_last = len(data.train) >= cfg.data.batch_size * accelerator.num_processes
    if cfg.optim.balance == "sampler":
        weight_of = class_weights(data.train.targets, len(data.class_names))
        sampler = BalancedSampler([weight_of[label] for label in data.train.targets], cfg.run.seed)
        train = DataLoader(data.train, sampler=sampler, drop_last=drop_last, generator=seeded(1), **common)
    else:
        train = DataLoader(data.train, shuffle=True, drop_last=drop_last, generator=seeded(1), **common)
    val = DataLoader(data.val, shuffle=False, generator=seeded(2), **common)
    return train, val


def prepare_phase(
    accelerator: Accelerator,
    model: nn.Module,
    phase: Phase,
    cfg: TrainConfig,
    backbone_lr_mult: float,
    old_optimizer: torch.optim.Optimizer | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Freeze per ``phase``, build the optimizer over the trainable parameters, and prepare both.

    Called again when ``gradual`` unfreezes: DDP only syncs parameters that required grad when it was
    built, so the model is unwrapped and wrapped anew. Parameters that trained before keep their state.
    """
    if old_optimizer is not None:
        model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        old_state = getattr(old_optimizer, "optimizer", old_optimizer).state
        accelerator.free_memory()  # drops accelerate's references to the old wrappers
    apply_phase(model, phase)
    groups = parameter_groups(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, backbone_lr_mult=backbone_lr_mult)
    optimizer = build_optimizer(groups, cfg.optim)
    if old_optimizer is not None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param in old_state:
                    optimizer.state[param] = old_state[param]
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer
