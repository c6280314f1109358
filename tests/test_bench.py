"""scripts/bench.py runs end to end on a tiny configuration and writes its table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_train_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "train.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "train", "--arch", "resnet18", "--size", "32",
               "--per-class", "6", "--batch-size", "4", "--epochs", "2", "--repeats", "1", "--num-workers", "0",
               "--strategy", "linear", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tutorial loop" in result.stdout and "ratio" in result.stdout
    report = json.loads(out.read_text())
    assert report["bench"] == "train" and report["ratio"] > 0
    for name in ("tutorial loop", "tl train"):
        run, = report["runs"][name]
        assert run["images_per_s"] > 0 and run["seconds"] > 0 and run["peak_mb"] > 0
        assert report["medians"][name]["images_per_s"] == run["images_per_s"]
    assert report["runs"]["tl train"][0]["feature_cache"] is True  # linear, no augmentation: the cache is used
