"""``--dataset labels``: the train/val/test datasets of a label file (``tl.data.label_file``) and its image folder.

Rows are put in a canonical order before anything else (class, then path, for single-label sets; path for
multi-label ones), so the split does not depend on the order of the CSV's rows, and a single-label CSV over the
images of a folder of class folders gives the same split, the same batches and so the same model as that folder.
A split tl makes is pinned in the run's ``split.json`` (``tl.data.splits``), together with the class names: a
later read (resume, ``tl eval``, ``tl reproduce``) of an edited CSV that names a new class is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from tl.config import DataConfig
from tl.data.image_files import ImageFiles
from tl.data.label_file import LabelTable, check_known, read_label_file
from tl.data.splits import split_with_manifest
from tl.errors import TLError

SPLITS = ("train", "val", "test")


class MultiLabelFiles(ImageFiles):
    """``ImageFiles`` whose label is a tuple of class indices, handed out as a 0/1 float vector (one per class)."""

    def __getitem__(self, index: int):
        import torch

        image, label, readable = super().__getitem__(index)
        target = torch.zeros(len(self.classes))
        target[list(label)] = 1.0
        return image, target, readable


def read_table(cfg: DataConfig, manifest: Path | None = None, *, check_files: bool = True) -> tuple[LabelTable, list[str]]:
    """The label file of ``cfg`` and the class names to use: those a run recorded in its manifest, else the file's."""
    table = read_label_file(cfg.labels or "", cfg.data_dir, sep=cfg.label_sep, task=cfg.task, check_files=check_files)
    recorded = _record(manifest).get("label_classes")
    if recorded:
        check_known(table, recorded)
    if cfg.task == "single" and table.multilabel:
        several = next(row for row in table.rows if len(row.labels) > 1)
        raise TLError(f"--task single: {table.source} gives {several.key} {len(several.labels)} labels ({';'.join(several.labels)})",
                      "drop --task single (or pass --task multilabel) to train one yes/no output per class")
    return table, list(recorded or table.classes)


def _record(manifest: Path | None) -> dict:
    if manifest is None or not manifest.is_file():
        return {}
    try:
        return json.loads(manifest.read_text())
    except ValueError:
        return {}


def _remember_classes(manifest: Path | None, classes: list[str], multilabel: bool) -> None:
    if manifest is None:
        return
    record = _record(manifest)
    record |= {"label_classes": classes, "multilabel": multilabel}
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(manifest)
    except OSError:  # a read-only run folder (`tl eval` on someone else's run): the classes are in its checkpoint too
        pass


def parts(cfg: DataConfig, seed: int, manifest: Path | None = None, *, check_files: bool = True
          ) -> tuple[LabelTable, list[str], dict[str, list[tuple[Path, object]]]]:
    """(table, classes, {split: [(path, label)]}) where a label is a class index, or a tuple of them (multi-label)."""
    table, classes = read_table(cfg, manifest, check_files=check_files)
    table.raise_problems()
    index = {name: i for i, name in enumerate(classes)}
    multilabel = table.multilabel
    label_of = (lambda row: tuple(sorted(index[label] for label in row.labels))) if multilabel else (lambda row: index[row.labels[0]])
    rows = sorted(table.rows, key=lambda row: ((() if multilabel else (label_of(row),)), Path(row.key).parts))
    if table.has_split:
        found = {name: [row for row in rows if row.split == name] for name in SPLITS}
        if not found["val"]:  # a file that marks train (and test) only: hold val out of train, as for a folder
            held = _split([row.key for row in found["train"]], [label_of(row) for row in found["train"]], cfg, seed, None, test=False)
            found["train"], found["val"] = [found["train"][i] for i in held["train"]], [found["train"][i] for i in held["val"]]
    else:
        chosen = _split([row.key for row in rows], [label_of(row) for row in rows], cfg, seed, manifest, test=True)
        found = {name: [rows[i] for i in chosen.get(name, [])] for name in SPLITS}
    _remember_classes(manifest, classes, multilabel)
    return table, classes, {name: [(row.path, label_of(row)) for row in found[name]] for name in SPLITS}


def _split(keys: list[str], labels: list, cfg: DataConfig, seed: int, manifest: Path | None, *, test: bool) -> dict[str, list[int]]:
    return split_with_manifest(keys, labels, val_fraction=cfg.fraction("val"), test_fraction=cfg.fraction("test") if test else 0.0,
                               seed=seed, manifest=manifest)


def check_classes(classes: list[str], samples: dict[str, list[tuple[Path, object]]], multilabel: bool) -> None:
    """A class without a train image cannot be learnt: say which, before training (val is checked for single-label
    sets, as for folders; a multi-label class missing from val only keeps its threshold at 0.5)."""
    for split in ("train",) if multilabel else ("train", "val"):
        present = {c for _, label in samples[split] for c in (label if multilabel else (label,))}
        missing = [name for i, name in enumerate(classes) if i not in present]
        if missing:
            raise TLError(f"--labels: {split} has no image of class(es) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""),
                          "label more images of those classes, or remove them from the file")


def fingerprint(samples: dict[str, list[tuple[Path, object]]], root: Path) -> str:
    """A hash of (relative path, label(s), size) of every listed file, split by split."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path, label in samples[split]:
            try:
                size = path.stat().st_size
            except OSError:
                raise TLError(f"--labels: {path} is gone", "restore it, or remove its row from the label file")
            digest.update(f"{split}\t{os.path.relpath(path, root)}\t{label}\t{size}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def build(cfg: DataConfig, seed: int, train_tf: Callable, eval_tf: Callable, manifest: Path | None):
    """(train, val, test or None, classes, fingerprint, multilabel) of ``cfg.labels``."""
    table, classes, samples = parts(cfg, seed, manifest)
    multilabel = table.multilabel
    if not samples["train"] or not samples["val"]:
        raise TLError(f"--labels {table.source}: {len(samples['train'])} train and {len(samples['val'])} val images",
                      "label more images, or give a split column with both train and val rows")
    check_classes(classes, samples, multilabel)
    kind = MultiLabelFiles if multilabel else ImageFiles
    made = {name: kind(samples[name], classes, train_tf if name == "train" else eval_tf) if samples[name] else None for name in SPLITS}
    root = Path(cfg.data_dir) if cfg.data_dir else table.source.parent
    return made["train"], made["val"], made["test"], classes, fingerprint(samples, root), multilabel


def pin_split(labels: Path, data_dir: Path, out: Path, *, val: float, test: float, seed: int,
              overwrite: bool) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """``tl split FOLDER --labels FILE.csv --out OUT``: the split ``tl train --labels FILE.csv --out OUT`` will use,
    written to OUT/split.json and pinned; ({split: {class: images}}, {split: images}): with several labels per image
    the classes' counts add up to more than the images."""
    from tl.data.splits import MANIFEST, pin

    manifest = out / MANIFEST
    if manifest.exists() and not overwrite:
        raise TLError(f"--out: {manifest} exists", "pass --overwrite to replace it, or choose another --out")
    cfg = DataConfig(dataset="labels", labels=str(labels), data_dir=str(data_dir), val_fraction=val, test_fraction=test)
    table, _ = read_table(cfg, check_files=False)
    if table.has_split:
        raise TLError(f"--labels: {labels} has a split column already", "tl train --labels uses it as it is; drop the column to have tl split it")
    manifest.unlink(missing_ok=True)
    _, classes, samples = parts(cfg, seed, manifest)
    pin(manifest, "tl split")
    counts: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        for _, label in samples[name]:
            for c in label if isinstance(label, tuple) else (label,):
                counts.setdefault(name, {}).setdefault(classes[c], 0)
                counts[name][classes[c]] += 1
    return counts, {name: len(samples[name]) for name in counts}
