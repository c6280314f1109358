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
from tests.test_slurm import slurm  # noqa: F401 (the fixture: a real one-node SLURM for this module's tests)

SHARDS = 4


def _images(root: Path, count: int) -> Path:
    """``count`` tiny images in nested folders (so the sorted list crosses folders inside a shard)."""
    colours = list(RGB_CLASSES.values())
    for i in range(count):
        write_image(root / f"d{i % 7}" / f"e{i % 3}" / f"img_{i:04d}.png", colours[i % 3], size=16, seed=i)
    return root


def _log(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.out")))


@pytest.mark.slow
def test_array_job_with_a_requeued_task_predicts_every_file_once(slurm, tmp_path):  # noqa: F811 (the fixture)
    run = train_tiny_run(tmp_path)
    images = _images(tmp_path / "images", 600)
    (images / "d7").mkdir()
    (images / "d7" / "zz_damaged.png").write_bytes(b"not a picture")  # sorts last: shard 3 exits 1, with its file complete
    # One process over the whole folder, as the tasks run (one thread each: the last digit of a probability can
    # depend on how many threads a sum was split over).
    reference = tmp_path / "reference.csv"
    one = subprocess.run([sys.executable, "-m", "tl.predict_dir", images, "--checkpoint", run / "best", "--out", reference,
                          "--batch-size", "1"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert one.returncode == 1, one.stderr[-3000:]  # 1: the damaged file has an error row

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

    states = [slurm.wait(f"{array}_{task}", timeout=400) for task in range(SHARDS)]
    assert states == ["COMPLETED"] * (SHARDS - 1) + ["FAILED"], _log(logs)[-4000:]  # exit 1: one file unreadable
    assert slurm.wait(merge, timeout=120) == "COMPLETED", _log(logs)[-4000:]  # afterany: the merge runs all the same
    log = _log(logs)
    assert "restart 1" in log, log[-3000:]  # task 1 ran twice

    assert requeued_rows - 1 < 601 // SHARDS, "task 1 was requeued only after it had finished"
    rows = read_rows(out)
    paths = [row["path"] for row in rows]
    assert len(paths) == 601 and len(set(paths)) == 601, "every file once"
    assert [row["path"] for row in rows if row["error"]] == ["d7/zz_damaged.png"]
    assert out.read_bytes() == reference.read_bytes(), "the merged shards differ from one process's file"


# ------------------------------------------------------------------------------------------------------------------
# The script and the submit command without SLURM: a stub srun prints what the task would run
# ------------------------------------------------------------------------------------------------------------------
def _task_command(tmp_path: Path, args: list[str], task: int, count: int, restart: int = 0) -> list[str]:
    import shlex
    import subprocess

    from tests.conftest import ROOT

    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "srun").write_text('#!/bin/bash\nprintf "%q " "$@" > "$TL_TEST_ARGS"\n')
    (stub / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "TL_TEST_ARGS": str(tmp_path / "args"), "SLURM_JOB_ID": "7",
           "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": str(count),
           "SLURM_RESTART_COUNT": str(restart), "SLURM_SUBMIT_DIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "slurm" / "predict_dir.sbatch"), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    words = shlex.split((tmp_path / "args").read_text())
    return words[words.index("tl.predict_dir") + 1:]


@pytest.mark.parametrize("out", ["preds.csv", "runs.v2/preds.parquet", "preds", "/abs/dir.x/p.csv"])
def test_each_array_task_writes_the_shard_file_the_merge_job_reads(tmp_path, out):
    from tl.cluster.slurm import shard_files

    for task in range(3):
        words = _task_command(tmp_path, ["imgs", "--checkpoint", "c", "--out", out], task, 3)
        written = Path(words[words.index("--out") + 1])
        expected = shard_files(Path(out), 3)[task]
        assert written == (expected if expected.is_absolute() else Path(".") / expected), (written, expected)
        assert words[-2:] == ["--shard", "auto"] and "--resume" not in words  # a first start refuses an old file


def test_a_requeued_task_resumes_and_drops_overwrite(tmp_path):
    first = _task_command(tmp_path, ["imgs", "--out", "p.csv", "--overwrite"], 1, 4)
    again = _task_command(tmp_path, ["imgs", "--out", "p.csv", "--overwrite"], 1, 4, restart=1)
    assert "--overwrite" in first and "--resume" not in first
    assert "--overwrite" not in again and "--resume" in again


def test_submit_checks_prediction_arguments_before_the_queue(tmp_path):
    from tests.conftest import cli
    from tl.errors import TLError

    def refusal(*args) -> str:
        result = cli("slurm", "submit", "--dry-run", "--script", "predict", *args)
        assert isinstance(result.exception, TLError), result.output  # the CLI prints it in one line, exit 2
        return result.exception.message

    assert "--bogus-flag" in refusal("--shards", "3", "imgs", "--checkpoint", "c", "--out", tmp_path / "p.csv", "--bogus-flag")
    (tmp_path / "p.csv").write_text("old")
    assert "exists" in refusal("--shards", "3", "imgs", "--checkpoint", "c", "--out", tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == "old"
    assert "space" in refusal("imgs", "--checkpoint", "c", "--out", tmp_path / "a b" / "p.csv")
