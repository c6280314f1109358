"""Which ``--dataset`` a ``--data-dir`` holds, for when only the folder is given.

A user who points tl at a folder expects tl to read it: ``tl train --data-dir photos`` must not train on the
built-in synthetic set. Every command with the shared data flags (train, check-data, stats, prepare, show-batch,
lr-find) resolves its dataset here, so they agree. No heavy imports: the flags module imports this, and ``--help``
must stay instant. The folder names are the ones ``tl.data.public`` reads, so detection and loading cannot drift.
"""

from __future__ import annotations

import os
from pathlib import Path

from tl.config import DataConfig

CIFAR_FOLDER = "cifar-10-batches-py"
CALTECH_FOLDER = "101_ObjectCategories"
HF_MARKERS = (("dataset_dict.json",), ("state.json", "dataset_info.json"))  # DatasetDict / Dataset.save_to_disk


def caltech_folder(root: Path) -> Path | None:
    """The ``101_ObjectCategories`` folder under ``root`` (or ``root/caltech101``, torchvision's layout), or root itself."""
    for candidate in (root / CALTECH_FOLDER, root / "caltech101" / CALTECH_FOLDER, root):
        if candidate.name == CALTECH_FOLDER and candidate.is_dir():
            return candidate
    return None


def infer_dataset(data_dir: str | Path) -> str:
    """``hf:<dir>`` for a save_to_disk folder, cifar10 or caltech101 for their layouts, else imagefolder.

    ``imagefolder`` is also the answer for a folder that does not exist or holds nothing usable: its loader's errors
    say what a class folder layout needs. The CIFAR folder itself counts as cifar10 so that its loader's error (pass
    the folder that holds it) is the one the user sees."""
    root = Path(data_dir)
    if any(all((root / name).is_file() for name in marker) for marker in HF_MARKERS):
        return f"hf:{root.resolve()}"  # absolute: config.json is read again from elsewhere (tl eval, reproduce)
    if (root / CIFAR_FOLDER).is_dir() or (root.name == CIFAR_FOLDER and root.is_dir()):
        return "cifar10"
    if caltech_folder(root) is not None:
        return "caltech101"
    return "imagefolder"


def resolve_dataset(dataset: str | None, data_dir: str | Path | None, *, fallback: str = DataConfig.dataset,
                    labels: str | Path | None = None) -> str:
    """The dataset to read: ``dataset`` when the user chose one, else ``labels`` for a label file (``--labels``),
    else inferred from ``data_dir``, else ``fallback``.

    Says on stderr what it inferred, and warns when a chosen synthetic set leaves ``data_dir`` unread."""
    if labels and not dataset:
        return "labels"
    if dataset:
        if dataset == "synthetic" and data_dir:
            _say(f"warning: --data-dir {data_dir} is ignored with --dataset synthetic; drop --dataset to read the folder",
                 warning=True)
        return dataset
    if not data_dir:
        return fallback
    inferred = infer_dataset(data_dir)
    _say(f"data: --dataset {inferred} (inferred from --data-dir; pass --dataset to choose)")
    return inferred


def _say(message: str, *, warning: bool = False) -> None:
    from tl.progress import log, setup_logging

    # This runs before any accelerator exists: under `accelerate launch` every process resolves its flags, and one
    # line (not one per process) is enough. run() sets logging up again once the accelerator knows the ranks.
    setup_logging(os.environ.get("RANK", "0") == "0")
    (log.warning if warning else log.info)(message)
