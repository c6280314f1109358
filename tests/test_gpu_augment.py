"""Per-batch augmentation on the device: the geometry is right, the draws are seeded, and a CIFAR-10 run uses it."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from tests.conftest import TINY, cli, read_metrics
from tests.test_datasets import make_cifar, no_md5  # noqa: F401  (the fixture)
from tl.config import DataConfig
from tl.data.gpu_augment import DeviceAugment
from tl.errors import TLError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    pixels = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", align_corners=False)
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_whole_image_crop_is_a_resize_and_normalisation():
    images = _batch()
    keep = DeviceAugment(size=48, mean=MEAN, std=STD, seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    torch.testing.assert_close(keep(images, 1), _resized(images, 48), rtol=1e-4, atol=1e-4)
    flip = DeviceAugment(size=48, mean=MEAN, std=STD, seed=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(flip(images, 1), _resized(images, 48).flip(-1), rtol=1e-4, atol=1e-4)


def test_crops_are_seeded_by_epoch_and_batch():
    images = _batch()
    augment = DeviceAugment(size=24, mean=MEAN, std=STD, seed=3)
    first = augment(images, 1)
    assert first.shape == (4, 3, 24, 24) and first.dtype == torch.float32
    assert torch.equal(augment(images, 1), first)  # a resumed run redraws the same crops
    assert not torch.equal(augment(images, 2), first)
    augment.set_epoch(1)
    assert not torch.equal(augment(images, 1), first)
    assert not torch.allclose(first[0], _resized(images, 24)[0])  # it does crop


def test_device_augment_flag_is_checked():
    with pytest.raises(TLError, match="--device-augment"):
        DataConfig(dataset="synthetic", device_augment=True)


def test_cifar_run_augments_on_the_device(tmp_path, no_md5):  # noqa: F811
    make_cifar(tmp_path)
    out = tmp_path / "run"
    result = cli("train", *TINY, "--dataset", "cifar10", "--data-dir", tmp_path, "--epochs", "2", "--batch-size", "8",
                 "--device-augment", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = read_metrics(out)
    assert all(m["device_augment"] for m in metrics) and metrics[-1]["val_count"] == 10
    assert json.loads((out / "config.json").read_text())["resolved"]["device_augment"] is True
