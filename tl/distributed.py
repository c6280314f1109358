"""Everything accelerate-specific: building the accelerator, loaders, (re-)preparing model and optimizer, trackers.

Model: accelerate's ``examples/complete_cv_example.py``. No rank arithmetic by hand: accelerate shards the
loaders and wraps the model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from torch.utils.data import DataLoader

from tl.config import TrainConfig
from tl.datasets import DatasetBundle
from tl.errors import TLError
from tl.finetune import Phase, apply_phase, parameter_groups
from tl.optim import build_optimizer
from tl.progress import log


def has_accelerator_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def auto_precision(on_gpu: bool) -> str:
    """bf16 where the device computes it natively: it halves memory traffic and needs no loss scaling. GPUs
    without bf16 (before Ampere) get fp16, which accelerate pairs with a gradient scaler. On the CPU only
    AVX512-BF16/AMX cores qualify (elsewhere oneDNN emulates bf16, slower than fp32). On this project's
    2-core EPYC, squeezenet1_0 training at 224 px ran ~2x faster in bf16 + channels_last than in fp32, with
    the same bees/ants accuracy (see README, Performance)."""
    from tl.hardware import cpu_has_native_bf16

    if on_gpu:
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"  # mps: autocast support for training is partial
    return "bf16" if cpu_has_native_bf16() else "no"


def resolve_precision(requested: str | None, on_gpu: bool) -> str | None:
    """The precision to build the accelerator with. ``auto`` follows ``accelerate launch`` when it set one,
    else the device (``auto_precision``). fp16 autocast on the CPU silently computes in float32: map it to bf16."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if requested == "auto":
        requested = launched or auto_precision(on_gpu)
    effective = requested or launched
    if effective == "fp16" and not on_gpu:
        log.warning("mixed precision fp16 does nothing on the CPU; using bf16 instead")
        return "bf16"
    return requested


def build_accelerator(*, mixed_precision: str | None = None, **kwargs: Any) -> Accelerator:
    """An Accelerator for this machine, for training and prediction alike. Without a GPU it is built for the
    CPU, so that processes started by ``accelerate launch --multi_gpu`` or torchrun form one gloo group instead
    of each working alone; a launch whose processes did not join one group is refused."""
    from accelerate.state import AcceleratorState

    # The state is a process-wide singleton: a second run in one process (a notebook, `tl reproduce` from
    # Python, the tests) could not choose another precision. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    on_gpu = has_accelerator_device()
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=resolve_precision(mixed_precision, on_gpu), **kwargs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise TLError(f"launched as {world} processes, but they did not join one process group",
                      "launch with `accelerate launch --multi_gpu --num_processes N` or torchrun")
    return accelerator


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


def local_processes(accelerator: Accelerator) -> int:
    """Processes on this node (they share its CPUs and memory)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def num_workers(requested: int, num_processes: int) -> int:
    """-1: the CPUs this process may use, shared between the local processes, at most 8."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", num_processes)))
    return min(8, per_process) if per_process > 1 else 0


def loaders(data: DatasetBundle, cfg: TrainConfig, accelerator: Accelerator) -> tuple[DataLoader, DataLoader]:
    workers = num_workers(cfg.data.num_workers, accelerator.num_processes)
    # Loaders draw their worker seeds from generators of their own: starting an iterator then leaves the
    # global RNG (augmentation, dropout) untouched, so a run resumed mid-epoch continues the same stream.
    common: dict[str, Any] = dict(batch_size=cfg.data.batch_size, num_workers=workers, persistent_workers=workers > 0,
                                  pin_memory=accelerator.device.type == "cuda")
    seeded = lambda offset: torch.Generator().manual_seed(cfg.run.seed + offset)
    # Full batches only in training: a batch of one breaks BatchNorm (the head's feature norm included).
    drop_last = len(data.train) >= cfg.data.batch_size * accelerator.num_processes
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
