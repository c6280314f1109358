"""Two real CPU processes in one gloo group, launched the way users launch tl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, read_metrics
from tl.models.checkpoint import checkpoint_state

# 3 classes x (13 // 4 = 3) val images = 9: odd, so the sampler pads one in; gather_for_metrics must drop it.
TRAIN = ("--arch", "resnet18", "--image-size", "32", "--dataset", "synthetic", "--synthetic-classes", "3",
         "--synthetic-per-class", "13", "--epochs", "2", "--batch-size", "4", "--num-workers", "0",
         "--strategy", "gradual", "--unfreeze-epoch", "1", "--save-every-steps", "1", "--keep-states", "2")


def _launch(out: Path, *extra: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("accelerate")
    accelerate = str(exe) if exe.exists() else (shutil.which("accelerate") or "accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "tl.train", *TRAIN, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    process = _launch(out)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return out, output


@pytest.mark.slow
def test_two_process_run_counts_each_val_image_once(two_process_run):
    out, output = two_process_run
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["num_processes"] == 2
    metrics = read_metrics(out)
    assert len(metrics) == 2 and all(m["val_count"] == 9 for m in metrics)
    assert (out / "best" / "model.safetensors").is_file()
    assert output.count("tl train: done") == 1  # printed by the main process only


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_equals_uninterrupted(two_process_run, tmp_path):
    reference, _ = two_process_run
    out = tmp_path / "run"
    process = _launch(out)
    deadline = time.time() + 300
    while not (out / "state" / "step-00000003").is_dir():  # 36 images / (2 x 4) = 4 steps per epoch: mid-epoch 1
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.05)
    process.kill()  # the launcher; its workers follow when the process group is torn down
    process.wait()
    time.sleep(2)
    resumed = _launch(out, "--resume", "auto")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-4000:]
    assert "resumed from" in output
    for got, want in zip(read_metrics(out), read_metrics(reference)):
        for key in ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_count"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
    final, expected = checkpoint_state(out / "last"), checkpoint_state(reference / "last")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
