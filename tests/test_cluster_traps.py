"""Two traps at cluster scale: a cached file list must not stat every file again, and `accelerate launch`'s
default `--mixed_precision no` must not silently turn `--mixed-precision auto` into fp32."""

from __future__ import annotations

import logging
import os

from tests.conftest import make_image_folder, write_image
from tl.config import DataConfig
from tl.data import datasets, splits
from tl.data.transforms import eval_transform, train_transform
from tl.runtime import auto_precision, resolve_precision

TF = dict(size=16, resize=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _build(root, manifest):
    return datasets.build_datasets(DataConfig(dataset="imagefolder", data_dir=str(root)), seed=0, manifest=manifest,
                                   train_tf=train_transform(**TF), eval_tf=eval_transform(**TF))


def _image_stats(monkeypatch) -> list:
    """The image files stat'ed from now on (``Path.stat`` calls ``os.stat`` too)."""
    seen = []
    real = os.stat

    def stat(path, *args, **kwargs):
        if os.fspath(path).endswith((".png", ".jpg", ".gif")):
            seen.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    return seen


def test_a_cached_file_list_is_fingerprinted_from_its_recorded_sizes(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", {"cat": (200, 40, 40), "dog": (40, 40, 200)}, 6)
    manifest = tmp_path / "run" / "split.json"
    first = _build(root, manifest)
    files = len(first.train) + len(first.val)
    monkeypatch.setattr(splits, "FINGERPRINT_SAMPLE", 3)
    seen = _image_stats(monkeypatch)
    again = _build(root, manifest)
    assert again.fingerprint == first.fingerprint and len(seen) == 3 < files  # a sample, not every file

    sampled = {os.fspath(path) for path in seen}
    write_image(root / "train" / "cat" / "late.png", (1, 2, 3))
    seen.clear()  # a file added to a listed folder changes its mtime: every file is looked at, the data are the same
    assert _build(root, manifest).fingerprint == first.fingerprint
    outside = next(path for path, _ in first.val.samples if os.fspath(path) not in sampled)  # in a folder that did not change
    outside.write_bytes(outside.read_bytes() + b"\0")
    assert _build(root, manifest).fingerprint != first.fingerprint  # so a size changed outside the sample is seen

    monkeypatch.setattr(splits, "FINGERPRINT_SAMPLE", 1000)  # every file sampled: a changed size is seen
    victim = first.train.samples[0][0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    seen.clear()
    assert _build(root, manifest).fingerprint != first.fingerprint


def test_launchers_default_no_does_not_beat_auto(monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` sets when nothing was chosen
    with caplog.at_level(logging.INFO, logger="tl"):
        assert resolve_precision("auto", on_gpu=True) == auto_precision(True)
        assert resolve_precision("no", on_gpu=True) == "no"  # tl's own flag forces fp32
    if auto_precision(True) != "no":
        assert any("--mixed-precision no" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # chosen by a config file or the flag: it wins
    assert resolve_precision("auto", on_gpu=True) == "fp16"
