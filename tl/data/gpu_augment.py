"""Augmentation of whole batches on the device, for small decoded datasets (CIFAR-10).

A CIFAR-10 image costs nothing to decode, but cropping, flipping, upscaling and normalising 50,000 of them
per epoch one by one in DataLoader workers keeps a GPU waiting. Handed out as uint8 tensors (a quarter of
the bytes of float32 to collate and copy), a batch is cropped, flipped and resized in one ``grid_sample``
and normalised on the device. Only the training split: evaluation keeps the CPU preset (it runs once per
epoch, and calibration reads the same dataset).

Each batch draws from a generator seeded by (run seed, epoch, batch index), so a run resumed mid-epoch
continues with the same crops, as ``datasets.EpochSeeded`` does for per-image augmentation.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from tl.config import DataConfig


def wanted(cfg: DataConfig, device: torch.device) -> bool:
    """``--device-augment`` as given; by default on for CIFAR-10 with basic augmentation on a GPU."""
    if cfg.device_augment is not None:
        return cfg.device_augment
    return cfg.dataset == "cifar10" and cfg.augment == "basic" and device.type == "cuda"


def uint8_images() -> v2.Compose:
    """What the dataset hands out instead of augmented floats: the image as a uint8 (3, H, W) tensor."""
    return v2.Compose([v2.PILToTensor()])


class DeviceAugment:
    """Random resized crop (area share ``scale``, aspect ``ratio``) + horizontal flip + normalisation of a
    uint8 batch (B, 3, H, W), to float (B, 3, size, size). The crop box is clipped to the image instead of
    torchvision's ten tries at a box that fits: same areas and aspects in the usual range, one batched op."""

    def __init__(self, *, size: int, mean: tuple[float, ...], std: tuple[float, ...], seed: int,
                 scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> None:
        self.size, self.seed, self.scale, self.ratio, self.flip_p = size, seed, scale, ratio, flip_p
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, images: torch.Tensor, batch_index: int) -> torch.Tensor:
        device, count = images.device, images.shape[0]
        generator = torch.Generator(device=device)
        generator.manual_seed(hash((self.seed, self.epoch, batch_index)) & 0x7FFF_FFFF_FFFF_FFFF)
        uniform = lambda low, high: low + (high - low) * torch.rand(count, device=device, generator=generator)
        area = uniform(*self.scale)
        aspect = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # shares of the image
        centre_x, centre_y = uniform(-1.0, 1.0) * (1 - width), uniform(-1.0, 1.0) * (1 - height)  # in [-1, 1] coordinates
        flip = torch.where(torch.rand(count, device=device, generator=generator) < self.flip_p, -1.0, 1.0)
        zeros = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width * flip, zeros, centre_x], 1), torch.stack([zeros, height, centre_y], 1)], 1)
        grid = F.affine_grid(theta, [count, 3, self.size, self.size], align_corners=False)
        pixels = F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.mean.device != device:  # once: a copy from pageable host memory on every batch would wait for the GPU
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return (pixels - self.mean) / self.std
