"""Seeded, stratified splits and the manifest that pins them to a run.

A dataset without an official split (Caltech-101, a flat folder of class folders) is split once per run;
the split is written to ``OUT/split.json`` and read back on resume, by ``tl eval`` and by anyone
reproducing the run, so the test images stay the ones training never saw.

The manifest also caches a folder dataset's file list (class names and each split's files with their labels,
relative to the folder, so a moved folder keeps its split): a run that has one does not walk the folder again,
which on a network file system with hundreds of thousands of files is the slow part. Manifests without that cache
(older runs) are read as before.

A manifest written on purpose for a run that has not started (``tl split --out``, ``tl reproduce``) is *pinned*:
a fresh run keeps it. An unpinned one in a fresh run's --out was left by an attempt that died before its first
epoch and is replaced (``tl.training.run``): its files may have changed since; so is any, pinned or not, that
``--overwrite`` replaces with its finished run.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from tl.errors import TLError

MANIFEST = "split.json"
FINGERPRINT_SAMPLE = 64  # files of a cached list stat'ed to confirm its recorded sizes


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, held out): ``fraction`` of every class held out, at least one where a class has two."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    kept, held = [], []
    for label in sorted(by_class):
        indices = by_class[label][:]
        rng.shuffle(indices)
        n_held = max(1, round(len(indices) * fraction)) if len(indices) >= 2 and fraction > 0 else 0
        held += indices[:n_held]
        kept += indices[n_held:]
    return sorted(kept), sorted(held)


def three_way(labels: list, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """{"train", "val", "test"} index lists; fractions are of the whole set. Multi-label ``labels`` (a tuple of class
    indices per image) are split by iterative stratification, so every class reaches every split where it can."""
    if labels and isinstance(labels[0], tuple):
        from tl.data.multilabel_split import iterative_split

        return iterative_split(labels, {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}, seed)
    rest, test = stratified_split(labels, test_fraction, seed) if test_fraction > 0 else (list(range(len(labels))), [])
    share = val_fraction / max(1e-9, 1.0 - test_fraction)
    kept, val = stratified_split([labels[i] for i in rest], share, seed + 1)
    return {"train": [rest[i] for i in kept], "val": [rest[i] for i in val], "test": test}


def split_with_manifest(keys: list[str], labels: list, *, val_fraction: float, test_fraction: float, seed: int,
                        manifest: Path | None) -> dict[str, list[int]]:
    """The split recorded in ``manifest`` when there is one (checked against ``keys``), else a new one, recorded."""
    if manifest is not None and manifest.is_file():
        recorded = json.loads(manifest.read_text())
        position = {key: i for i, key in enumerate(keys)}
        missing = [k for part in recorded["splits"].values() for k in part if k not in position]
        if missing:
            raise TLError(f"{manifest} lists {len(missing)} file(s) that are gone (e.g. {missing[0]})",
                          "restore them, or start a new run in another --out to make a new split")
        splits = {name: [position[k] for k in part] for name, part in recorded["splits"].items()}
        left_out = len(keys) - sum(map(len, splits.values()))
        if left_out > 0:
            from tl.progress import log

            log.warning(f"data: {left_out} file(s) are not in the split recorded in {manifest} and are left out "
                        f"(to include them: a new run in another --out, or delete that file)")
        return splits
    splits = three_way(labels, val_fraction, test_fraction, seed)
    if manifest is not None:
        _write(manifest, {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                          "splits": {name: [keys[i] for i in part] for name, part in splits.items()}})
    return splits


def _write(manifest: Path, record: dict) -> None:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(f".{os.getpid()}.tmp")  # ranks on nodes with their own disk may write at once
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(manifest)


def pin(manifest: Path, by: str) -> None:
    """Mark ``manifest`` as made on purpose for a run that has not started (``by``: the command), so that run keeps it."""
    record = json.loads(manifest.read_text())
    record["pinned_by"] = by
    _write(manifest, record)


def is_pinned(manifest: Path) -> bool:
    try:
        return bool(json.loads(manifest.read_text()).get("pinned_by"))
    except (OSError, ValueError, AttributeError):
        return False


def cache_file_list(manifest: Path, classes: list[str], parts: dict[str, list[tuple[str, int]]],
                    sizes: dict[str, list[int]] | None = None, folders: dict[str, int] | None = None) -> None:
    """Record the class names and each split's (relative path, label) pairs in ``manifest`` (added to a split
    already recorded there), with each file's size and each folder's mtime (ns) when given: the data
    fingerprint of a later build comes from them without a stat per file (see ``tl.data.datasets``)."""
    record = json.loads(manifest.read_text()) if manifest.is_file() else {}
    record["splits"] = {name: [key for key, _ in pairs] for name, pairs in parts.items()}
    record["files"] = {"classes": classes, "labels": {name: [label for _, label in pairs] for name, pairs in parts.items()}}
    if sizes is not None and folders is not None:
        record["files"] |= {"sizes": sizes, "folders": folders}
    try:
        _write(manifest, record)
    except OSError:  # a read-only run folder (`tl eval` on someone else's run): the cache is only a speed-up
        pass


def cached_file_list(manifest: Path | None) -> tuple[list[str], dict[str, list[tuple[str, int]]], dict | None] | None:
    """(class names, {split: [(relative path, label)]}, facts) cached in ``manifest``; None when it has no file
    list. ``facts``: {"sizes": {split: [bytes]}, "folders": {relative folder: mtime_ns}}, None in older manifests."""
    if manifest is None or not manifest.is_file():
        return None
    record = json.loads(manifest.read_text())
    files = record.get("files")
    if not files:
        return None
    facts = {"sizes": files["sizes"], "folders": files["folders"]} if "sizes" in files and "folders" in files else None
    return files["classes"], {name: list(zip(keys, files["labels"][name])) for name, keys in record["splits"].items()}, facts


def folder_times(root: Path, keyed: dict[str, list[tuple[str, int]]]) -> dict[str, int]:
    """mtime (ns) of every folder that holds a listed file, by relative path; -1 for one that is gone."""
    times = {}
    for key in sorted({os.path.dirname(key) for pairs in keyed.values() for key, _ in pairs}):
        try:
            times[key] = os.stat(root / key).st_mtime_ns
        except OSError:
            times[key] = -1
    return times


def current_sizes(root: Path, keyed: dict[str, list[tuple[str, int]]], facts: dict | None) -> dict[str, list[int]] | None:
    """The sizes recorded with a cached file list, when it still looks current: every folder holding a listed file
    has the mtime it had (a file added, removed or renamed there changes it) and a seeded sample of
    ``FINGERPRINT_SAMPLE`` files has the recorded sizes. None otherwise, or without records (older manifests)."""
    if facts is None or set(facts["sizes"]) != set(keyed) or folder_times(root, keyed) != facts["folders"]:
        return None
    listed = [(key, size) for name, pairs in keyed.items() for (key, _), size in zip(pairs, facts["sizes"][name])]
    for key, size in random.Random(0).sample(sorted(listed), min(FINGERPRINT_SAMPLE, len(listed))):
        try:
            if os.stat(root / key).st_size != size:
                return None
        except OSError:
            return None
    return facts["sizes"]


def unlisted_files(root: Path, keyed: dict[str, list[tuple[str, int]]], sizes: dict[Path, int],
                   extensions: tuple[str, ...]) -> list[str]:
    """Files with ``extensions`` in the folders that hold a listed file and not in the list, sorted: one listing of
    each such folder, not of its sub-folders. The listed files' sizes it reads go into ``sizes``, so the data
    fingerprint needs no stat of its own (one stat per file, as a build without a cached list). Files in new class
    folders are not looked for: they cannot be in the run's classes."""
    listed = {key for pairs in keyed.values() for key, _ in pairs}
    unlisted = []
    for folder in sorted({os.path.dirname(key) for key in listed}):
        try:
            entries = list(os.scandir(root / folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            key = os.path.join(folder, entry.name)
            try:
                if key in listed:
                    sizes[root / key] = entry.stat().st_size
                elif entry.is_file():
                    unlisted.append(key)
            except OSError:
                continue
    return sorted(unlisted)
