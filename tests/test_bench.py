"""scripts/bench.py runs end to end on a tiny configuration and writes its table and JSON."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_image


def run_bench(tmp_path: Path, *args: str, **env: str):
    """``scripts/bench.py ARGS --json OUT`` as a user runs it, from another folder: (the finished process, its JSON).

    Its temporary folder is a fresh one, empty of the bench's scratch folders when it ends (generated photos, runs
    and checkpoints are hundreds of MB: kept, they filled a CI machine's disk)."""
    out, scratch = tmp_path / "bench.json", tmp_path / "tmp"
    scratch.mkdir()
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), *args, "--json", str(out)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "TMPDIR": str(scratch), **env}
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(scratch.glob("tl-bench-*")), "the bench left its scratch folders behind"
    return result, json.loads(out.read_text())


def test_train_bench_runs_end_to_end(tmp_path):
    result, report = run_bench(tmp_path, "train", "--arch", "resnet18", "--size", "32", "--per-class", "6", "--batch-size", "4",
                               "--epochs", "2", "--repeats", "1", "--num-workers", "0", "--strategy", "linear")
    assert "tutorial loop" in result.stdout and "ratio" in result.stdout
    assert report["bench"] == "train" and report["ratio"] > 0
    for name in ("tutorial loop", "tl train"):
        run, = report["runs"][name]
        assert run["images_per_s"] > 0 and run["seconds"] > 0 and run["peak_mb"] > 0
        assert report["medians"][name]["images_per_s"] == run["images_per_s"]
    assert report["runs"]["tl train"][0]["feature_cache"] is True  # linear, no augmentation: the cache is used


def test_gpu_bench_runs_in_its_cpu_mode_end_to_end(tmp_path):
    """Without a GPU `bench.py gpu` runs every figure with a tiny model and says that GPU figures need a GPU."""
    result, report = run_bench(tmp_path, "gpu", "--num-workers", "0", CUDA_VISIBLE_DEVICES="")
    assert report["bench"] == "gpu" and report["device"] == "cpu" and "need a GPU" in report["note"] in result.stdout
    for name in ("train_on_device", "train_tl_pipeline", "train_reference_loop", "predict_dir"):
        assert report[name]["images_per_s"] > 0, name
        assert name in result.stdout
    for name in ("train_on_device", "train_tl_pipeline", "train_reference_loop"):
        assert 0 <= report[name]["data_wait_share"] < 1 and report[name]["gpu_busy_share"] is None, name  # no GPU: no kernels
    # a real one-process group that accelerate set up (gloo here, NCCL on a GPU), not a plain process's no-op reduce
    reduce = report["all_reduce"]
    assert reduce["gb_per_s"] > 0 and reduce["processes"] == 1 and reduce["backend"] == "gloo" and reduce["correct"]
    assert reduce["distributed_type"] == "MULTI_CPU"
    assert report["arch"] == "resnet18" and report["size"] == 32  # the tiny CPU configuration


def test_loader_bench_times_tutorial_streamed_and_prepared(tmp_path):
    result, report = run_bench(tmp_path, "loader", "--size", "32", "--repeats", "1", "--epochs", "1", "--num-workers", "0")
    for key in ("tutorial", "tl_streamed", "tl_prepared"):
        assert report[key]["images_per_s"] > 0, key
    assert report["tl_prepared"]["prepare_seconds"] > 0 and "prepared/baseline" in result.stdout


def test_predict_bench_whole_process_runs_both_programs(tmp_path):
    """`bench.py predict --whole-process` runs the tutorial's script and `python -m tl.predict_dir` as programs of
    their own: each writes one CSV row per image; seconds, images/s, start-up and tl train's time are reported."""
    images = tmp_path / "images"
    names = [f"{folder}{i}.jpg" for folder in ("x", "y") for i in range(2 if folder == "x" else 3)]
    for index, name in enumerate(names):
        write_image(images / name[0] / name, (40 * index, 100, 200), size=32, seed=index)
    result, report = run_bench(tmp_path, "predict", "--whole-process", "--images", str(images), "--repeats", "1")
    assert "tl predict-dir (python -m tl.predict_dir)" in result.stdout and "ratio (loop s / tl s)" in result.stdout
    assert report["ratio"] > 0  # the in-process comparison still runs
    whole = report["whole_process"]
    assert whole["count"] == len(names) and whole["repeats"] == 1
    for key in ("per_image_loop", "tl_predict_dir"):
        program = whole[key]
        assert program["seconds"] > 0 and program["startup_seconds"] > 0, key
        assert program["images_per_s"] == pytest.approx(len(names) / program["seconds"]), key
        with open(program["csv"], newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert sorted(Path(row["path"]).name for row in rows) == sorted(names), key
        assert all(float(row["p_a"]) + float(row["p_b"]) == pytest.approx(1, abs=1e-4) for row in rows), key
    assert "tl.predict_dir" in whole["tl_predict_dir"]["command"] and "confidence" in rows[0]  # tl's CSV, not the loop's
    assert whole["ratio"] == pytest.approx(whole["per_image_loop"]["seconds"] / whole["tl_predict_dir"]["seconds"])
    assert whole["tl_train"]["startup_seconds"] > 0 and "tl.train" in whole["tl_train"]["command"]


def test_gpu_bench_without_hugging_face_datasets_still_measures_everything(tmp_path):
    """The GPU machine's image has no `datasets` unless its wheels are carried (scripts/gpu_bench.sh): the bench then
    feeds tl's pipeline from the image folder and says so, instead of failing the whole device run."""
    blocker = tmp_path / "blocker" / "datasets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('datasets is not installed (blocked by the test)')\n")
    result, report = run_bench(tmp_path, "gpu", "--num-workers", "0", CUDA_VISIBLE_DEVICES="",
                               PYTHONPATH=f"{blocker.parent}{os.pathsep}{ROOT}")
    assert "no prepared shards" in report["pipeline"] and "blocked by the test" in report["pipeline"]
    assert report["train_tl_pipeline"]["images_per_s"] > 0 and "no prepared shards" in result.stdout
