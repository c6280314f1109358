"""Train and eval preprocessing presets, built as twins from the model's input size and mean/std.

Model: torchvision's ``references/classification/presets.py``. The geometric steps come first and accept
either input ``tl.data.decode.read_image`` hands out: a uint8 tensor (JPEGs, decoded by libjpeg-turbo) or an RGB
PIL image (everything else); only the cropped result becomes float. Measured on the bees/ants photos, 2
workers: PIL decode + crops on the full-size tensor ran at 0.68x the tutorials' ImageFolder + PIL pipeline,
torchvision.io decode + the same crops at 1.13x.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torchvision.transforms import v2


def decode_short_side(transform: Callable | None) -> int | None:
    """The smallest short side an image may be decoded at and still give ``transform`` the pixels it would get
    at full size (``tl.data.decode.read_image(path, min_short_side)``); None: decode at full size.

    Read from the transform's first step, so a preset built elsewhere is understood too, and anything else
    (a rotation first, a lambda, no Compose) decodes at full size. ``Resize(R)`` then a crop (evaluation): R.
    ``RandomResizedCrop(S, scale=(a, .), ratio=(r0, r1))``: its crop covers at least a of the area, so its
    short side is at least sqrt(a * min(r0, 1/r1)) of the image's (sqrt(area) >= the short side); the image
    needs S / that, 517 px for 224 px crops from 25% of the area at ratios 3/4..4/3. The ratio term is the
    margin the issue asks for: the smallest crop from a 4:3 photo has 15% more pixels a side than S."""
    steps = getattr(transform, "transforms", None)
    first = steps[0] if steps else None
    if isinstance(first, v2.Resize) and first.max_size is None and len(first.size) == 1:
        return int(first.size[0])
    if isinstance(first, v2.RandomResizedCrop):
        smallest = first.scale[0] * min(first.ratio[0], 1.0 / first.ratio[1])
        return math.ceil(max(first.size) / math.sqrt(smallest)) if smallest > 0 else None
    return None


class CropBeforeDecode:
    """A transform that starts with ``RandomResizedCrop``, run on a file path with the crop drawn before decoding:
    its box depends only on the image's size, which the header gives, so a large JPEG is decoded at the DCT scale
    that box allows (``tl.data.decode.read_image_region``) rather than the worst case of every box
    (``decode_short_side``). The box is drawn with torchvision's own ``RandomResizedCrop.get_params`` (the same
    random numbers, in the same order, as the transform would draw on the full image), then cropped and resized
    with the transform's interpolation, and the remaining steps run as before."""

    def __init__(self, crop: v2.RandomResizedCrop, rest: Callable) -> None:
        self.crop, self.rest = crop, rest

    @classmethod
    def of(cls, transform: Callable | None) -> "CropBeforeDecode | None":
        steps = getattr(transform, "transforms", None)
        if steps and type(steps[0]) is v2.RandomResizedCrop:
            return cls(steps[0], v2.Compose(list(steps[1:])))
        return None

    def draw(self, width: int, height: int) -> tuple[int, int, int, int]:
        from torchvision.transforms import RandomResizedCrop

        size_only = torch.empty(1, 1, 1, dtype=torch.uint8).expand(1, height, width)  # no pixels behind it
        return RandomResizedCrop.get_params(size_only, list(self.crop.scale), list(self.crop.ratio))

    def __call__(self, path) -> torch.Tensor:
        from tl.data.decode import read_image_region

        return self._finish(*read_image_region(path, self.draw, max(self.crop.size)))

    def from_decoded(self, image, full_size: tuple[int, int]) -> torch.Tensor:
        """The same for an image decoded earlier at a reduced scale (the decoded-image cache): the box is drawn on
        the file's full size, as when streaming, so a cached and a streamed run crop the same part of each photo
        with the same random numbers (their pixels differ only by the DCT scale each decoded at)."""
        from tl.data.decode import image_size, map_box

        return self._finish(image, map_box(self.draw(*full_size), full_size, image_size(image)))

    def _finish(self, image, box: tuple[int, int, int, int]) -> torch.Tensor:
        top, left, height, width = box
        cropped = v2.functional.resized_crop(image, top, left, height, width, list(self.crop.size),
                                             interpolation=self.crop.interpolation, antialias=self.crop.antialias)
        return self.rest(cropped)


def _to_normalized_float(mean: tuple[float, ...], std: tuple[float, ...]) -> list[Callable]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_pixels(*, size: int, resize: int) -> v2.Compose:
    """``eval_transform``'s geometry alone: a uint8 (3, size, size) tensor, normalised later by ``BatchNormalize``.

    Loader workers then send a quarter of the bytes and skip the float conversion; the batch is normalised in
    one vectorised pass where the model runs."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), v2.ToImage()])


class BatchNormalize:
    """uint8 images (N, 3, H, W) -> float32 ``(x / 255 - mean) / std`` in one multiply-add, channels_last when asked."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self._on: dict = {}  # device -> (scale, shift) there: a copy from pageable host memory per batch waits for the GPU

    def __call__(self, images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out.copy_(images)
        if images.device not in self._on:
            self._on[images.device] = (self.scale.to(images.device), self.shift.to(images.device))
        scale, shift = self._on[images.device]
        return out.mul_(scale).add_(shift)


def eval_transform(*, size: int, resize: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Resize the short side to ``resize``, centre-crop ``size``: the evaluation protocol of ImageNet weights."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), v2.ToImage(), *_to_normalized_float(mean, std)])


def train_pixels(*, size: int, augment: str = "basic", crop_scale_min: float = 0.25) -> v2.Compose:
    """A training preset's augmentation alone, handing out uint8 (3, size, size) tensors: loader workers send a
    quarter of the bytes of float32, and ``DeviceNormalize`` finishes the batch where the model runs."""
    presets = {
        "basic": [v2.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), antialias=True), v2.RandomHorizontalFlip()],
        "strong": [v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                   v2.RandomRotation(15), v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)],
        "trivial": [v2.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                    v2.TrivialAugmentWide()],
    }
    if augment not in presets:
        raise ValueError(f"no pixel-only preset for augment={augment!r}")
    return v2.Compose([*presets[augment], v2.ToImage()])


def train_transform(
    *,
    size: int,
    resize: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: str = "basic",
    crop_scale_min: float = 0.25,
) -> v2.Compose:
    """Presets: ``basic`` random resized crop + horizontal flip (the tutorials' recipe); ``strong`` the
    Caltech-101 write-up's (crop 80-100%, flip, rotation +-15 degrees, colour jitter); ``trivial`` basic +
    TrivialAugmentWide; ``none`` as evaluation. Normalised float tensors (``train_pixels`` + normalisation)."""
    if augment == "none":
        return eval_transform(size=size, resize=resize, mean=mean, std=std)
    pixels = train_pixels(size=size, augment=augment, crop_scale_min=crop_scale_min)
    return v2.Compose([*pixels.transforms, *_to_normalized_float(mean, std)])


class DeviceNormalize:
    """``ctx.augment`` for batches of ``train_pixels``: uint8 -> normalised float on the device, channels_last
    when the model is. (images, batch index) -> images, the interface of ``tl.data.gpu_augment.DeviceAugment``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], *, channels_last: bool = False) -> None:
        self.normalize, self.channels_last = BatchNormalize(mean, std), channels_last

    def set_epoch(self, epoch: int) -> None:  # nothing random here
        pass

    def __call__(self, images: torch.Tensor, batch_index: int) -> torch.Tensor:
        return self.normalize(images, channels_last=self.channels_last)


def batch_mix(*, num_classes: int, mixup: float, cutmix: float) -> Callable | None:
    """MixUp and/or CutMix on whole batches (one of them per batch when both are on); labels become soft."""
    mixes = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
