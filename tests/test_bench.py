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


def test_gpu_bench_runs_in_its_cpu_mode_end_to_end(tmp_path):
    """Without a GPU `bench.py gpu` runs every figure with a tiny model and says that GPU figures need a GPU."""
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "gpu", "--num-workers", "0", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["bench"] == "gpu" and report["device"] == "cpu" and "need a GPU" in report["note"] in result.stdout
    for name in ("train_on_device", "train_tl_pipeline", "train_reference_loop", "predict_dir"):
        assert report[name]["images_per_s"] > 0, name
        assert name in result.stdout
    assert report["all_reduce"]["gb_per_s"] > 0 and report["all_reduce"]["processes"] == 1
    assert report["arch"] == "resnet18" and report["size"] == 32  # the tiny CPU configuration


def test_loader_bench_times_tutorial_streamed_and_prepared(tmp_path):
    out = tmp_path / "loader.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "loader", "--size", "32", "--repeats", "1",
               "--epochs", "1", "--num-workers", "0", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("tutorial", "tl_streamed", "tl_prepared"):
        assert report[key]["images_per_s"] > 0, key
    assert report["tl_prepared"]["prepare_seconds"] > 0 and "prepared/baseline" in result.stdout
