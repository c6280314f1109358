"""CIFAR-10 (the official python batches) and Caltech-101 (``101_ObjectCategories/``), read from disk.

torchvision downloads both when ``--download`` is given and the machine is online; reading is done here so
that a missing download is one clear message, CIFAR's 50,000 training images can be split into train/val,
and Caltech-101 needs no scipy (torchvision's Caltech101 imports it for annotations tl does not use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tl.data.infer import CALTECH_FOLDER, CIFAR_FOLDER, caltech_folder  # one list of layouts for reading and inferring
from tl.errors import TLError

CALTECH_BACKGROUND = "BACKGROUND_Google"


class ArrayImages(Dataset):
    """Images held as one uint8 array (N, H, W, 3) with integer labels: small decoded sets such as CIFAR-10."""

    def __init__(self, images: np.ndarray, labels: list[int], classes: list[str], transform: Callable | None = None) -> None:
        self.images = images
        self.targets = list(labels)
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), self.targets[index], True


def _download_failed(name: str, exc: Exception, root: Path) -> TLError:
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return TLError(f"could not download {name} into {root} ({reason})",
                   f"offline? download it elsewhere and copy it under --data-dir {root}")


def cifar10_arrays(root: Path, *, download: bool) -> tuple[np.ndarray, list[int], np.ndarray, list[int], list[str]]:
    """(train images, train labels, test images, test labels, class names) from ``root/cifar-10-batches-py``."""
    from torchvision.datasets import CIFAR10

    if download:
        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # URLError, socket and SSL errors: all mean "no download"
            raise _download_failed("CIFAR-10", exc, root)
    if not (root / CIFAR_FOLDER).is_dir():
        raise TLError(f"--data-dir: no {CIFAR_FOLDER}/ under {root}",
                      "pass the folder that holds it, or add --download when online")
    try:
        train, test = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted" (md5 mismatch)
        raise TLError(f"--data-dir: {root / CIFAR_FOLDER} is incomplete or corrupt ({exc})",
                      "delete it and download it again (--download)")
    return train.data, list(train.targets), test.data, list(test.targets), list(train.classes)


def caltech_root(root: Path, *, download: bool) -> Path:
    """The ``101_ObjectCategories`` folder under ``root`` (or ``root/caltech101``, torchvision's layout)."""
    found = caltech_folder(root)
    if found is not None:
        return found
    if download:
        from torchvision.datasets import Caltech101

        try:
            Caltech101(str(root), download=True)
        except Exception as exc:
            raise _download_failed("Caltech-101", exc, root)
        return root / "caltech101" / CALTECH_FOLDER
    raise TLError(f"--data-dir: no {CALTECH_FOLDER}/ under {root}", "pass the folder that holds it, or add --download when online")


def caltech_classes(folder: Path, *, background: bool) -> list[str]:
    """Class folders; ``BACKGROUND_Google`` (clutter, not a category) only when asked for; stray files ignored."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [n for n in names if background or n != CALTECH_BACKGROUND]
