"""Checkpoints as hostile input and as a write target: tl export never replaces what is not a checkpoint, a checkpoint
whose tensors do not fit its metadata is refused instead of predicting with a random head, a damaged weight file is one
line on stderr."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import ROOT, cli, train_tiny_run, write_image
from tl.errors import TLError
from tl.models.checkpoint import load_checkpoint, read_meta, save_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("ckpt"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tl(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "tl.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_export_refuses_a_run_a_folder_of_other_files_and_a_file(run, tmp_path):
    copy = shutil.copytree(run, tmp_path / "runX")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    photo = write_image(tmp_path / "f.jpg", (10, 20, 30))
    for target, what in ((copy, "holds more than a checkpoint"), (keep, "notes.txt"), (photo, "is a file")):
        before = _snapshot(tmp_path)
        result = cli("export", copy / "best", "--to", target)
        assert isinstance(result.exception, TLError) and what in result.exception.message, result.output
        assert "new or" in result.exception.hint and _snapshot(tmp_path) == before
    assert photo.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["f.jpg", "keep", "runX"]  # no .old/.tmp left
    # A subprocess, as users run it: exit 2, one error line, no traceback; ".." is the folder above, resolved.
    inner = tmp_path / "keep" / "inner"
    inner.mkdir()
    process = _tl("export", copy / "best", "--to", "..", cwd=inner)
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    assert [line for line in process.stderr.splitlines() if line.startswith("error:")] == [
        f"error: --to: {keep} holds more than a checkpoint (inner, notes.txt): writing one there would replace the whole folder"]


def test_export_fills_an_empty_current_folder_and_replaces_an_earlier_bundle(run, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = cli("export", run / "best", "--to", ".")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert sorted(p.name for p in here.iterdir()) == ["model.safetensors", "tl.json"] and Path.cwd() == here
    (here / "model.onnx").write_bytes(b"an earlier export's")  # replaced along: it would no longer match the weights
    (here / ".DS_Store").write_bytes(b"")  # Finder's litter does not make it a folder of the user's files
    assert cli("export", run / "last", "--to", ".").exit_code == 0
    assert not (here / "model.onnx").exists() and read_meta(here)["epoch"] == read_meta(run / "last")["epoch"]
    bundle = tmp_path / "bundle"
    for source in ("best", "last", "best"):  # an earlier bundle elsewhere is replaced whole, as training replaces best/
        assert cli("export", run / source, "--to", bundle).exit_code == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["model.safetensors", "tl.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "here"]


def test_save_checkpoint_replaces_its_own_folder_but_nothing_else(tmp_path):
    from tl.models.architectures import build_model

    model, _ = build_model("squeezenet1_1", 2, image_size=32)
    meta = {"arch": "squeezenet1_1", "num_classes": 2, "head": {"kind": "linear"}, "input_size": 32, "epoch": 1}
    folder = save_checkpoint(tmp_path / "best", model, meta)
    save_checkpoint(folder, model, {**meta, "epoch": 2})
    assert read_meta(folder)["epoch"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    (folder / "eval.json").write_text("{}")
    with pytest.raises(TLError, match="eval.json"):
        save_checkpoint(folder, model, {**meta, "epoch": 3})
    assert read_meta(folder)["epoch"] == 2 and (folder / "eval.json").read_text() == "{}"


def _rewrite(source: Path, target: Path, edit) -> Path:
    """``target``: a copy of checkpoint ``source`` with its tensors edited and its metadata kept."""
    from safetensors import safe_open

    with safe_open(str(source / "model.safetensors"), "pt") as handle:
        header = handle.metadata()
    target.mkdir()
    shutil.copy(source / "tl.json", target / "tl.json")
    save_file(edit(load_file(str(source / "model.safetensors"))), str(target / "model.safetensors"), metadata=header)
    return target


def test_a_checkpoint_whose_tensors_do_not_fit_is_refused(run, tmp_path):
    headless = _rewrite(run / "best", tmp_path / "headless", lambda t: {k: v for k, v in t.items() if k != "fc.fc.weight"})
    six = _rewrite(run / "best", tmp_path / "six", lambda t: {**t, "fc.fc.weight": torch.zeros(6, 512), "fc.fc.bias": torch.zeros(6)})
    image = write_image(tmp_path / "a.jpg", (200, 30, 30))
    for checkpoint, what in ((headless, "1 missing (e.g. fc.fc.weight)"), (six, "2 of another shape (e.g. fc.fc.bias, fc.fc.weight)")):
        with pytest.raises(TLError, match="does not fit the resnet18 with 3 classes") as caught:
            load_checkpoint(checkpoint)
        assert what in caught.value.message and str(checkpoint) in caught.value.message and "RUN/last" in caught.value.hint
        for args in (("predict", image, "--checkpoint", checkpoint), ("export", checkpoint, "--to", tmp_path / "x")):
            result = cli(*args)
            assert isinstance(result.exception, TLError) and what in result.exception.message, (args, result.output)
    assert not (tmp_path / "x").exists()
    # --weights with another class count still drops the head on purpose (transfer learning, tests/test_weights.py).
    from tl.models.architectures import build_model

    assert build_model("resnet18", 2, weights=str(run / "best"), image_size=32)[0].fc.fc.out_features == 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_a_damaged_model_file_is_one_line_for_every_command(run, tmp_path, damage):
    checkpoint = shutil.copytree(run / "best", tmp_path / "ckpt")
    weights = checkpoint / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes({"truncated": whole[: len(whole) // 2], "empty": b"", "random": os.urandom(3000)}[damage])
    image = write_image(tmp_path / "images" / "a.jpg", (200, 30, 30))
    commands = [("predict", image, "--checkpoint", checkpoint), ("export", checkpoint, "--to", tmp_path / "x"),
                ("predict-dir", image.parent, "--checkpoint", checkpoint, "--out", tmp_path / "p.csv"),
                ("eval", "--checkpoint", checkpoint)]
    for args in commands:
        result = cli(*args)
        assert isinstance(result.exception, TLError), (args, repr(result.exception))
        assert result.exception.message.startswith(f"{weights} is not a readable safetensors file (")
        assert "RUN/last" in result.exception.hint
    process = _tl("predict", image, "--checkpoint", checkpoint)
    assert process.returncode == 2 and "Traceback" not in process.stderr and "not a readable safetensors" in process.stderr


def test_googlenet_checkpoint_transforms_inputs_as_it_was_trained(tmp_path):
    from tl.models.architectures import build_model

    model, _ = build_model("googlenet", 2, image_size=32)
    meta = {"arch": "googlenet", "num_classes": 2, "head": {"kind": "linear"}, "input_size": 32}
    for weights, transformed in (("none", False), ("DEFAULT", True)):
        folder = save_checkpoint(tmp_path / weights, model, {**meta, "weights": weights})
        assert load_checkpoint(folder)[0].transform_input is transformed
