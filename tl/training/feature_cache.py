"""Feature caching for the ``linear`` strategy: the frozen backbone sees each image once per run.

With a frozen backbone (in eval mode) and no augmentation, every epoch feeds the head exactly the same
features, so computing them again is wasted work: the backbone's forward pass is nearly all of a linear
probe's cost. The features of the train and val images are computed in one pass and kept on the device;
each epoch then trains the head alone, in the order and with the batches the image loader would have
given (its own batch sampler is reused), so the head ends up with the same weights as without the cache.

It stays off where it would change results or cannot help: augmentation or MixUp/CutMix (the images
change every epoch), auxiliary heads, gradient accumulation, several processes (each would need its
shard), or a model whose output is not its head's output. ``--no-cache-features`` turns it off.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tl.config import TrainConfig
from tl.models.heads import ClassifierHead, get_head
from tl.runtime import StopRequest, ignore_stop_signals

log = logging.getLogger("tl")

MAX_CACHE_BYTES = 4 << 30  # beyond this the cache would crowd out the model on a GPU; the loop runs as usual


def why_not(cfg: TrainConfig, strategy: str, model: nn.Module, num_processes: int) -> str | None:
    """Why features cannot be cached for this run, or None when they can."""
    if strategy != "linear":
        return "only the linear strategy keeps the whole backbone frozen"
    if cfg.data.augment != "none" or cfg.data.mixup or cfg.data.cutmix:
        return (f"--augment {cfg.data.augment} changes the images every epoch" if cfg.data.augment != "none"
                else "MixUp/CutMix change the images every batch")
    if get_head(model).aux:
        return "the model has auxiliary heads"
    if cfg.optim.grad_accum > 1:
        return "--grad-accum is above 1"
    if num_processes > 1:
        return "several processes would each need the features of their own shard"
    return None


def classifier_head(model: nn.Module) -> ClassifierHead:
    """The module whose input is the pooled feature vector (inside squeezenet's ``PooledHead`` too)."""
    return next(m for m in model.get_submodule(get_head(model).main).modules() if isinstance(m, ClassifierHead))


class CachedBatches:
    """Batches of cached (features, labels, readable), drawn with a given batch sampler."""

    def __init__(self, cache: "FeatureCache", split: str, batch_indices: Callable[[], Iterator[list[int]]],
                 length: int, skip: int = 0) -> None:
        self.cache, self.split, self.batch_indices, self.length, self.skip = cache, split, batch_indices, length, skip

    def __len__(self) -> int:
        return self.length - self.skip

    def __iter__(self):
        features, labels, readable = self.cache.tensors[self.split]
        for indices in itertools.islice(self.batch_indices(), self.skip, None):
            index = torch.as_tensor(indices)
            if features.device.type == "cuda":  # a copy from pageable memory would wait for the queued steps
                index = index.pin_memory().to(features.device, non_blocking=True)
            else:
                index = index.to(features.device)
            yield features[index], labels[index], readable[index]


class FeatureCache:
    """The head's input for every train and val image, computed on first use."""

    def __init__(self, model: nn.Module, accelerator: Accelerator, datasets: dict[str, Dataset], *,
                 batch_size: int, num_workers: int) -> None:
        self.model = model
        self.head = classifier_head(accelerator.unwrap_model(model))
        self.accelerator = accelerator
        self.datasets = datasets
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.seconds: dict[str, float] = {}  # per split: the train split's count as training time, val's as evaluation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The model's output from cached features: only the head runs, under the run's autocast, and like the
        prepared model's output it comes back in float32 (a class-weighted loss refuses bf16 logits)."""
        with self.accelerator.autocast():
            return self.head(features).float()

    @torch.no_grad()
    def build(self, stop: StopRequest | None = None) -> bool:
        """Compute every split's features; False (and a log line) when the model's output turned out not to
        be its head's output, or the cache would be too large: the run then goes on without it."""
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()  # the frozen backbone already is; the head must not update its statistics here
        captured: dict[str, torch.Tensor] = {}
        hooks = [self.head.register_forward_pre_hook(lambda m, args: captured.__setitem__("in", args[0])),
                 self.head.register_forward_hook(lambda m, args, out: captured.__setitem__("out", out))]
        try:
            for split, dataset in self.datasets.items():
                start = time.perf_counter()
                # A generator of its own: a loader without one seeds its workers from the global RNG, and the
                # head's dropout would then see another stream than a run without the cache.
                # Without gradients a larger batch fits and runs faster (oneDNN, cuDNN); results are per image.
                loader = DataLoader(dataset, batch_size=max(2 * self.batch_size, 32), shuffle=False, num_workers=self.num_workers,
                                    pin_memory=self.accelerator.device.type == "cuda", generator=torch.Generator().manual_seed(0),
                                    worker_init_fn=ignore_stop_signals)
                parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
                for images, labels, readable in loader:
                    if stop is not None and stop.requested:  # one process only: the cache is off with several
                        raise stop.stopped(None)
                    output = self.model(images.to(self.accelerator.device, non_blocking=True))
                    if not parts and not (isinstance(output, torch.Tensor) and torch.equal(output, captured["out"])):
                        log.info("feature cache: off, the model's output is not its head's output")
                        return False
                    parts.append((captured["in"].detach(), labels, readable))
                    if sum(p[0].numel() * p[0].element_size() for p in parts) > MAX_CACHE_BYTES:
                        log.info(f"feature cache: off, the features would take more than {MAX_CACHE_BYTES >> 30} GiB")
                        return False
                device = self.accelerator.device
                self.tensors[split] = (torch.cat([p[0] for p in parts]),
                                       torch.cat([p[1] for p in parts]).to(device),
                                       torch.cat([p[2] for p in parts]).to(device))
                self.seconds[split] = time.perf_counter() - start
        finally:
            for hook in hooks:
                hook.remove()
            for module, training in modes.items():
                module.train(training)
        total = sum(len(t[0]) for t in self.tensors.values())
        log.info(f"feature cache: {total} images through the backbone once in {sum(self.seconds.values()):.1f}s; "
                 "every epoch now trains the head alone")
        return True

    def train_batches(self, train_loader, skip: int) -> CachedBatches:
        """This epoch's training batches, in the order ``train_loader`` (after ``set_epoch``) would give them."""
        return CachedBatches(self, "train", lambda: iter(train_loader.batch_sampler), len(train_loader), skip)

    def val_batches(self) -> CachedBatches:
        count = len(self.tensors["val"][0])
        starts = range(0, count, self.batch_size)
        return CachedBatches(self, "val", lambda: (list(range(s, min(s + self.batch_size, count))) for s in starts), len(starts))


def ready(cache: FeatureCache | None, stop: StopRequest | None = None) -> tuple[FeatureCache | None, float]:
    """(the cache to use this epoch, seconds spent building it now): built at first use; None if that failed.

    A stop asked for during the pass (it can take minutes) ends the run there: nothing new is trained yet to save."""
    if cache is None or cache.tensors:
        return cache, 0.0
    return (cache, cache.seconds["train"]) if cache.build(stop) else (None, 0.0)


def plan(cfg: TrainConfig, strategy: str, model: nn.Module, accelerator: Accelerator, datasets: dict[str, Dataset],
         num_workers: int) -> FeatureCache | None:
    """A FeatureCache when this run can use one; otherwise None, with a log line where the user could change that."""
    if not cfg.run.cache_features:
        return None
    reason = why_not(cfg, strategy, accelerator.unwrap_model(model), accelerator.num_processes)
    if reason:
        if strategy == "linear":
            hint = " (--augment none lets the backbone's features be computed once)" if "augment" in reason else ""
            log.info(f"feature cache: off, {reason}{hint}")
        return None
    return FeatureCache(model, accelerator, datasets, batch_size=cfg.data.batch_size, num_workers=num_workers)
