"""Two real CPU processes in one gloo group, launched the way users launch tl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_metrics


def _accelerate() -> list[str]:
    exe = Path(sys.executable).with_name("accelerate")
    return [str(exe)] if exe.exists() else [shutil.which("accelerate") or "accelerate"]


@pytest.mark.slow
def test_two_process_run_counts_each_val_image_once(tmp_path):
    out = tmp_path / "ddp"
    # 3 classes x (13 // 4 = 3) val images = 9: odd, so the sampler pads one in; gather_for_metrics must drop it.
    command = [
        *_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "tl.train",
        "--arch", "resnet18", "--image-size", "32", "--dataset", "synthetic", "--synthetic-classes", "3",
        "--synthetic-per-class", "13", "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--out", str(out),
        "--strategy", "gradual", "--unfreeze-epoch", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["num_processes"] == 2
    metrics = read_metrics(out)
    assert len(metrics) == 2 and all(m["val_count"] == 9 for m in metrics)
    assert (out / "best" / "model.safetensors").is_file()
    assert result.stderr.count("tl train: done") + result.stdout.count("tl train: done") == 1  # main process only
