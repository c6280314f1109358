"""Kill a real training process at awkward moments, resume it, and get exactly the run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import RGB_CLASSES, ROOT, TINY, cli, make_image_folder, read_metrics, write_image
from tl.errors import EXIT_REQUEUE
from tl.models.checkpoint import checkpoint_state

ARGS = ("--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "16", "--log-every", "1000",
        "--dataset", "synthetic", "--synthetic-per-class", "24", "--epochs", "2", "--save-every-steps", "2", "--keep-states", "3",
        "--dropout", "0.2")  # dropout: the resumed run must also continue the RNG stream exactly
DETERMINISTIC = ("epoch", "step", "train_loss", "train_top1", "val_loss", "val_top1", "val_count")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    result = cli("train", *ARGS, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([sys.executable, "-m", "tl.train", *ARGS, "--out", str(out), "--resume", "auto"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_state(out: Path, process: subprocess.Popen, name: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not (out / "state" / name).is_dir():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no state appeared"
        time.sleep(0.05)


def _assert_same_run(out: Path, reference: Path) -> None:
    got, want = read_metrics(out), read_metrics(reference)
    assert [m["epoch"] for m in got] == [1, 2]
    for a, b in zip(got, want):
        for key in DETERMINISTIC:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    final, expected = checkpoint_state(out / "last"), checkpoint_state(reference / "last")
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    process = _start(out)
    _wait_for_state(out, process, "step-00000004")  # epoch 1 has 6 steps: this is mid-epoch
    process.kill()
    process.wait()
    result = cli("train", *ARGS, "--out", out, "--resume", "auto")
    assert result.exit_code == 0, result.output + repr(result.exception)
    _assert_same_run(out, reference)


def test_torn_and_corrupt_states_fall_back_to_an_older_one(reference, tmp_path):
    out = tmp_path / "torn"
    process = _start(out)
    _wait_for_state(out, process, "step-00000008")  # mid epoch 2
    process.kill()
    process.wait()
    states = sorted(p.name for p in (out / "state").iterdir() if not p.name.startswith("."))
    newest = out / "state" / states[-1]
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a save cut short
    (out / "state" / ".tmp-step-00000099").mkdir()  # an interrupted save's leftovers
    result = cli("train", *ARGS, "--out", out, "--resume", "auto")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "cannot be loaded" in result.output
    _assert_same_run(out, reference)


def test_sigterm_saves_and_exits_with_requeue_code(reference, tmp_path):
    out = tmp_path / "preempted"
    process = _start(out)
    _wait_for_state(out, process, "step-00000002")
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_REQUEUE, output
    assert time.time() - sent < 30
    assert "--resume auto" in output
    result = cli("train", *ARGS, "--out", out, "--resume", "auto")
    assert result.exit_code == 0, result.output + repr(result.exception)
    _assert_same_run(out, reference)


def test_resume_with_another_architecture_says_what_differs(reference, tmp_path):
    result = cli("train", *ARGS[:1], "resnet34", *ARGS[2:], "--out", reference, "--resume", "auto")
    assert "resnet18" in str(result.exception) and "resnet34" in str(result.exception)


def test_resume_of_a_finished_run_does_not_train_again(reference):
    before = read_metrics(reference)
    result = cli("train", *ARGS, "--out", reference, "--resume", "auto")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert read_metrics(reference) == before


def test_resume_keeps_the_precision_the_run_recorded(tmp_path):
    import json

    from tl.training.state import recorded_precision

    (tmp_path / "config.json").write_text(json.dumps({"config": {"run": {"mixed_precision": None}}}))
    assert recorded_precision(tmp_path, "auto") is None  # a run from before `auto`: accelerate's choice, as it began
    assert recorded_precision(tmp_path, "bf16") == "bf16"  # asked for explicitly
    (tmp_path / "config.json").write_text(json.dumps({"config": {"run": {"mixed_precision": "no"}}}))
    assert recorded_precision(tmp_path, "auto") == "no"
    assert recorded_precision(tmp_path / "missing", "auto") == "auto"


def test_a_fresh_run_lists_the_folder_again_after_an_attempt_that_finished_no_epoch(tmp_path):
    """An attempt that died in its first epoch leaves OUT/split.json with its file list; the next plain run into
    that --out is a fresh run and must see the folder as it is now, while a split made by `tl split --out` stays."""
    from tl.config import DataConfig
    from tl.data.datasets import build_datasets

    root = make_image_folder(tmp_path / "data", RGB_CLASSES, 4)
    out = tmp_path / "run"
    build_datasets(DataConfig(dataset="imagefolder", data_dir=str(root)), seed=0, train_tf=None, eval_tf=None,
                   manifest=out / "split.json")  # what the dead attempt wrote before its first step
    for i in range(3):
        write_image(root / "train" / "red" / f"added{i}.png", (220, 30, 30))
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", root, "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    recorded = json.loads((out / "split.json").read_text())["splits"]
    assert sum("added" in key for key in recorded["train"]) == 3 and "an earlier attempt" in result.stderr

    pinned = tmp_path / "pinned"
    assert cli("split", make_image_folder(tmp_path / "flat", RGB_CLASSES, 6, splits=("",)), "--out", pinned).exit_code == 0
    made = json.loads((pinned / "split.json").read_text())["splits"]
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", tmp_path / "flat", "--epochs", "1", "--out", pinned)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((pinned / "split.json").read_text())["splits"] == made
    # --overwrite replaces the finished run, its split with it (pinned or not): the new fractions are used
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", tmp_path / "flat", "--epochs", "1", "--out", pinned,
                 "--overwrite", "--val-fraction", "0.5", "--test-fraction", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    replaced = json.loads((pinned / "split.json").read_text())["splits"]
    assert len(replaced["val"]) == 9 and not replaced.get("test")
