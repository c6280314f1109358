"""The per-batch loops: ``train_one_epoch`` and ``evaluate``.

Metrics are summed on the device and reduced once per epoch: calling ``.item()`` on every step would make
the host wait for the accelerator each time. The only sync inside an epoch is when progress is shown; a
non-finite loss is noted on the device each step and read back only at such sync points (``LossGuard``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from accelerate import Accelerator
from torch import nn

from tl.errors import TLError
from tl.models.heads import split_outputs
from tl.progress import EpochProgress


@dataclass
class TrainContext:
    """What the training loop needs beyond model and data; built once per run by ``train.run``."""

    accelerator: Accelerator
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    apply_lr: Callable[[torch.optim.Optimizer, int], float]  # set the rates for an optimizer step; returns the head's
    clip_grad: float | None = None
    aux_loss_weight: float = 0.4
    ema: torch.optim.swa_utils.AveragedModel | None = None
    log_every: int = 20
    batch_mix: Callable | None = None  # MixUp/CutMix: (images, labels) -> (images, soft labels)
    augment: Callable | None = None  # on the device: (uint8 images, batch index) -> float images (tl.data.gpu_augment)
    guard: "LossGuard | None" = None  # stops the run at the first nan/inf loss
    hits: Callable | None = None  # (logits, labels) -> right per image; None: top-1 (multi-label: exact match)


class LossGuard:
    """Stops training at the first nan or inf loss. No later step undoes one: every weight it reaches turns nan,
    and saving them would replace a good checkpoint with a broken one.

    ``note`` remembers the first bad step on the device, so no step waits for it; ``check`` reads it back (a host
    sync), so it runs only where the loop syncs anyway. With several processes ``check`` is a collective: every
    process calls it at the same step, and all stop together.
    """

    def __init__(self, device: torch.device, hint: str = "") -> None:
        self.first = torch.zeros(2, dtype=torch.float64, device=device)  # (optimizer step, loss) of the first; step 0: none
        self.hint = hint

    def note(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().double()
        fresh = ~torch.isfinite(value) & (self.first[0] == 0)
        self.first[0] = torch.where(fresh, float(step), self.first[0])
        self.first[1] = torch.where(fresh, value, self.first[1])

    def alarm(self) -> torch.Tensor:
        """1.0 on the device once a loss was non-finite, to fold into a collective that runs anyway (no sync here)."""
        return (self.first[:1] > 0).double()

    def check(self, accelerator: Accelerator, epoch: int) -> None:
        """Raise a TLError naming the epoch (0-based here) and the first bad step if any process saw one."""
        rows = accelerator.gather(self.first[None]) if accelerator.num_processes > 1 else self.first[None]
        seen = [(step, value) for step, value in rows.tolist() if step]
        if seen:
            step, value = min(seen)
            raise TLError(f"loss is {value} at epoch {epoch + 1} step {int(step)}: training stopped before saving anything after it",
                          self.hint)


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int, weight: torch.Tensor) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return ((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1) * weight).sum()


def masked_mean(per_sample: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the readable samples of a batch (0 when there are none, so every rank still steps)."""
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


def balanced_accuracy(per_class: torch.Tensor | None) -> float:
    """Mean recall over the classes present, from (hits, count) rows per class; a class absent has none to average."""
    if per_class is None or not (per_class[1] > 0).any():
        return 0.0
    present = per_class[1] > 0
    return (per_class[0][present] / per_class[1][present]).mean().item()


@dataclass
class EpochResult:
    metrics: dict | None  # None when ``should_stop`` ended the epoch early
    step: int  # the next optimizer step
    batches_done: int  # batches of this epoch consumed, including those skipped on resume
    sums: torch.Tensor  # running (loss * n, correct, n, unreadable) of this epoch on this process


def train_one_epoch(
    model: nn.Module,
    loader,
    ctx: TrainContext,
    *,
    step: int,
    description: str,
    start_batch: int = 0,
    epoch: int = 0,
    sums: torch.Tensor | None = None,
    after_step: Callable[[int, int, torch.Tensor], bool] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prep_seconds: float = 0.0,
) -> EpochResult:
    """One pass over ``loader`` (which already skips ``start_batch`` batches when resuming mid-epoch).

    ``after_step(step, batches_done, sums)`` runs after every optimizer step (periodic saves, stop signals);
    when it returns True the epoch ends early and ``metrics`` is None. ``forward`` replaces ``model(inputs)``
    (the feature cache feeds the head alone); ``prep_seconds`` spent before the loop (building that cache)
    count as this epoch's time, so its images/s stay honest.

    Nothing in a step waits for the device: ``data_wait`` is the host's time blocked on the loader, which is
    the device's idle time as long as the host keeps ahead; every ``log_every`` steps progress syncs, and on one
    process ``ctx.guard`` is checked there too (with several, the caller checks it where all processes meet).
    """
    accelerator = ctx.accelerator
    device = accelerator.device
    sums = sums.to(device) if sums is not None else torch.zeros(4, device=device, dtype=torch.float64)
    data_wait = 0.0
    total_batches = len(loader) + start_batch
    progress = EpochProgress(description=description, total=total_batches, enabled=accelerator.is_main_process, every=ctx.log_every)
    forward = forward or model
    start = time.perf_counter() - prep_seconds
    last = time.perf_counter()
    seen_at_start = sums[2].item()  # carried sums are global (main process only): subtract them once
    lr = ctx.apply_lr(ctx.optimizer, step)
    batch_index = start_batch
    for batch_index, (images, labels, readable) in enumerate(loader, start=start_batch + 1):
        data_wait += time.perf_counter() - last
        weight = readable.to(torch.float32)
        targets = labels
        if ctx.augment is not None:
            images = ctx.augment(images, batch_index)
        if ctx.batch_mix is not None:
            images, targets = ctx.batch_mix(images, labels)
        with accelerator.accumulate(model):
            logits, aux = split_outputs(forward(images))
            loss = masked_mean(ctx.loss_fn(logits, targets), weight)
            for aux_logits in aux:
                loss = loss + ctx.aux_loss_weight * masked_mean(ctx.loss_fn(aux_logits, targets), weight)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                lr = ctx.apply_lr(ctx.optimizer, step)
                if ctx.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), ctx.clip_grad)
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.guard is not None:
            ctx.guard.note(loss, step + 1)
        n = weight.sum()
        hits = ctx.hits(logits.detach(), labels) if ctx.hits is not None else logits.detach().argmax(1) == labels
        sums += torch.stack([loss.detach().double() * n, (hits * readable).sum().double(),
                             n.double(), (readable.numel() - n).double()])
        if progress.wants_stats(batch_index):
            if ctx.guard is not None and accelerator.num_processes == 1:
                ctx.guard.check(accelerator, epoch)  # the progress sync below waits for the device anyway
            loss_avg, acc = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()  # the one sync point
            rate = (sums[2].item() - seen_at_start) * accelerator.num_processes / (time.perf_counter() - start)  # estimate
            waiting = data_wait / max(time.perf_counter() - start, 1e-9)
            progress.update(batch_index, f"loss {loss_avg:.4f} acc {acc:.3f} lr {lr:.2e} {rate:.1f} img/s data {waiting:.0%}")
        else:
            progress.update(batch_index)
        if accelerator.sync_gradients:
            step += 1
            if ctx.ema is not None:
                ctx.ema.update_parameters(accelerator.unwrap_model(model))
            if after_step is not None and after_step(step, batch_index, sums):
                progress.close()
                return EpochResult(None, step, batch_index, sums)
        last = time.perf_counter()
    progress.close()
    seconds = time.perf_counter() - start
    total = accelerator.reduce(sums, reduction="sum")
    count = total[2].item()
    return EpochResult({
        "train_loss": total[0].item() / max(count, 1),
        "train_top1": total[1].item() / max(count, 1),
        "lr": lr,
        "train_images_per_s": (count - seen_at_start) / seconds,
        "train_seconds": seconds,
        "data_wait_share": data_wait / seconds,
        "train_count": int(count),
        "train_unreadable": int(total[3].item()),
    }, step, batch_index, sums)


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, *, prefix: str = "val",
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None, keep: list | None = None) -> dict:
    """Loss, top-1, top-5 and balanced accuracy over the whole split. ``gather_for_metrics`` on every batch drops
    the samples the distributed sampler padded in, so each image counts exactly once whatever the world size.
    ``keep``: a list that receives each batch's readable (logits, labels) on the CPU (calibration reuses them)."""
    model.eval()  # the caller puts it back into (strategy-aware) train mode at the next epoch
    sums = torch.zeros(5, device=accelerator.device, dtype=torch.float64)  # loss, top-1, top-5, n, unreadable
    per_class = None  # (hits, count) per true class, for balanced accuracy
    start, forward = time.perf_counter(), forward or model
    for images, labels, readable in loader:
        logits = split_outputs(forward(images))[0]
        logits, labels, readable = accelerator.gather_for_metrics((logits, labels, readable))
        logits, weight = logits.float(), readable.to(torch.float32)
        if keep is not None:
            keep.append((logits[readable.bool()].cpu(), labels[readable.bool()].cpu()))
        if per_class is None:
            per_class = torch.zeros(2, logits.shape[1], device=logits.device, dtype=torch.float64)
        per_class.index_add_(1, labels, torch.stack([(logits.argmax(1) == labels) * weight, weight]).double())
        sums += torch.stack([
            (nn.functional.cross_entropy(logits, labels, reduction="none") * weight).sum().double(),
            _topk_correct(logits, labels, 1, weight).double(),
            _topk_correct(logits, labels, 5, weight).double(),
            weight.sum().double(),
            (weight.numel() - weight.sum()).double(),
        ])
    loss_sum, correct1, correct5, count, unreadable = sums.tolist()
    count = max(count, 1)
    return {
        f"{prefix}_loss": loss_sum / count,
        f"{prefix}_top1": correct1 / count,
        f"{prefix}_top5": correct5 / count,
        f"{prefix}_balanced_accuracy": balanced_accuracy(per_class),
        f"{prefix}_count": int(sums[3].item()),
        f"{prefix}_unreadable": int(unreadable),
        f"{prefix}_seconds": time.perf_counter() - start,
    }
