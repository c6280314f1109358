"""Batch prediction as a SLURM array job on a real one-node SLURM started here: `tl slurm submit --script predict
--shards 4`, one task requeued (`scontrol requeue`, what preemption does) while it writes, then the merge job.
Every file must end up predicted exactly once, and the merged file must be the one a single process writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RGB_CLASSES, read_rows, train_tiny_run, write_image
from tests.slurm_cluster import LocalSlurm, Unavailable

SHARDS = 4


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=os.cpu_count() or 2) as cluster:
            yield cluster
    except Unavailable as reason:
        pytest.skip(f"no SLURM here: {reason}")


def _images(root: Path, count: int) -> Path:
    """``count`` tiny images in nested folders (so the sorted list crosses folders inside a shard)."""
    colours = list(RGB_CLASSES.values())
    for i in range(count):
        write_image(root / f"d{i % 7}" / f"e{i % 3}" / f"img_{i:04d}.png", colours[i % 3], size=16, seed=i)
    return root


def _log(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.out")))


@pytest.mark.slow
def test_array_job_with_a_requeued_task_predicts_every_file_once(slurm, tmp_path):
    run = train_tiny_run(tmp_path)
    images = _images(tmp_path / "images", 600)
    # One process over the whole folder, as the tasks run (one thread each: the last digit of a probability can
    # depend on how many threads a sum was split over).
    reference = tmp_path / "reference.csv"
    one = subprocess.run([sys.executable, "-m", "tl.predict_dir", images, "--checkpoint", run / "best", "--out", reference,
                          "--batch-size", "1"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]

    out = tmp_path / "preds" / "preds.csv"
    tl = str(Path(sys.executable).with_name("tl"))
    submitted = slurm.run(tl, "slurm", "submit", "--script", "predict", "--shards", str(SHARDS), "--cpus-per-task", "1",
                          "--time", "00:10:00", images, "--checkpoint", run / "best", "--out", out, "--batch-size", "1",
                          cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    array, merge = re.findall(r"submitted job (\d+)", submitted.stdout)
    logs = out.parent / "slurm"

    # Preempt task 1 once it has written some rows, as `scontrol requeue` (or a preemption) does mid-run.
    shard = out.with_name(f"preds.shard-1-of-{SHARDS}.csv")
    deadline = time.time() + 240
    while not (shard.is_file() and len(shard.read_text().splitlines()) > 3):
        assert time.time() < deadline, _log(logs)[-3000:]
        time.sleep(0.05)
    slurm.run("scontrol", "requeue", f"{array}_1")
    requeued_rows = len(shard.read_text().splitlines())

    for task in range(SHARDS):
        assert slurm.wait(f"{array}_{task}", timeout=400) == "COMPLETED", _log(logs)[-4000:]
    assert slurm.wait(merge, timeout=120) == "COMPLETED", _log(logs)[-4000:]
    log = _log(logs)
    assert "restart 1" in log, log[-3000:]  # task 1 ran twice

    assert requeued_rows - 1 < 600 // SHARDS, "task 1 was requeued only after it had finished"
    rows = read_rows(out)
    paths = [row["path"] for row in rows]
    assert len(paths) == 600 and len(set(paths)) == 600, "every file once"
    assert out.read_bytes() == reference.read_bytes(), "the merged shards differ from one process's file"
