"""Datasets: ``build_datasets(cfg, train_tf, eval_tf)`` gives train/val (and test when there is one) + class names.

Every loader hands out RGB PIL images: real collections mix greyscale, palette, RGBA and CMYK files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from tl.config import DataConfig
from tl.data import splits
from tl.data.image_files import ImageFiles
from tl.data.splits import cache_file_list, cached_file_list, current_sizes, folder_times, split_with_manifest, stratified_split
from tl.data.synthetic import SyntheticShapes
from tl.errors import TLError

log = logging.getLogger("tl")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VAL_FOLDER_NAMES = ("val", "valid", "validation")


@dataclass
class DatasetBundle:
    train: Dataset
    val: Dataset
    test: Dataset | None
    class_names: list[str]
    fingerprint: str  # identifies the data a run saw (file list + sizes, or the generator's settings)
    multilabel: bool = False  # labels are 0/1 vectors, one entry per class (tl.data.labelled, hf Sequence(ClassLabel))


# --------------------------------------------------------------------------------------------------
# Built-in synthetic set
# --------------------------------------------------------------------------------------------------

def _synthetic(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None) -> DatasetBundle:
    common = dict(num_classes=cfg.synthetic_classes, size=cfg.synthetic_size, seed=seed)
    train = SyntheticShapes(per_class=cfg.synthetic_per_class, split="train", transform=train_tf, **common)
    eval_count = max(2, cfg.synthetic_per_class // 4)
    val = SyntheticShapes(per_class=eval_count, split="val", transform=eval_tf, **common)
    test = SyntheticShapes(per_class=eval_count, split="test", transform=eval_tf, **common)
    fingerprint = f"synthetic:{cfg.synthetic_classes}x{cfg.synthetic_per_class}@{cfg.synthetic_size}:seed{seed}"
    return DatasetBundle(train, val, test, train.classes, fingerprint)


# --------------------------------------------------------------------------------------------------
# Folders of images
# --------------------------------------------------------------------------------------------------


def scan_images(folder: Path, extensions: tuple[str, ...] | None = IMAGE_EXTENSIONS,
                broken: dict[Path, str] | None = None) -> dict[Path, int]:
    """Image files under ``folder`` (every file with ``extensions=None``), recursively, with their sizes in bytes,
    in a stable (sorted) order; symlinks named like images whose target is gone go into ``broken`` (with why) when
    it is given, found in the same walk.

    Hidden files and folders are skipped; symlinked files are included, symlinked folders are not entered (a
    link loop cannot hang it). ``os.scandir`` entries carry the file type, so the walk costs one stat per image
    (for its size, which the data fingerprint needs) and no more: 270,000 files in 100 folders took 4.1 s with
    ``Path.rglob`` + ``is_file`` and a second pass of stats for the fingerprint, and 1.1 s this way.
    """
    found: list[tuple[tuple[str, ...], str, int]] = []
    pending = [(str(folder), ())]
    while pending:
        directory, parts = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, (*parts, entry.name)))
                elif extensions is None or os.path.splitext(entry.name)[1].lower() in extensions:
                    if entry.is_file():
                        found.append(((*parts, entry.name), entry.path, entry.stat().st_size))
                    elif broken is not None and entry.is_symlink():  # is_file() follows the link: its target is gone
                        broken[Path(entry.path)] = f"broken link: its target {os.readlink(entry.path)} does not exist"
            except OSError:  # deleted or unreadable between listing and stat
                continue
    found.sort(key=lambda item: item[0])  # the order of Path comparison: part by part
    return {Path(path): size for _, path, size in found}


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order; hidden files are skipped."""
    return list(scan_images(folder))


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_samples(root: Path, classes: list[str], sizes: dict[Path, int]) -> list[tuple[Path, int]]:
    """(path, class index) of the images in ``root/<class>/`` for each of ``classes`` (a missing folder has none);
    their sizes are added to ``sizes``."""
    samples = []
    for label, name in enumerate(classes):
        found = scan_images(root / name)
        sizes.update(found)
        samples += [(path, label) for path in found]
    return samples


def _samples(root: Path, classes: list[str], sizes: dict[Path, int]) -> list[tuple[Path, int]]:
    """``_class_samples`` of a split folder whose class folders must all be among ``classes`` (train/'s)."""
    unknown = sorted(set(_class_folders(root)) - set(classes))
    if unknown:
        raise TLError(f"{root / unknown[0]} is a class that {root.parent / 'train'} does not have",
                      "every class in val/ and test/ must also be a folder in train/")
    return _class_samples(root, classes, sizes)


def _from_file_list(manifest: Path | None, root: Path,
                    sizes: dict[Path, int]) -> tuple[list[str], dict[str, list[tuple[Path, int]]]] | None:
    """Class names and each split's samples from the file list cached in a run's manifest; None without one.
    The recorded sizes go into ``sizes`` when the list still looks current (``splits.current_sizes``), so the
    fingerprint needs no stat per file; otherwise every file is stat'ed, as before."""
    cached = cached_file_list(manifest)
    if cached is None:
        return None
    classes, keyed, facts = cached
    parts = {name: [(root / key, label) for key, label in pairs] for name, pairs in keyed.items()}
    recorded = current_sizes(root, keyed, facts)
    if recorded is not None:
        sizes.update({path: size for name, samples in parts.items() for (path, _), size in zip(samples, recorded[name])})
    elif facts is not None:  # a folder of the list changed: say what the list leaves out
        _count_unlisted(root, keyed, manifest, sizes)
    return classes, parts


def _count_unlisted(root: Path, keyed: dict[str, list[tuple[str, int]]], manifest: Path, sizes: dict[Path, int]) -> None:
    """Warn about images added to the list's folders since it was made (a resumed run or `tl eval` keeps its files
    on purpose; a run started on a `tl split` split may not expect it); ``splits.unlisted_files`` says which."""
    unlisted = splits.unlisted_files(root, keyed, sizes, IMAGE_EXTENSIONS)
    if unlisted:
        log.warning(f"data: {len(unlisted)} image(s) added since {manifest} listed the files (e.g. {unlisted[0]}) "
                    "are left out; to use them, start a new run in another --out (after `tl split --overwrite` for a split)")


def _keep_file_list(manifest: Path | None, root: Path, classes: list[str], parts: dict[str, list[tuple[Path, int]]],
                    sizes: dict[Path, int]) -> None:
    """Cache the file list in the run's manifest, so resume, `tl eval` and `tl reproduce` need no walk, with the
    files' sizes and their folders' mtimes, so that they need no stat per file either."""
    if manifest is None:
        return
    keyed = {name: [(relative_key(p, root), l) for p, l in samples] for name, samples in parts.items() if samples}
    known = all(p in sizes for samples in parts.values() for p, _ in samples)
    cache_file_list(manifest, classes, keyed,
                    {name: [sizes[p] for p, _ in parts[name]] for name in keyed} if known else None,
                    folder_times(root, keyed) if known else None)


def check_every_class(classes: list[str], splits: dict[str, list[tuple[Path, int]]]) -> None:
    """A class with no image in train (or in val) cannot be learnt (or measured): say which, before training."""
    for split, samples in splits.items():
        present = {label for _, label in samples}
        missing = [name for i, name in enumerate(classes) if i not in present]
        if missing:
            raise TLError(f"--data-dir: {split} has no image of class(es) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""),
                          f"add images to those {split} folders, or remove the empty class folders")


def relative_key(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a string; string slicing, since ``Path.relative_to`` costs ~7 us a call,
    seconds on a folder of 300,000 files."""
    text, prefix = str(path), str(root).rstrip(os.sep) + os.sep
    return text[len(prefix):] if text.startswith(prefix) else os.path.relpath(text, root)


def _fingerprint(samples: list[tuple[Path, int]], root: Path, sizes: dict[Path, int]) -> str:
    """A hash of (relative path, label, size) of every file; files neither the scan nor a current cached list
    sized are looked at now, so a file that is gone since the list was made is one clear error."""
    digest = hashlib.sha256()
    gone = []
    for path, label in samples:
        size = sizes.get(path)
        if size is None:
            try:
                size = path.stat().st_size
            except OSError:
                gone.append(path)
                continue
        digest.update(f"{relative_key(path, root)}\t{label}\t{size}\n".encode())
    if gone:
        raise TLError(f"{len(gone)} file(s) of the run's file list are gone (e.g. {gone[0]})",
                      "restore them, or list the folder again: a new run with --overwrite (or another --out), or delete OUT/split.json")
    return "sha256:" + digest.hexdigest()[:16]


def _imagefolder(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None) -> DatasetBundle:
    root = Path(cfg.data_dir or "")
    if not root.is_dir():
        raise TLError(f"--data-dir: {root} is not a folder", "pass the folder that holds train/ and val/ (or one folder per class)")
    sizes: dict[Path, int] = {}
    cached = _from_file_list(manifest, root, sizes)
    if cached is not None:  # the run's own file list: no walk over the folder on resume, `tl eval`, `tl reproduce`
        classes, parts = cached
        if "test" not in parts and (root / "train").is_dir() and (root / "test").is_dir():  # test/ added after training
            parts["test"] = _samples(root / "test", classes, sizes)
    else:
        classes, parts = _scan_imagefolder(root, cfg, seed, manifest, sizes)
    train_samples, val_samples, test_samples = parts["train"], parts["val"], parts.get("test") or None
    if len(classes) < 2:
        raise TLError(f"--data-dir: {root} has {len(classes)} class folder(s)",
                      "expected DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg with at least two classes")
    if not train_samples:
        raise TLError(f"--data-dir: no images found under {root}", f"supported extensions: {' '.join(IMAGE_EXTENSIONS)}")
    if not val_samples:
        raise TLError(f"--data-dir: no validation images under {root}", "add val/<class>/ folders or more images per class")
    check_every_class(classes, {"train": train_samples, "val": val_samples})
    fingerprint = _fingerprint(train_samples + val_samples + (test_samples or []), root, sizes)
    if cached is None:
        _keep_file_list(manifest, root, classes, parts, sizes)
    return DatasetBundle(
        ImageFiles(train_samples, classes, train_tf),
        ImageFiles(val_samples, classes, eval_tf),
        ImageFiles(test_samples, classes, eval_tf) if test_samples else None,
        classes,
        fingerprint,
    )


def _scan_imagefolder(root: Path, cfg: DataConfig, seed: int, manifest: Path | None,
                      sizes: dict[Path, int]) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names and train/val/test samples of a folder tree, walked now (see ``_imagefolder`` for the layouts)."""
    val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir():
        classes = _class_folders(root / "train")
        train_samples = _samples(root / "train", classes, sizes)
        if val_dir is not None:
            val_samples = _samples(val_dir, classes, sizes)
        else:  # train/ without val/: hold out part of train/
            kept, held = stratified_split([l for _, l in train_samples], cfg.fraction("val"), seed)
            train_samples, val_samples = [train_samples[i] for i in kept], [train_samples[i] for i in held]
        test_samples = _samples(root / "test", classes, sizes) if (root / "test").is_dir() else []
        return classes, {"train": train_samples, "val": val_samples, "test": test_samples}
    # one folder per class: split it, and pin the split in the run's manifest
    classes = _class_folders(root)
    everything = _samples(root, classes, sizes)
    split = split_with_manifest([relative_key(p, root) for p, _ in everything], [l for _, l in everything],
                                val_fraction=cfg.fraction("val"), test_fraction=cfg.fraction("test"), seed=seed, manifest=manifest)
    return classes, {name: [everything[i] for i in split[name]] for name in ("train", "val", "test")}


class EpochSeeded(Dataset):
    """Draws each sample's augmentation from a seed of its own: (run seed, epoch, index).

    The augmentation an image gets then depends neither on which process or worker loads it nor on what
    was loaded before, so a run resumed mid-epoch (whose loader prefetched batches the state never saw)
    continues exactly, and runs with 0 or 8 workers see the same images. The epoch lives in shared
    memory so persistent workers see it change.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        import torch

        self.base = base
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        import torch

        sample_seed = hash((self.seed, int(self._epoch[0]), index)) & 0x7FFF_FFFF_FFFF_FFFF
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone, the one transforms draw from: torch.manual_seed also queues a CUDA, XPU and
            # MTIA seeding with a formatted stack trace each while those are not initialised, 0.5 ms a sample.
            torch.default_generator.manual_seed(sample_seed)
            return self.base[index]

    def __getattr__(self, name: str):  # classes, targets, samples: as the wrapped dataset has them
        if name in ("base", "seed", "_epoch"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _cifar10(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None) -> DatasetBundle:
    """The 50,000 training images split into train/val (seeded, stratified); the 10,000 test images are ``test``."""
    from tl.data.public import ArrayImages, cifar10_arrays

    root = Path(cfg.data_dir or "data")
    images, labels, test_images, test_labels, classes = cifar10_arrays(root, download=cfg.download)
    kept, held = stratified_split(labels, cfg.fraction("val"), seed)
    take = lambda idx: (images[idx], [labels[i] for i in idx])
    return DatasetBundle(
        ArrayImages(*take(kept), classes, train_tf),
        ArrayImages(*take(held), classes, eval_tf),
        ArrayImages(test_images, test_labels, classes, eval_tf),
        classes,
        f"cifar10:{len(labels)}+{len(test_labels)}:val{cfg.fraction('val')}:seed{seed}",
    )


def _caltech101(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None) -> DatasetBundle:
    """No official split exists: a seeded, stratified train/val/test split (default 50/25/25), kept in the manifest."""
    from tl.data.public import caltech_classes, caltech_root

    folder = caltech_root(Path(cfg.data_dir or "data"), download=cfg.download)
    sizes: dict[Path, int] = {}
    cached = _from_file_list(manifest, folder, sizes)
    if cached is not None:  # the run's own file list and split (see _imagefolder)
        classes, parts = cached
    else:
        classes = caltech_classes(folder, background=cfg.caltech_background)
        everything = _class_samples(folder, classes, sizes)
        if not everything:
            raise TLError(f"--data-dir: no images under {folder}", "is the download complete?")
        split = split_with_manifest([relative_key(p, folder) for p, _ in everything], [l for _, l in everything],
                                    val_fraction=cfg.fraction("val"), test_fraction=cfg.fraction("test"), seed=seed, manifest=manifest)
        parts = {name: [everything[i] for i in split[name]] for name in ("train", "val", "test")}
    check_every_class(classes, {name: parts[name] for name in ("train", "val")})
    everything = sorted((s for samples in parts.values() for s in samples), key=lambda s: (s[1], s[0]))  # class, then path
    fingerprint = _fingerprint(everything, folder, sizes)
    if cached is None:
        _keep_file_list(manifest, folder, classes, parts, sizes)
    pick = lambda name, tf: ImageFiles(parts[name], classes, tf)
    return DatasetBundle(pick("train", train_tf), pick("val", eval_tf), pick("test", eval_tf) if parts.get("test") else None,
                         classes, fingerprint)


def _huggingface(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None) -> DatasetBundle:
    """``hf:<hub id or save_to_disk folder>``: its train/validation/test splits; no validation split: part of train."""
    from tl.data import hf

    name = cfg.dataset.split(":", 1)[1]
    loaded = hf.load(name)
    splits = dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}
    if "train" not in splits:
        raise TLError(f"--dataset {cfg.dataset}: no train split (it has {', '.join(splits)})", "save a DatasetDict with a train split")
    train_split = splits["train"]
    image_col = hf.pick_column(train_split.column_names, cfg.image_column, hf.IMAGE_COLUMNS, "--image-column")
    label_col = hf.pick_column(train_split.column_names, cfg.label_column, hf.LABEL_COLUMNS, "--label-column")
    classes = hf.class_names(train_split, label_col)
    val_name = next((n for n in hf.VAL_SPLITS if n in splits), None)
    make = lambda split, tf, idx=None: hf.HFImages(split, image_col, label_col, classes, tf, idx)
    if val_name:
        train, val = make(train_split, train_tf), make(splits[val_name], eval_tf)
    else:
        if hf.is_multilabel(train_split, label_col):  # tuples of class indices: iterative stratification
            from tl.data.multilabel_split import iterative_split

            held_out = iterative_split(make(train_split, None).targets, {"train": 1 - cfg.fraction("val"), "val": cfg.fraction("val")}, seed)
            kept, held = held_out["train"], held_out["val"]
        else:
            kept, held = stratified_split([int(v) for v in train_split[label_col]], cfg.fraction("val"), seed)
        train, val = make(train_split, train_tf, kept), make(train_split, eval_tf, held)
    test = make(splits["test"], eval_tf) if "test" in splits else None
    fingerprint = f"hf:{name}:" + ":".join(f"{k}={getattr(v, '_fingerprint', len(v))}" for k, v in sorted(splits.items()))
    return DatasetBundle(train, val, test, classes, fingerprint, multilabel=hf.is_multilabel(train_split, label_col))


def _labels(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None) -> DatasetBundle:
    """``--labels FILE.csv``: a label file beside a folder of images (tl.data.labelled)."""
    from tl.data import labelled

    return DatasetBundle(*labelled.build(cfg, seed, train_tf, eval_tf, manifest))


_BUILDERS = {"synthetic": _synthetic, "imagefolder": _imagefolder, "cifar10": _cifar10, "caltech101": _caltech101,
             "labels": _labels}


def build_datasets(cfg: DataConfig, *, seed: int, train_tf: Callable, eval_tf: Callable,
                   manifest: Path | None = None) -> DatasetBundle:
    """Train/val[/test] datasets and class names; ``manifest`` pins splits that tl makes (see tl/data/splits.py)."""
    builder = _huggingface if cfg.dataset.startswith("hf:") else _BUILDERS[cfg.dataset]
    bundle = builder(cfg, seed, train_tf, eval_tf, manifest)
    if cfg.task == "multilabel" and not bundle.multilabel:
        raise TLError(f"--task multilabel: --dataset {cfg.dataset} gives each image one class",
                      "multi-label data comes from --labels FILE.csv (several labels per cell, or 0/1 columns) or an hf: Sequence(ClassLabel) column")
    return bundle
